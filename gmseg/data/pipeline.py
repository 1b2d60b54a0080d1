"""Input pipeline: labelled splits as arrays, a resumable sampler, augmentation.

Labelled sets in this method are small (tens to a few thousand images), so a
split is loaded once into host memory as numpy arrays and batches are drawn
by index: no tf.data, and a batch is a pure function of (seed, step).
"""
import functools
import os
from typing import Any

import numpy as np
from PIL import Image

from gmseg import errors
from gmseg.data import common
from gmseg.data import registry

TRANSFORMS = ("square_crop", "resize", "wide_crop")


def _fit(image: np.ndarray, label: np.ndarray, resolution: int, transform: str):
  """Crops/resizes one example to `[R, R(, 3)]` (wide_crop: `[3R/4, R]`)."""
  h, w = label.shape
  if transform == "square_crop":
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image, label = image[top:top + side, left:left + side], label[top:top + side, left:left + side]
    size = (resolution, resolution)
  elif transform == "resize":
    size = (resolution, resolution)
  elif transform == "wide_crop":
    # The paper's car crop: of a square image keep the centre 3/4 of the rows.
    if h != w:
      raise ValueError(f"wide_crop expects square images, got {h}x{w}; use square_crop first.")
    rows = (3 * h) // 4
    top = (h - rows) // 2
    image, label = image[top:top + rows], label[top:top + rows]
    size = (resolution, (3 * resolution) // 4)  # PIL sizes are (width, height)
  else:
    raise ValueError(f"unknown transform {transform!r}; choose one of {TRANSFORMS}.")
  im = Image.fromarray(image)
  # reducing_gap pre-shrinks by box filtering (antialiased) before LANCZOS.
  im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
  lab = Image.fromarray(label).resize(size, Image.Resampling.NEAREST)
  return np.asarray(im), np.asarray(lab)


def load_split(name: str, split: str, *, resolution: int, data_dir: os.PathLike | str,
               manual_dir: os.PathLike | str | None = None, limit: int | None = None,
               transform: str = "square_crop") -> dict[str, np.ndarray]:
  """Loads a registered dataset split as arrays, building it with tfds if needed.

  Args:
    name: registry name, e.g. 'fasseg/frontal02' or 'rendered_faces'.
    split: 'train', 'test', ...
    resolution: output side R.
    data_dir: tfds data directory.
    manual_dir: folder with the raw files for offline builds (FASSEG: the
      folder holding V2/); without it, builders that can download do.
    limit: keep the first `limit` examples by id.
    transform: 'square_crop' (centred square of side min(H, W), then resize),
      'resize' (whole image to R x R), 'wide_crop' (square image, centre 3/4 of
      rows, to [3R/4, R]).

  Returns:
    {'image': float32 `[N, R, R, 3]` in [-1, 1], 'label': uint8 `[N, R, R]`,
     'id': `[N]` str}.
  """
  if transform not in TRANSFORMS:
    raise ValueError(f"unknown transform {transform!r}; choose one of {TRANSFORMS}.")
  try:
    examples = common.read_split(registry.builder(name, data_dir), split, data_dir,
                                 manual_dir=manual_dir, limit=limit,
                                 class_names=registry.class_names(name))
  except errors.UserError:
    raise  # already names the problem and the fix
  except Exception as e:
    if manual_dir is None and _looks_like_network_error(e):
      raise RuntimeError(
          f"could not download dataset {name!r} ({type(e).__name__}: {e}). Offline, pass "
          "`--manual_dir` (manual_dir=...) pointing at the folder with the raw files, for FASSEG "
          "the folder holding V2/ (V2/Train_RGB, V2/Train_Labels, ...).") from e
    raise
  if not examples:
    raise ValueError(f"dataset {name!r} split {split!r} is empty.")
  images, labels = zip(*(_fit(ex["image"], ex["label"], resolution, transform) for ex in examples))
  return {"image": np.stack(images).astype(np.float32) / 127.5 - 1.0,
          "label": np.stack(labels).astype(np.uint8),
          "id": np.array([ex["id"] for ex in examples])}


def _looks_like_network_error(e: BaseException) -> bool:
  while e is not None:
    text = f"{type(e).__name__} {e}".lower()
    if any(k in text for k in ("connection", "download", "resolve", "timed out", "network", "http")):
      return True
    e = e.__cause__ or e.__context__
  return False


class Sampler:
  """Infinite shuffled batches, reproducible from (seed, step) alone.

  Epoch e visits every example once in the order `permutation(seed, e)`; the
  global batch at step s is positions [s*B, (s+1)*B) of the concatenated
  epochs, so a resumed run sees the same batches. With several hosts each
  takes a disjoint contiguous slice of the global batch.
  """

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    """Args: arrays with a shared leading axis N; batch_size is the global batch."""
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
      raise ValueError(f"arrays must share their leading size, got {sizes}.")
    if batch_size % process_count:
      raise ValueError(f"global batch {batch_size} does not divide by process_count "
                       f"{process_count}; choose a multiple of {process_count}.")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
    self.arrays = arrays
    self.num_examples = next(iter(sizes.values()))
    if self.num_examples == 0:
      raise ValueError("cannot sample from an empty dataset.")
    self.batch_size = batch_size
    self.per_host = batch_size // process_count
    self.seed = seed
    self.process_index = process_index

  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

  def indices(self, step: int) -> np.ndarray:
    """Dataset indices of this host's part of the global batch at `step`."""
    start = step * self.batch_size + self.process_index * self.per_host
    pos = np.arange(start, start + self.per_host)
    epochs, offsets = np.divmod(pos, self.num_examples)
    out = np.empty(self.per_host, np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      out[sel] = self._order(int(epoch))[offsets[sel]]
    return out

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's batch at `step`: each array indexed `[per_host_batch, ...]`."""
    idx = self.indices(step)
    return {k: v[idx] for k, v in self.arrays.items()}


# Zoom range of `augment` when a config has no `data.augment_zoom` (the
# default in config_base.py too); (1.0, 1.3) only zooms in.
DEFAULT_ZOOM = (1.0, 1.3)


def augment(batch: dict[str, Any], rng: np.random.Generator, *,
            min_scale: float = DEFAULT_ZOOM[0], max_scale: float = DEFAULT_ZOOM[1],
            jitter: float = 0.2) -> dict[str, Any]:
  """Label-consistent augmentation for the supervised baseline (numpy).

  Per example: horizontal flip (p=0.5); random zoom by s in [min_scale,
  max_scale] (a window of side R/s at a random place, resized back: bilinear
  image, nearest label; s < 1 zooms out, the window reaching past the border,
  where image and label both repeat their edge pixels, so they stay paired);
  brightness/contrast/saturation jitter of +-`jitter` on the image.

  Args:
    batch: {'image': float32 `[B, H, W, 3]` in [-1, 1], 'label': uint8 `[B, H, W]`, ...}.
    rng: a numpy Generator (e.g. `np.random.default_rng([seed, step])`).

  Returns:
    a new dict with augmented 'image' and 'label' (other keys copied).
  """
  if not 0.0 < min_scale <= max_scale:
    raise ValueError(f"Zoom range [{min_scale}, {max_scale}]: need 0 < min <= max "
                     "(data.augment_zoom).")
  images, labels = np.asarray(batch["image"]), np.asarray(batch["label"])
  b, h, w, _ = images.shape
  out_i, out_l = np.empty_like(images), np.empty_like(labels)
  for i in range(b):
    img, lab = images[i], labels[i]
    if rng.random() < 0.5:
      img, lab = img[:, ::-1], lab[:, ::-1]
    s = rng.uniform(min_scale, max_scale)
    ch, cw = max(1, int(round(h / s))), max(1, int(round(w / s)))
    # A window larger than the image (s < 1) starts at a negative offset.
    top = rng.integers(min(0, h - ch), max(0, h - ch) + 1)
    left = rng.integers(min(0, w - cw), max(0, w - cw) + 1)
    # Nearest/bilinear sampling at the crop's pixel centres, in one vectorised gather.
    ys = top + (np.arange(h) + 0.5) * (ch / h) - 0.5
    xs = left + (np.arange(w) + 0.5) * (cw / w) - 0.5
    lab = lab[np.clip(np.round(ys).astype(int), 0, h - 1)[:, None],
              np.clip(np.round(xs).astype(int), 0, w - 1)[None, :]]
    y0 = np.clip(np.floor(ys).astype(int), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy = np.clip(ys - y0, 0, 1)[:, None, None]
    fx = np.clip(xs - x0, 0, 1)[None, :, None]
    img = ((img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx) * (1 - fy)
           + (img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx) * fy)
    # Colour jitter in [0, 1] space; the label does not change.
    x = (img + 1.0) / 2.0
    x = x * rng.uniform(1 - jitter, 1 + jitter)  # brightness
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - jitter, 1 + jitter) + mean  # contrast
    grey = x.mean(-1, keepdims=True)
    x = (x - grey) * rng.uniform(1 - jitter, 1 + jitter) + grey  # saturation
    out_i[i] = np.clip(x, 0.0, 1.0) * 2.0 - 1.0
    out_l[i] = lab
  out = dict(batch)
  out.update(image=out_i, label=out_l)
  return out


def augmenter(config):
  """`augment` with the config's zoom range (`data.augment_zoom`, else DEFAULT_ZOOM)."""
  lo, hi = tuple(config.data.get("augment_zoom", DEFAULT_ZOOM))
  return functools.partial(augment, min_scale=float(lo), max_scale=float(hi))
