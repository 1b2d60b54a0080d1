"""The paper's UNet segmenter (Pytorch-UNet layout with bilinear upsampling)."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmseg.models import layers


class _DoubleConv(nn.Module):
  features: int
  norm: str
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, x, train):
    for name in ("c0", "c1"):
      x = layers.conv_norm_relu(x, self.features, self.norm, train, name,
                                running_var=self.bn_running_var)
    return x


class UNet(nn.Module):
  """UNet: `inc`, `down1..4` (max-pool 2 + double conv), `up1..4` (bilinear
  x2, concatenate the skip first, double conv), `outc` (1x1 conv).

  Upsampling follows the paper's code by default: bilinear x2 with corner
  pixels aligned (torch `align_corners=True`), zero-padded to the skip's size
  when the skip is odd-sized. With half-pixel centres instead the labelled-set
  gradient of the same weights differs from the official code's by up to 93%
  on some tensors (issue 9), so matching targets would differ too.

  With widths (64, 128, 256, 512, 512) this is the paper's network
  (up path 256/128/64/64). Parameter paths (`down3/c1_conv/kernel`, ...) are
  what the matching presets in gmseg/matching.py select on.

  Attributes:
    num_classes: output classes.
    widths: the 5 encoder widths; tests shrink them.
    norm: 'group' (default), 'batch' (paper) or 'none'.
    upsample: 'align_corners' (paper, default) or 'half_pixel' (torch's
      align_corners=False, resized straight to the skip's size; gmseg before
      issue 9).
    bn_running_var: BatchNorm's running variance, 'biased' (Flax's, default)
      or 'unbiased' (torch's, the paper's); see layers.norm_layer.
  """
  num_classes: int
  widths: Sequence[int] = (64, 128, 256, 512, 512)
  norm: str = "group"
  upsample: str = "align_corners"
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args:
      x: images `[B, H, W, 3]` in [-1, 1].
    Returns:
      logits `[B, H, W, num_classes]`.
    """
    if len(self.widths) != 5:
      raise ValueError(f"UNet needs 5 widths, got {self.widths}.")
    if self.upsample not in layers.UPSAMPLING:
      raise ValueError(f"UNet upsample={self.upsample!r}; use one of {layers.UPSAMPLING}.")
    w, rv = self.widths, self.bn_running_var
    skips = [_DoubleConv(w[0], self.norm, rv, name="inc")(x, train)]
    for i in range(1, 5):
      h = nn.max_pool(skips[-1], (2, 2), (2, 2))
      skips.append(_DoubleConv(w[i], self.norm, rv, name=f"down{i}")(h, train))
    h = skips.pop()
    up_widths = (w[2], w[1], w[0], w[0])
    for i, width in enumerate(up_widths, start=1):
      skip = skips.pop()
      h = _upsample(h, skip.shape[1:3], self.upsample)
      h = _DoubleConv(width, self.norm, rv, name=f"up{i}")(
          jnp.concatenate([skip, h], axis=-1), train)
    return nn.Conv(self.num_classes, (1, 1), name="outc")(h)


def _upsample(h: jax.Array, skip_hw: tuple[int, int], kind: str) -> jax.Array:
  """`[B, h, w, C]` -> `[B, *skip_hw, C]` (see `UNet.upsample`)."""
  if kind == "half_pixel":
    return layers.resize_to(h, skip_hw)
  h = layers.resize_align_corners(h, (2 * h.shape[1], 2 * h.shape[2]))
  dy, dx = skip_hw[0] - h.shape[1], skip_hw[1] - h.shape[2]
  if dy < 0 or dx < 0:
    raise ValueError(f"UNet: upsampled {h.shape[1:3]} is larger than the skip {skip_hw}.")
  # As the paper's code: the odd extra row/column goes to the bottom/right.
  return jnp.pad(h, ((0, 0), (dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2), (0, 0)))
