r"""Writes a PNG grid of samples from a registered generator.

  .venv/bin/python launch/sample.py --generator=dcgan_faces --n=16 --seed=0 --out=samples.png
  .venv/bin/python launch/sample.py --generator=random_conv --features --out=/tmp/rc.png
  .venv/bin/python launch/sample.py --generator=stylegan2 --path=ffhq.pkl --truncation=0.7
  .venv/bin/python launch/sample.py --generator=stylegan1 \
      --path=karras2019stylegan-cats-256x256.for_g_all.pt --w_avg=avg_latent_stylegan1.npy \
      --truncation=0.7 --cutoff=7

With --features each column is one sample, and below the images is one row
per feature map (mean over channels, min-max scaled per sample, nearest
upsampled), low to high resolution.
"""
import inspect

from absl import app, flags
import jax
import numpy as np

from gmseg import cli
from gmseg import generator_registry
from gmseg import viz
from gmseg.models import generators

GENERATOR = flags.DEFINE_string("generator", "dcgan_faces", "Registry name (gmseg.generator_registry).")
PATH = flags.DEFINE_string("path", None, "Checkpoint path, for generators that take one "
                           "(stylegan2, stylegan1).")
W_AVG = flags.DEFINE_string("w_avg", None, "Average-latent .npy, for generators that take one "
                            "(stylegan1: DatasetGAN's avg_latent_stylegan1.npy).")
CUTOFF = flags.DEFINE_integer("cutoff", None, "Truncation cutoff (how many ws are truncated), "
                              "for generators that take it.")
N = flags.DEFINE_integer("n", 16, "Number of samples.")
SEED = flags.DEFINE_integer("seed", 0, "PRNG seed for the latents (and noise).")
OUT = flags.DEFINE_string("out", "samples.png", "Output PNG path.")
COLS = flags.DEFINE_integer("cols", 8, "Samples per grid row (ignored with --features).")
TRUNCATION = flags.DEFINE_float(
    "truncation", None, "Truncation psi: passed to generators that take it, else z is scaled by psi.")
FEATURES = flags.DEFINE_bool("features", False, "Add one row per feature map.")


def _feature_row(feat: np.ndarray, resolution: int) -> np.ndarray:
  """`[N, h, w, c]` -> `[N, resolution, resolution]` uint8 channel means."""
  m = feat.mean(axis=-1)
  lo = m.min(axis=(1, 2), keepdims=True)
  hi = m.max(axis=(1, 2), keepdims=True)
  m = np.round((m - lo) / np.maximum(hi - lo, 1e-12) * 255).astype(np.uint8)
  if resolution % m.shape[1] or resolution % m.shape[2]:
    raise ValueError(f"Feature size {m.shape[1:]} does not divide the resolution {resolution}.")
  return m.repeat(resolution // m.shape[1], axis=1).repeat(resolution // m.shape[2], axis=2)


def _factory_args(name: str) -> set[str]:
  """Parameter names of a registered factory, without building the generator."""
  return set(inspect.signature(generator_registry.factory(name)).parameters)


def build_generator(name: str, path: str | None, truncation: float | None,
                    w_avg: str | None = None, cutoff: int | None = None):
  """Registry lookup; returns (generator, z scale for truncation)."""
  args = _factory_args(name)
  kwargs, z_scale = {}, 1.0
  for value, arg, flag in ((w_avg, "w_avg_path", "--w_avg"),
                           (cutoff, "truncation_cutoff", "--cutoff")):
    if value is not None:
      if arg not in args:
        raise app.UsageError(f"Generator {name!r} takes no {flag} (its arguments: "
                             f"{sorted(args)}); drop it.")
      kwargs[arg] = value
  if path is not None:
    arg = next((a for a in ("path", "weights_path", "pkl_path", "checkpoint") if a in args), None)
    if arg is None:
      raise app.UsageError(f"Generator {name!r} takes no checkpoint path (its arguments: "
                           f"{sorted(args)}); drop --path.")
    kwargs[arg] = path
  if truncation is not None:
    arg = next((a for a in ("truncation_psi", "truncation") if a in args), None)
    if arg:
      kwargs[arg] = truncation
    else:  # z-space truncation: shrink latents toward their mean 0
      z_scale = truncation
  return generator_registry.get(name, **kwargs), z_scale


def sample_grid(gen: generators.Generator, n: int, seed: int, z_scale: float = 1.0,
                cols: int = 8, features: bool = False) -> np.ndarray:
  """Samples `n` images (and features) and returns the uint8 grid."""
  z_rng, noise_rng = jax.random.split(jax.random.PRNGKey(seed))
  z = gen.sample_z(z_rng, n) * z_scale
  images, feats = jax.jit(gen.apply_fn)(gen.params, z, noise_rng)
  images = viz.to_uint8(np.asarray(images))
  if features:
    rows = [images] + [_feature_row(np.asarray(f), gen.resolution) for f in feats]
  else:
    rows = [images[i:i + cols] for i in range(0, n, cols)]
  return viz.grid(rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  gen, z_scale = build_generator(GENERATOR.value, PATH.value, TRUNCATION.value, W_AVG.value,
                                 CUTOFF.value)
  out = viz.save_png(OUT.value, sample_grid(gen, N.value, SEED.value, z_scale, COLS.value,
                                            FEATURES.value))
  print(f"Wrote {N.value} samples of {gen.name} ({gen.resolution}x{gen.resolution}) to {out}")


if __name__ == "__main__":
  cli.run(main)
