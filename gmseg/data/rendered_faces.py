"""Analytic renderer of frontal-ish faces labelled in FASSEG's six classes.

A labelled face set that needs no download and exists at any resolution: the
tests, smoke runs and the CPU benchmarks use it where FASSEG's 20 training
faces are too few or a shape must be arbitrary. Faces follow FASSEG's labelling:
eyebrows are hair, the neck is skin, clothes are background, eyes are the eye
openings only, the nose runs from the bridge to the nostrils.

Everything is drawn from implicit shapes in face coordinates (head centred,
x right, y down, head half-height ~0.55), with a random pose (rotation, shift,
scale) mapping image to face coordinates. The image is alpha-composited with a
one-pixel soft edge; the label thresholds the same shapes. All arrays carry a
leading batch axis, so `render_batch` is one vectorised pass.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from gmseg.data import builder as builder_lib
from gmseg.data import common

CLASS_NAMES = ("background", "hair", "skin", "eyes", "nose", "mouth")
BACKGROUND, HAIR, SKIN, EYES, NOSE, MOUTH = range(6)

_SKIN_TONES = np.array([[241, 205, 180], [224, 172, 140], [198, 144, 108],
                        [160, 110, 80], [112, 74, 52], [80, 52, 38]], np.float32)
_HAIR_TONES = np.array([[20, 16, 14], [58, 38, 26], [104, 70, 40], [186, 150, 96],
                        [140, 64, 30], [150, 146, 140], [36, 30, 30]], np.float32)


def _sample_params(seeds) -> dict[str, np.ndarray]:
  """Per-face random parameters, `[batch, 1, 1]` (or `[batch, 1, 1, 3]` colours)."""
  cols = {}
  for seed in seeds:
    rng = np.random.default_rng([int(seed), 0x6A5E])
    u = rng.uniform
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * u(0.9, 1.08, 3)
    hair = _HAIR_TONES[rng.integers(len(_HAIR_TONES))] * u(0.8, 1.2, 3)
    p = dict(
        angle=u(-0.2, 0.2), shift_x=u(-0.07, 0.07), shift_y=u(-0.05, 0.07), scale=u(0.88, 1.12),
        head_a=u(0.56, 0.66), head_b=u(0.74, 0.84), jaw=u(0.1, 0.3),
        hair_style=float(rng.integers(4)), hairline=u(0.42, 0.68), hair_curve=u(0.25, 0.6),
        hair_puff=u(1.05, 1.22), parting=u(-0.3, 0.3),
        eye_x=u(0.38, 0.46), eye_y=u(-0.08, 0.0), eye_a=u(0.17, 0.22), eye_b=u(0.045, 0.065),
        brow_gap=u(0.12, 0.17), brow_w=u(0.022, 0.04), gaze=u(-0.3, 0.3),
        nose_len=u(0.38, 0.46), nose_w=u(0.18, 0.26),
        mouth_y=u(0.56, 0.66), mouth_a=u(0.26, 0.36), mouth_b=u(0.055, 0.09), smile=u(-0.4, 1.0),
        light_x=u(-0.6, 0.6), light_y=u(-0.6, 0.3), ambient=u(0.55, 0.75),
        bg_kind=float(rng.integers(3)), noise=u(0.0, 12.0), grain=u(2.0, 6.0),
        skin=skin, hair=hair,
        iris=np.array([[70, 45, 30], [40, 80, 120], [60, 90, 60], [35, 25, 20]],
                      np.float32)[rng.integers(4)] * u(0.8, 1.2, 3),
        lips=skin * np.array([0.95, 0.62, 0.62]) * u(0.85, 1.05, 3),
        bg_top=u(20, 235, 3), bg_bottom=u(20, 235, 3),
        cloth=u(10, 220, 3), noise_seed=float(rng.integers(2**31)),
    )
    for k, v in p.items():
      cols.setdefault(k, []).append(np.asarray(v, np.float32))
  out = {}
  for k, v in cols.items():
    v = np.stack(v)
    out[k] = v.reshape(v.shape[:1] + (1, 1) + v.shape[1:])
  return out


def _alpha(dist: np.ndarray, pixel: np.ndarray) -> np.ndarray:
  """Coverage of a shape from an approximate signed distance (negative inside)."""
  return np.clip(0.5 - dist / pixel, 0.0, 1.0)


def _ellipse(x, y, cx, cy, a, b):
  """Approximate signed distance to an ellipse (exact on the axes)."""
  r = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
  return (r - 1.0) * np.minimum(a, b)


def render_batch(seeds, resolution: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Renders one face per seed.

  Args:
    seeds: sequence of ints; the same seed gives the same face at every call.
    resolution: side, or (height, width); the face fills a centred square.

  Returns:
    images uint8 `[batch, height, width, 3]`, labels uint8 `[batch, height, width]`.
  """
  h, w = (resolution, resolution) if np.isscalar(resolution) else resolution
  if h < 8 or w < 8:
    raise ValueError(f"resolution must be at least 8x8, got {h}x{w}.")
  p = _sample_params(list(seeds))
  side = min(h, w)
  # Pixel centres in [-1, 1] along the shorter side (square pixels).
  gy = ((np.arange(h, dtype=np.float32) + 0.5) - h / 2) * (2.0 / side)
  gx = ((np.arange(w, dtype=np.float32) + 0.5) - w / 2) * (2.0 / side)
  iy, ix = np.meshgrid(gy, gx, indexing="ij")
  iy, ix = iy[None], ix[None]
  # Image -> face coordinates: undo shift, rotation and scale.
  cos, sin = np.cos(p["angle"]), np.sin(p["angle"])
  dx, dy = ix - p["shift_x"], iy - p["shift_y"]
  x = (cos * dx + sin * dy) / p["scale"]
  y = (-sin * dx + cos * dy) / p["scale"]
  px = (2.0 / side) / p["scale"]  # one pixel in face units

  a, b = p["head_a"], p["head_b"]
  cy = 0.06  # head centre; the eyes sit near it, the chin at cy + b.
  # Head: an ellipse narrowing towards the chin.
  taper = 1.0 - p["jaw"] * np.clip((y - cy) / b, 0.0, 1.0) ** 2
  head = _ellipse(x / taper, y, 0.0, cy, a, b) * taper
  neck = np.maximum(np.abs(x) - 0.5 * a, cy + 0.5 * b - y)
  shoulders = _ellipse(x, y, 0.0, cy + b + 0.5, 1.6, 0.45)

  # Hair mass: a puffed ellipse around the skull, cut at a style-dependent depth.
  style = p["hair_style"]
  length = np.select([style == 0, style == 1, style == 2], [-0.15, 0.35, 1.4], 0.0)
  outer = _ellipse(x, y, 0.0, cy - 0.06, a * p["hair_puff"], b * (0.98 + 0.1 * (p["hair_puff"] - 1)))
  hair_back = np.maximum(outer, y - (cy + length * b))
  # Long hair falls behind the head to below the chin.
  curtain = np.maximum(np.abs(x) - a * p["hair_puff"] * (1.0 + 0.15 * np.clip((y - cy) / b, 0, 1)),
                       np.maximum(y - (cy + length * b), cy - y))
  hair_back = np.where(length > 1.0, np.minimum(hair_back, curtain), hair_back)
  # Hair over the forehead: above a hairline that curves down at the temples.
  xn = x / a
  hairline = cy - b * p["hairline"] + b * p["hair_curve"] * xn ** 2 + 0.06 * b * np.abs(xn - p["parting"])
  hair_front = np.maximum(head, y - hairline)
  # Short styles show ears-level skin at the sides; long ones cover the temples.
  side_hair = np.maximum(np.maximum(outer, np.abs(x) - a * 0.82), y - (cy + length * b * 0.5))

  # Eyes (ellipses), irises, and the brows above them (FASSEG labels brows hair).
  ex, ey = p["eye_x"] * a, cy + p["eye_y"] * b
  eye_a, eye_b = p["eye_a"] * a, p["eye_b"] * b
  eyes_d = np.minimum(_ellipse(x, y, -ex, ey, eye_a, eye_b), _ellipse(x, y, ex, ey, eye_a, eye_b))
  iris_x = p["gaze"] * eye_a * 0.4
  iris_d = np.minimum(_ellipse(x, y, -ex + iris_x, ey, eye_b * 1.1, eye_b * 1.1),
                      _ellipse(x, y, ex + iris_x, ey, eye_b * 1.1, eye_b * 1.1))
  brow_u = (np.abs(x) - ex) / (eye_a * 1.25)
  brow_y = ey - p["brow_gap"] * b - 0.3 * eye_b * (1 - brow_u ** 2)
  brows_d = np.maximum(np.abs(y - brow_y) - p["brow_w"] * b * (1 - 0.4 * brow_u), np.abs(brow_u) * eye_a * 1.25 - eye_a * 1.25)

  # Nose: a trapezoid from a narrow bridge between the eyes to wide nostrils.
  nose_bottom = ey + p["nose_len"] * b
  t = np.clip((y - ey) / (p["nose_len"] * b), 0.0, 1.0)
  half_w = p["nose_w"] * a * (0.4 + 0.6 * t ** 2)
  nose_d = np.maximum(np.abs(x) - half_w, np.maximum(ey + 0.3 * eye_b - y, y - nose_bottom))
  nost_a, nost_b = 0.3 * p["nose_w"] * a, 0.025 * b
  nostrils_d = np.minimum(_ellipse(x, y, -0.5 * p["nose_w"] * a, nose_bottom - 1.5 * nost_b, nost_a, nost_b),
                          _ellipse(x, y, 0.5 * p["nose_w"] * a, nose_bottom - 1.5 * nost_b, nost_a, nost_b))

  # Mouth: lips as an ellipse bent by the smile; the lip line is darker.
  my = cy + p["mouth_y"] * b
  mouth_a, mouth_b = p["mouth_a"] * a, p["mouth_b"] * b
  bend = -p["smile"] * 0.5 * mouth_b * (x / mouth_a) ** 2
  mouth_d = _ellipse(x, y - bend, 0.0, my, mouth_a, mouth_b)
  lipline_d = np.maximum(np.abs(y - bend - my) - 0.12 * mouth_b, np.abs(x) - mouth_a)

  # ---- Image: background, then parts back to front. ----
  rng_noise = [np.random.default_rng(int(s)) for s in p["noise_seed"].ravel()]
  noise = np.stack([r.standard_normal((h, w), np.float32) for r in rng_noise])[..., None]
  vy = ((iy + 1) / 2)[..., None].clip(0, 1)
  bg = p["bg_top"] * (1 - vy) + p["bg_bottom"] * vy
  bg = np.where(p["bg_kind"][..., None] == 0, (p["bg_top"] + p["bg_bottom"]) / 2, bg)
  bg = bg + noise * np.where(p["bg_kind"][..., None] == 2, p["noise"][..., None] * 2, p["noise"][..., None] * 0.3)
  img = bg

  # Lighting: a directional term plus a rim falloff that makes the head round.
  r2 = np.clip((x / a) ** 2 + ((y - cy) / b) ** 2, 0.0, 1.0)
  nz = np.sqrt(1.0 - r2)
  light = p["ambient"] + (1 - p["ambient"]) * np.clip(
      nz * 0.8 + (x / a) * p["light_x"] * 0.5 + ((y - cy) / b) * p["light_y"] * 0.5, 0.0, 1.0)
  light = light[..., None]

  def over(img, colour, dist, shade=None):
    col = colour if shade is None else colour * shade
    al = _alpha(dist, px)[..., None]
    return img * (1 - al) + col * al

  cloth_shade = (0.8 + 0.2 * np.clip(1 - np.abs(x), 0, 1))[..., None]
  img = over(img, p["cloth"], shoulders, cloth_shade)
  # Strands: a faint stripe pattern along the hair.
  hair_shade = 0.7 + 0.3 * light + 0.05 * np.sin((x / a) * 40 + y * 8)[..., None]
  img = over(img, p["hair"], np.minimum(hair_back, side_hair), hair_shade * 0.85)
  img = over(img, p["skin"], neck, light * 0.8)
  img = over(img, p["skin"], head, light)
  img = over(img, p["hair"], hair_front, hair_shade)
  img = over(img, p["hair"], np.maximum(brows_d, -hair_front), 0.9)
  img = over(img, np.float32(235.0), eyes_d, light * 0.95)
  img = over(img, p["iris"], np.maximum(iris_d, eyes_d))
  img = over(img, np.float32(15.0), np.maximum(iris_d + 0.55 * eye_b, eyes_d))
  # Nose: shaded on the side away from the light, darker nostrils.
  nose_shade = 1.0 - 0.12 * np.sign(x - 0.0) * np.sign(p["light_x"] + 1e-3) * (np.abs(x) > 0.3 * half_w)
  img = over(img, p["skin"], nose_d, light * nose_shade[..., None] * 0.97)
  img = over(img, p["skin"] * 0.45, nostrils_d, light)
  img = over(img, p["lips"], mouth_d, light)
  img = over(img, p["lips"] * 0.45, np.maximum(lipline_d, mouth_d), light)
  img = img + noise * p["grain"][..., None]

  # ---- Label: the same shapes, hard, in the same order. ----
  label = np.full(x.shape, BACKGROUND, np.uint8)
  for cls, dist in ((HAIR, np.minimum(hair_back, side_hair)), (SKIN, neck), (SKIN, head),
                    (HAIR, hair_front), (HAIR, np.maximum(brows_d, -hair_front)),
                    (EYES, eyes_d), (NOSE, nose_d), (MOUTH, mouth_d)):
    label = np.where(dist < 0, np.uint8(cls), label)
  return np.clip(np.round(img), 0, 255).astype(np.uint8), label


