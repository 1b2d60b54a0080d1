"""Resizing generated images and soft labels before S (build.gen_transform):
torch's nearest by default (the paper's code), bilinear as an option."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg import build
from gmseg import config_base
from gmseg.models import layers


def _config(resolution, kind, how):
  c = config_base.get_base()
  c.data.resolution = resolution
  c.gen_transform = kind
  c.gen_resize = how
  return c.lock()


def test_nearest_indices_are_torchs():
  # torch 'nearest': src = floor(i * in / out); shrinking by 2 keeps the
  # top-left pixel of each block, growing by 2 repeats each pixel.
  np.testing.assert_array_equal(layers.nearest_indices(4, 2), [0, 2])
  np.testing.assert_array_equal(layers.nearest_indices(2, 4), [0, 0, 1, 1])
  np.testing.assert_array_equal(layers.nearest_indices(6, 4), [0, 1, 3, 4])
  np.testing.assert_array_equal(layers.nearest_indices(5, 5), np.arange(5))


def test_resize_hand_computed():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)       # x[r, c] = 4r + c
  p = jax.nn.one_hot(jnp.arange(16).reshape(1, 4, 4) % 3, 3)
  xs, ps = build.gen_transform(_config(2, "resize", "nearest"))(x, p)
  np.testing.assert_array_equal(xs[0, ..., 0], [[0, 2], [8, 10]])
  np.testing.assert_array_equal(ps, p[:, ::2, ::2])   # soft labels: the same pixels
  # Bilinear, antialiased when shrinking by 2: a triangle twice as wide, so
  # output 0 (input position 0.5) weighs pixels 0, 1, 2 by 3/4, 3/4, 1/4 over
  # 7/4 -> 5/7, and output 1 pixels 1, 2, 3 by 1/4, 3/4, 3/4 -> 16/7, per axis.
  xs, ps = build.gen_transform(_config(2, "resize", "bilinear"))(x, p)
  a = np.array([5, 16]) / 7
  np.testing.assert_allclose(xs[0, ..., 0], 4 * a[:, None] + a[None, :], rtol=1e-6)
  np.testing.assert_allclose(ps.sum(-1), 1.0, atol=1e-6)


def test_wide_crop_nearest_hand_computed():
  # 8x8 canvas: centre 6 rows (1..6), then to 4x4: rows 1 + (0, 1, 3, 4),
  # columns (0, 2, 4, 6).
  x = jnp.arange(64.0).reshape(1, 8, 8, 1)       # x[r, c] = 8r + c
  xs, ps = build.gen_transform(_config(4, "wide_crop", "nearest"))(x, x)
  want = np.array([[8 * r + c for c in (0, 2, 4, 6)] for r in (1, 2, 4, 5)])
  np.testing.assert_array_equal(xs[0, ..., 0], want)
  np.testing.assert_array_equal(ps, xs)


def test_float64_and_bad_mode():
  with jax.enable_x64(True):
    x = jnp.ones((1, 4, 4, 2), jnp.float64)
    for how in build.GEN_RESIZES:
      xs, _ = build.gen_transform(_config(2, "resize", how))(x, x)
      assert xs.dtype == jnp.float64
  with pytest.raises(ValueError, match="gen_resize"):
    build.gen_transform(_config(2, "resize", "bicubic"))
