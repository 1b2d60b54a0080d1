"""The UNet's bilinear upsampling: the paper's corner-aligned convention, by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg import build
from gmseg.models import layers, unet

X = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)[None, :, :, None]  # [1, 2, 2, 1]


def test_align_corners_2x2_to_4x4_by_hand():
  # Output (i, j) samples input (i/3, j/3); the input is 2y + x, so output = (2i + j) / 3.
  want = np.array([[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]], np.float32) / 3
  got = np.asarray(layers.resize_align_corners(jnp.asarray(X), (4, 4)))[0, :, :, 0]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_half_pixel_2x2_to_4x4_by_hand():
  # Output i samples (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1].
  t = np.array([0.0, 0.25, 0.75, 1.0], np.float32)
  want = 2 * t[:, None] + t[None, :]
  got = np.asarray(layers.resize_to(jnp.asarray(X), (4, 4)))[0, :, :, 0]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_align_corners_matrix_rows_sum_to_one_and_keep_corners():
  m = layers._align_corners_matrix(5, 9)  # pylint: disable=protected-access
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  assert m[0, 0] == 1.0 and m[-1, -1] == 1.0 and m[4, 2] == 1.0


def test_unet_default_is_align_corners_and_the_option_differs():
  assert unet.UNet(3).upsample == "align_corners"
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 18, 18, 3))  # odd sizes: 9 -> pad
  ac = unet.UNet(3, widths=(4, 4, 8, 8, 8))
  hp = unet.UNet(3, widths=(4, 4, 8, 8, 8), upsample="half_pixel")
  params = ac.init(jax.random.PRNGKey(1), x)
  y_ac, y_hp = ac.apply(params, x), hp.apply(params, x)
  assert y_ac.shape == y_hp.shape == (1, 18, 18, 3)
  assert float(jnp.abs(y_ac - y_hp).max()) > 1e-3
  with pytest.raises(ValueError, match="upsample='nearest'"):
    unet.UNet(3, upsample="nearest").init(jax.random.PRNGKey(1), x)


def test_build_reads_the_config_key_and_old_configs_keep_half_pixel():
  from gmseg import config_base
  c = config_base.get_base()
  assert build.segmenter(c.segmenter, 6).upsample == "align_corners"
  old = {k: v for k, v in c.segmenter.items() if k != "upsample"}

  class _Old(dict):
    __getattr__ = dict.__getitem__
  assert build.segmenter(_Old(old), 6).upsample == "half_pixel"


def test_align_corners_float64_by_hand_to_rounding():
  # Thirds are not float32 numbers: float32 weights cast to float64 missed
  # (2i + j) / 3 by ~1e-8; float64 weights give it to rounding.
  want = np.array([[2 * i + j for j in range(4)] for i in range(4)], np.float64) / 3
  # 3 -> 5: output i samples i/2; input 10y + x gives 5i + j/2.
  x35 = (10 * np.arange(3.0)[:, None] + np.arange(3.0)[None, :])[None, :, :, None]
  want35 = 5 * np.arange(5.0)[:, None] + 0.5 * np.arange(5.0)[None, :]
  with jax.enable_x64(True):
    got = layers.resize_align_corners(jnp.asarray(X, jnp.float64), (4, 4))
    got35 = layers.resize_align_corners(jnp.asarray(x35, jnp.float64), (5, 5))
    assert got.dtype == got35.dtype == jnp.float64
  np.testing.assert_allclose(np.asarray(got)[0, :, :, 0], want, rtol=0, atol=1e-15)
  np.testing.assert_allclose(np.asarray(got35)[0, :, :, 0], want35, rtol=0, atol=1e-14)


def _legacy_float32_matrix(size_in, size_out):
  """The float32 weights as built before float64 ones existed (for the bitwise check)."""
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


def test_align_corners_float32_weights_and_results_unchanged_bitwise():
  for size_in, size_out in ((1, 2), (2, 4), (3, 6), (5, 10), (7, 14), (8, 16), (9, 18),
                            (16, 32), (32, 64), (64, 128)):
    # pylint: disable-next=protected-access
    new = layers._align_corners_matrix(size_in, size_out)
    assert new.dtype == np.float32
    np.testing.assert_array_equal(new, _legacy_float32_matrix(size_in, size_out))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 5, 3))
  got = layers.resize_align_corners(x, (14, 10))
  rows, cols = (jnp.asarray(_legacy_float32_matrix(n, 2 * n)) for n in (7, 5))
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, jnp.einsum("oh,pw,bhwc->bopc", rows, cols, x))