def render(seed: int, resolution: int | tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """One face: image uint8 `[height, width, 3]`, label uint8 `[height, width]`."""
  images, labels = render_batch([seed], resolution)
  return images[0], labels[0]


@dataclasses.dataclass
class RenderedFacesConfig(tfds.core.BuilderConfig):
  """`train_count` faces from seeds 0.., `test_count` from seeds 1_000_000.., at `resolution`."""
  train_count: int = 1000
  test_count: int = 200
  resolution: int = 64


TEST_SEED_OFFSET = 1_000_000


class RenderedFaces(builder_lib.Builder):
  """Rendered faces in FASSEG's classes; needs no download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      RenderedFacesConfig(name="n1000_r64", train_count=1000, test_count=200, resolution=64),
      RenderedFacesConfig(name="n200_r128", train_count=200, test_count=100, resolution=128),
      RenderedFacesConfig(name="n64_r32", train_count=64, test_count=32, resolution=32),
  ]
  DEFAULT_CONFIG_NAME = "n1000_r64"


  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=common.features())

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    cfg = self.builder_config
    return {"train": self._generate_examples(range(cfg.train_count)),
            "test": self._generate_examples(
                range(TEST_SEED_OFFSET, TEST_SEED_OFFSET + cfg.test_count))}

  def _generate_examples(self, seeds):
    seeds = list(seeds)
    for start in range(0, len(seeds), 64):
      chunk = seeds[start:start + 64]
      images, labels = render_batch(chunk, self.builder_config.resolution)
      for seed, image, label in zip(chunk, images, labels):
        example_id = f"{seed:08d}"
        yield example_id, common.example(image, label, example_id)


DATASETS = {
    "rendered_faces": common.DatasetSpec(builder=RenderedFaces, config="n1000_r64",
                                         class_names=CLASS_NAMES),
}
