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
# BatchNorm running variance: Flax's (ours) | torch's (the paper's code).
RUNNING_VARS = ("biased", "unbiased")


def norm_layer(kind: str, train: bool, name: str, running_var: str = "biased"):
  """Returns a normalisation layer by name.

  `group` (default in gmseg) normalises each example on its own, so
  per-example gradients are exact. `batch` keeps running statistics in the
  `batch_stats` collection (see gmseg/steps.py for when they are updated).
  Running variance (`running_var`): Flax's BatchNorm averages the biased batch
  variance (divided by n, the number of values per channel: batch * h * w);
  torch's BatchNorm2d, and so the paper's code, the unbiased one (divided by
  n - 1). Normalisation in training mode uses the biased variance in both.
  'biased' (default, Flax's `nn.BatchNorm`) or 'unbiased' (`TorchBatchNorm`,
  the paper's): the running variance differs by n / (n - 1) per update (about
  3% at a 4x4 map with batch 2), so evaluation with running statistics does,
  and training too where a step runs a model on its running statistics (the
  annotator in the segmenter step).

  Args:
    kind: one of NORMS.
    train: for BatchNorm, use batch statistics (True) or running ones.
    name: the submodule name.
    running_var: one of RUNNING_VARS (BatchNorm only).
  """
  if running_var not in RUNNING_VARS:
    raise ValueError(f"Unknown BatchNorm running variance {running_var!r}; expected one "
                     f"of {RUNNING_VARS}.")
  if kind == "group":
    # 32 groups as usual, fewer for narrow layers (must divide the channels).
    return _GroupNorm(name=name)
  if kind == "batch" and running_var == "unbiased":
    return TorchBatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                          name=name)
  if kind == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                        epsilon=1e-5, name=name)
  if kind == "none":
    return lambda x: x
  raise ValueError(f"Unknown norm {kind!r}; expected one of {NORMS}.")


class TorchBatchNorm(nn.Module):
  """BatchNorm over the last axis with torch's running variance.

  The same variables as Flax's `nn.BatchNorm` (params `scale`, `bias`;
  `batch_stats` `mean`, `var`, float32 at init) and the same arithmetic in
  training and evaluation (batch mean and biased variance E[x^2] - E[x]^2,
  clipped at 0; `(x - mean) * (rsqrt(var + eps) * scale) + bias`), so its
  outputs equal `nn.BatchNorm`'s bitwise. Only the running variance differs:
  it averages the unbiased batch variance, var * n / (n - 1) with n = batch *
  h * w values per channel (per device: no cross-device statistics, like the
  rest of gmseg's BatchNorm), as torch's BatchNorm2d does.

  Attributes:
    use_running_average: normalise with the running statistics (evaluation)
      instead of the batch's (training, which also updates them).
    momentum: running = momentum * running + (1 - momentum) * batch statistic
      (torch's momentum is 1 - this: 0.1).
    epsilon: added to the variance.
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args:
      x: `[..., channels]` (e.g. `[batch, height, width, channels]`).
    Returns:
      the normalised `x`, same shape, in the promoted dtype of x and params.
    """
    c = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      n = x.size // c
      if n < 2:
        raise ValueError(f"TorchBatchNorm in training mode needs more than one value per "
                         f"channel for an unbiased variance (input {x.shape}, as torch); use "
                         "a larger batch per device or bn_running_var='biased'.")
      # As Flax: statistics in at least float32.
      xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      mean = xs.mean(axes)
      var = jnp.maximum(0.0, jnp.square(xs).mean(axes) - jnp.square(mean))
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = (self.momentum * ra_var.value
                        + (1 - self.momentum) * (var * (n / (n - 1))))
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(jnp.result_type(x, scale, bias))


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


def _align_corners_matrix(size_in: int, size_out: int, dtype=np.float32) -> np.ndarray:
  """`[size_out, size_in]` linear-interpolation weights with the corner pixels
  aligned: output i samples input position i * (size_in - 1) / (size_out - 1).

  Built in `dtype`: a float64 run needs float64 weights (float32 ones, e.g.
  1/3 rounded, moved float64 results by ~1e-8 against torch's).
  The position is computed in float64 and its fraction rounded to `dtype`, so
  float32 weights are what they always were, bitwise.
  """
  m = np.zeros((size_out, size_in), dtype)
  if size_in == 1 or size_out == 1:
    m[:, 0] = 1.0
    return m
  pos = np.arange(size_out, dtype=np.float64) * (size_in - 1) / (size_out - 1)
  lo = np.minimum(np.floor(pos).astype(int), size_in - 2)
  frac = (pos - lo).astype(dtype)
  m[np.arange(size_out), lo] = 1.0 - frac
  m[np.arange(size_out), lo + 1] += frac
  return m


def resize_align_corners(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Bilinear resize of `[B, h, w, C]` to `[B, *hw, C]` with corner pixels
  aligned (torch's `align_corners=True`, the paper's UNet upsampling).

  Written as two small interpolation matrices (constants in x's dtype), so the
  result is exact and its gradient is the transposed interpolation.
  """
  if tuple(x.shape[1:3]) == tuple(hw):
    return x
  # float64 weights for float64 inputs; float32 ones (cast) for the rest, as before.
  dtype = np.float64 if x.dtype == jnp.float64 else np.float32
  rows = jnp.asarray(_align_corners_matrix(x.shape[1], hw[0], dtype), x.dtype)
  cols = jnp.asarray(_align_corners_matrix(x.shape[2], hw[1], dtype), x.dtype)
  return jnp.einsum("oh,pw,bhwc->bopc", rows, cols, x)


UPSAMPLING = ("align_corners", "half_pixel")


def conv_norm_relu(x, features: int, norm: str, train: bool, name: str,
                   use_bias: bool = True, running_var: str = "biased"):
  """3x3 conv -> norm -> ReLU, named `{name}_conv` / `{name}_norm`
  (`running_var`: see `norm_layer`)."""
  x = nn.Conv(features, (3, 3), padding=1, use_bias=use_bias,
              name=f"{name}_conv")(x)
  x = norm_layer(norm, train, f"{name}_norm", running_var)(x)
  return jax.nn.relu(x)
