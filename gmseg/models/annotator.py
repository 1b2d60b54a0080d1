"""The annotator A: the paper's FPN label branch on generator features."""
from typing import Optional, Sequence

import flax.linen as nn
import jax

from gmseg.models import layers


class Annotator(nn.Module):
  """Maps multi-scale generator features to per-pixel part logits.

  One 1x1 lateral conv per feature map to `tmp_channels`; fused from low to
  high resolution by bilinear resizing and addition; then `num_layers - 1`
  blocks of [3x3 conv (no bias), norm, ReLU] and a 3x3 conv to the classes.

  Attributes:
    num_classes: number of part classes (background included).
    tmp_channels: width of the fused feature pyramid (128 in the paper).
    num_layers: head depth; the paper uses 3 (two blocks + classifier).
    norm: 'group' (default), 'batch' (paper) or 'none'.
    out_size: (H, W) of the logits; defaults to the largest feature map.
    head_size: (H, W) the fused pyramid is bilinearly upsampled to before the
      head (DatasetGAN-style pixel features: the head then sees every output
      pixel, e.g. the image's 64x64 rather than the DCGAN's 32x32); None keeps
      the largest feature map's size (paper).
    bn_running_var: BatchNorm's running variance, 'biased' (Flax's, default)
      or 'unbiased' (torch's, the paper's); see layers.norm_layer.
  """
  num_classes: int
  tmp_channels: int = 128
  num_layers: int = 3
  norm: str = "group"
  out_size: Optional[tuple[int, int]] = None
  head_size: Optional[tuple[int, int]] = None
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool = False):
    """Args:
      features: tuple of `[B, h_i, w_i, c_i]`, low to high resolution.
      train: BatchNorm mode (ignored by GroupNorm).
    Returns:
      logits `[B, H, W, num_classes]`.
    """
    if not features:
      raise ValueError("Annotator needs at least one feature map.")
    x = None
    for i, f in enumerate(features):
      lateral = nn.Conv(self.tmp_channels, (1, 1), name=f"lateral{i}")(f)
      x = lateral if x is None else layers.resize_to(x, lateral.shape[1:3]) + lateral
    if self.head_size is not None:
      x = layers.resize_to(x, tuple(self.head_size))
    for j in range(self.num_layers - 1):
      x = layers.conv_norm_relu(x, self.tmp_channels, self.norm, train,
                                f"head{j}", use_bias=False,
                                running_var=self.bn_running_var)
    x = nn.Conv(self.num_classes, (3, 3), padding=1, name="classifier")(x)
    if self.out_size is not None:
      x = layers.resize_to(x, self.out_size)
    return x
