"""Small building blocks shared by the annotator and the segmenters.

dtypes: parameters are created in float32 (Flax's default param_dtype, also
under jax_enable_x64); every layer computes in the promoted dtype of its input
and parameters, so float64 inputs (or float64 parameters) give float64 outputs
and gradients, and float32 stays float32.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NORMS = ("group", "batch", "none")


def norm_layer(kind: str, train: bool, name: str):
  """Returns a normalisation layer by name.

  `group` (default in gmseg) normalises each example on its own, so
  per-example gradients are exact. `batch` keeps running statistics in the
  `batch_stats` collection (see gmseg/steps.py for when they are updated).
  Running variance: Flax's BatchNorm averages the biased batch variance
  (divided by n, the number of values per channel); torch's BatchNorm2d, and so
  the paper's code, the unbiased one (divided by n - 1). Normalisation in
  training mode uses the biased variance in both; only the running variance,
  and hence evaluation with running statistics, differs, by n / (n - 1) per
  update (about 3% at a 4x4 map with batch 2). We keep Flax's.

  Args:
    kind: one of NORMS.
    train: for BatchNorm, use batch statistics (True) or running ones.
    name: the submodule name.
  """
  if kind == "group":
    # 32 groups as usual, fewer for narrow layers (must divide the channels).
    return _GroupNorm(name=name)
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        epsilon=1e-5, name=name)
  if kind == "none":
    return lambda x: x
  raise ValueError(f"Unknown norm {kind!r}; expected one of {NORMS}.")


class _GroupNorm(nn.Module):
  """GroupNorm with gcd(32, channels) groups, so any width works."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    groups = math.gcd(32, x.shape[-1])
    return nn.GroupNorm(num_groups=groups, epsilon=1e-5, name="gn")(x)


def resize_to(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Bilinear resize of `[B, h, w, C]` to `[B, *hw, C]` (half-pixel centres,
  torch's align_corners=False); a no-op when the size already matches."""
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), "bilinear")


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
  """Source index of each output row/column for torch's default ('nearest')
  `F.interpolate`: min(floor(i * float32(size_in / size_out)), size_in - 1),
  computed in float32 as torch does (the top-left sample of each block when
  shrinking by an integer factor, not the centre)."""
  if size_in == size_out:
    return np.arange(size_out)
  scale = np.float32(size_in) / np.float32(size_out)
  idx = np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(idx, size_in - 1)


def resize_nearest(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Nearest-neighbour resize of `[B, h, w, C]` to `[B, *hw, C]` as the
  paper's code does for generated images and soft labels (torch 'nearest',
  see `nearest_indices`; jax.image.resize's 'nearest' samples pixel centres
  instead, so it picks other pixels). A no-op when the size already matches."""
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  x = jnp.take(x, jnp.asarray(nearest_indices(x.shape[1], hw[0])), axis=1)
  return jnp.take(x, jnp.asarray(nearest_indices(x.shape[2], hw[1])), axis=2)


def _align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
  """`[size_out, size_in]` linear-interpolation weights with the corner pixels
  aligned: output i samples input position i * (size_in - 1) / (size_out - 1)."""
  m = np.zeros((size_out, size_in), np.float32)
  if size_in == 1 or size_out == 1:
    m[:, 0] = 1.0
    return m
  pos = np.arange(size_out, dtype=np.float64) * (size_in - 1) / (size_out - 1)
  lo = np.minimum(np.floor(pos).astype(int), size_in - 2)
  frac = (pos - lo).astype(np.float32)
  m[np.arange(size_out), lo] = 1.0 - frac
  m[np.arange(size_out), lo + 1] += frac
  return m


def resize_align_corners(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Bilinear resize of `[B, h, w, C]` to `[B, *hw, C]` with corner pixels
  aligned (torch's `align_corners=True`, the paper's UNet upsampling).

  Written as two small interpolation matrices (constants), so the result is
  exact and its gradient is the transposed interpolation.
  """
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  rows = jnp.asarray(_align_corners_matrix(x.shape[1], hw[0]), x.dtype)
  cols = jnp.asarray(_align_corners_matrix(x.shape[2], hw[1]), x.dtype)
  return jnp.einsum("oh,pw,bhwc->bopc", rows, cols, x)


UPSAMPLING = ("align_corners", "half_pixel")


def conv_norm_relu(x, features: int, norm: str, train: bool, name: str,
                   use_bias: bool = True):
  """3x3 conv -> norm -> ReLU, named `{name}_conv` / `{name}_norm`."""
  x = nn.Conv(features, (3, 3), padding=1, use_bias=use_bias,
              name=f"{name}_conv")(x)
  x = norm_layer(norm, train, f"{name}_norm")(x)
  return jax.nn.relu(x)
