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
