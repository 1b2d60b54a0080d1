"""DeepLabv3 with a dilated ResNet-50/101 backbone (torchvision layout), and a
loader for ImageNet-pretrained torchvision ResNet checkpoints without torch.

Parameter paths are what the matching presets in gmseg/matching.py select on:
`backbone/{stem_conv,stem_norm,layer1..layer4}/...` and `classifier/...`
(`classifier/aspp/...`, `classifier/head_conv`, `classifier/final`).

Normalisation of the backbone (`backbone_norm`):
  'frozen_batch': BatchNorm that always uses its stored statistics, in train
    and eval alike, so it is a per-channel affine and per-example gradients are
    exact. The statistics live in the `batch_stats` collection (the same names
    as 'batch', so one loader serves both, and the pretrained statistics travel
    with the checkpointed state); they are never updated because the layer
    never computes batch statistics. Its scale and bias are ordinary params.
  'batch': ordinary BatchNorm with running statistics in `batch_stats`
    (updated with Flax's biased batch variance, or torch's unbiased one with
    `bn_running_var='unbiased'`, as head norms 'batch'; see layers.norm_layer).
  'group': GroupNorm (no pretrained weights apply).
"""
import math
import os
from typing import Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmseg.models import layers
from gmseg.typing import Params, PyTree

STAGE_SIZES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BACKBONE_NORMS = ("frozen_batch", "batch", "group")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_URLS = (
    "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "https://download.pytorch.org/models/resnet101-5d3b4d8f.pth",
)

# torchvision's ResNet initialises convs with kaiming_normal(fan_out, relu);
# the same here so a backbone trained from scratch starts as torchvision's.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _norm(kind: str, train: bool, name: str, running_var: str):
  if kind == "frozen_batch":
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)
  return layers.norm_layer(kind, train, name, running_var)


class _Bottleneck(nn.Module):
  """torchvision v1.5 bottleneck: 1x1 -> 3x3 (stride, dilation) -> 1x1 (x4)."""
  planes: int
  stride: int
  dilation: int
  norm: str
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, x, train):
    norm = lambda name: _norm(self.norm, train, name, self.bn_running_var)
    out_ch = self.planes * 4
    residual = x
    if self.stride != 1 or x.shape[-1] != out_ch:
      residual = nn.Conv(out_ch, (1, 1), strides=self.stride, use_bias=False,
                         kernel_init=_conv_init, name="downsample_conv")(x)
      residual = norm("downsample_norm")(residual)
    y = nn.Conv(self.planes, (1, 1), use_bias=False, kernel_init=_conv_init,
                name="conv1")(x)
    y = jax.nn.relu(norm("norm1")(y))
    d = self.dilation
    y = nn.Conv(self.planes, (3, 3), strides=self.stride, padding=d,
                kernel_dilation=d, use_bias=False, kernel_init=_conv_init,
                name="conv2")(y)
    y = jax.nn.relu(norm("norm2")(y))
    y = nn.Conv(out_ch, (1, 1), use_bias=False, kernel_init=_conv_init,
                name="conv3")(y)
    y = norm("norm3")(y)
    return jax.nn.relu(y + residual)


class _Stage(nn.Module):
  """One torchvision `layerN`: blocks `block0..`; only block0 strides."""
  planes: int
  num_blocks: int
  stride: int
  first_dilation: int
  dilation: int
  norm: str
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, x, train):
    for j in range(self.num_blocks):
      x = _Bottleneck(self.planes, self.stride if j == 0 else 1,
                      self.first_dilation if j == 0 else self.dilation,
                      self.norm, self.bn_running_var, name=f"block{j}")(x, train)
    return x


class ResNet(nn.Module):
  """Bottleneck ResNet without pooling/fc, as torchvision's `resnet50/101`
  with `replace_stride_with_dilation`.

  Attributes:
    stage_sizes: blocks per stage, (3, 4, 6, 3) for ResNet-50.
    width: stem width; stage i has 3x3 width `width * 2**i` and outputs 4x it.
    norm: one of BACKBONE_NORMS.
    dilate: for layer2..4, replace the stride by dilation (output stride 8
      with (False, True, True)).
    bn_running_var: running variance of norm 'batch' (layers.norm_layer).
  """
  stage_sizes: Sequence[int]
  width: int = 64
  norm: str = "frozen_batch"
  dilate: Sequence[bool] = (False, True, True)
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args:
      x: normalised images `[B, H, W, 3]`.
    Returns:
      features `[B, H/s, W/s, 32 * width]`, s = 32 / 2**sum(dilate).
    """
    if len(self.stage_sizes) != 4 or len(self.dilate) != 3:
      raise ValueError(f"ResNet needs 4 stage sizes and 3 dilate flags, got "
                       f"{self.stage_sizes} and {self.dilate}.")
    x = nn.Conv(self.width, (7, 7), strides=2, padding=3, use_bias=False,
                kernel_init=_conv_init, name="stem_conv")(x)
    x = jax.nn.relu(_norm(self.norm, train, "stem_norm", self.bn_running_var)(x))
    # Flax pads max_pool with -inf, as torch does.
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    dilation = 1
    for i, num_blocks in enumerate(self.stage_sizes):
      stride, previous = (1 if i == 0 else 2), dilation
      if i > 0 and self.dilate[i - 1]:
        # torchvision: a dilated layer's first block keeps the previous
        # dilation, the others use the new one.
        dilation, stride = dilation * stride, 1
      x = _Stage(self.width * 2**i, num_blocks, stride, previous, dilation,
                 self.norm, self.bn_running_var, name=f"layer{i + 1}")(x, train)
    return x


class _ASPP(nn.Module):
  """1x1 branch, atrous 3x3 branches, image pooling; concat -> 1x1 + dropout."""
  channels: int
  rates: Sequence[int]
  norm: str
  dropout: float
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, x, train):
    c = self.channels
    norm = lambda name: _norm(self.norm, train, name, self.bn_running_var)
    branches = [jax.nn.relu(norm("b0_norm")(
        nn.Conv(c, (1, 1), use_bias=False, name="b0_conv")(x)))]
    for k, r in enumerate(self.rates, start=1):
      y = nn.Conv(c, (3, 3), padding=r, kernel_dilation=r, use_bias=False,
                  name=f"b{k}_conv")(x)
      branches.append(jax.nn.relu(norm(f"b{k}_norm")(y)))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
    pooled = nn.Conv(c, (1, 1), use_bias=False, name="pool_conv")(pooled)
    pooled = jax.nn.relu(norm("pool_norm")(pooled))
    # Bilinear upsampling of a 1x1 map is a broadcast.
    branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], c)))
    y = nn.Conv(c, (1, 1), use_bias=False, name="project_conv")(
        jnp.concatenate(branches, axis=-1))
    y = jax.nn.relu(norm("project_norm")(y))
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class _DeepLabHead(nn.Module):
  """torchvision's DeepLabHead: ASPP, 3x3 conv + norm + ReLU, 1x1 to classes."""
  num_classes: int
  channels: int
  rates: Sequence[int]
  norm: str
  dropout: float
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, x, train):
    x = _ASPP(self.channels, self.rates, self.norm, self.dropout, self.bn_running_var,
              name="aspp")(x, train)
    x = layers.conv_norm_relu(x, self.channels, self.norm, train, "head",
                              use_bias=False, running_var=self.bn_running_var)
    return nn.Conv(self.num_classes, (1, 1), name="final")(x)


class DeepLabV3(nn.Module):
  """DeepLabv3 (torchvision `deeplabv3_resnet50/101` without the aux head).

  Attributes:
    num_classes: output classes.
    depth: 50 or 101 (ignored when `stage_sizes` is given).
    norm: head normalisation, 'group' (default), 'batch' or 'none'.
    backbone_norm: 'frozen_batch' (default; pretrained statistics as a fixed
      affine), 'batch' or 'group'.
    dropout: rate after the ASPP projection (needs the 'dropout' rng in train).
    width: backbone stem width (64 for the pretrained weights).
    stage_sizes: overrides `depth`'s blocks per stage; tests shrink it.
    aspp_rates: atrous rates of the three 3x3 ASPP branches.
    aspp_channels: width of the ASPP branches and the head.
    bn_running_var: running variance of the 'batch' norms, head and backbone:
      'biased' (Flax's, default) or 'unbiased' (torch's, the paper's).
  """
  num_classes: int
  depth: int = 101
  norm: str = "group"
  backbone_norm: str = "frozen_batch"
  dropout: float = 0.5
  width: int = 64
  stage_sizes: Optional[Sequence[int]] = None
  aspp_rates: Sequence[int] = (12, 24, 36)
  aspp_channels: int = 256
  bn_running_var: str = "biased"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args:
      x: images `[B, H, W, 3]` in [-1, 1].
      train: BatchNorm mode of 'batch' norms and dropout on.
    Returns:
      logits `[B, H, W, num_classes]` (computed at H/8 and bilinearly upsampled).
    """
    if self.stage_sizes is None and self.depth not in STAGE_SIZES:
      raise ValueError(f"DeepLabV3 depth must be one of {tuple(STAGE_SIZES)}, "
                       f"got {self.depth}; or pass stage_sizes.")
    if self.backbone_norm not in BACKBONE_NORMS:
      raise ValueError(f"Unknown backbone_norm {self.backbone_norm!r}; "
                       f"expected one of {BACKBONE_NORMS}.")
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"DeepLabV3 expects images [B, H, W, 3], got {x.shape}.")
    stages = self.stage_sizes or STAGE_SIZES[self.depth]
    # In x's dtype: Python-float constants would make float32 inputs float64
    # under jax_enable_x64.
    mean, std = jnp.asarray(IMAGENET_MEAN, x.dtype), jnp.asarray(IMAGENET_STD, x.dtype)
    h = ((x + 1.0) / 2.0 - mean) / std
    h = ResNet(tuple(stages), self.width, self.backbone_norm,
               bn_running_var=self.bn_running_var, name="backbone")(h, train)
    logits = _DeepLabHead(self.num_classes, self.aspp_channels,
                          tuple(self.aspp_rates), self.norm, self.dropout,
                          self.bn_running_var, name="classifier")(h, train)
    return layers.resize_to(logits, x.shape[1:3])


# --- Pretrained torchvision weights -----------------------------------------

_LEAF_TO_TORCH = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}


def _torch_key(path: tuple[str, ...]) -> str:
  """Maps a backbone variable path to its torchvision state-dict key."""
  *mods, leaf = path
  if mods[0] in ("stem_conv", "stem_norm"):
    prefix = "conv1" if mods[0] == "stem_conv" else "bn1"
  else:
    layer, block, mod = mods  # ('layer3', 'block0', 'conv2')
    name = {"downsample_conv": "downsample.0",
            "downsample_norm": "downsample.1"}.get(mod)
    if name is None:
      name = mod.replace("norm", "bn")
    prefix = f"{layer}.{block[len('block'):]}.{name}"
  return f"{prefix}.{'weight' if leaf == 'kernel' else _LEAF_TO_TORCH[leaf]}"


def _read_checkpoint(path: str) -> dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No torchvision ResNet checkpoint at {path!r}. Download the ImageNet "
        f"weights (one of {', '.join(TORCHVISION_URLS)}) and pass the .pth "
        "file as it is: it is read directly, no conversion with torch needed.")
  if path.endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  from gmseg.convert import torch_zip  # lazy: only needed for loading
  return dict(torch_zip.load(path))


def load_torchvision_resnet(path: str, params: Params,
                            batch_stats: Optional[PyTree] = None) -> dict:
  """Loads a torchvision ResNet-50/101 ImageNet checkpoint into the backbone.

  Args:
    path: a torchvision `.pth` (torch zip format), read without torch; or a
      `.npz` with the same key names.
    params: the DeepLabV3 params (with `backbone`) or a ResNet's params.
    batch_stats: the matching `batch_stats`; required, since the backbone's
      BatchNorm ('frozen_batch' or 'batch') takes the pretrained statistics.
      torchvision's `running_var` is copied as stored: it was accumulated
      with torch's unbiased batch variance, and normalising with it is the
      same operation in both frameworks, so 'frozen_batch' is exact. With
      'batch', later updates follow the module's `bn_running_var` (Flax's
      biased convention by default, torch's with 'unbiased'; layers.norm_layer).
  Returns:
    `{'params': ..., 'batch_stats': ...}`, the inputs with the backbone
    replaced; everything else (the classifier) is kept.
  Raises:
    ValueError: GroupNorm backbone, missing/extra keys or shape mismatches,
      each listed by name. The checkpoint's `fc.*` keys are ignored.
  """
  params = flax.core.unfreeze(params)
  nested = "backbone" in params
  backbone = params["backbone"] if nested else params
  if "stem_norm" not in backbone or "scale" not in backbone["stem_norm"]:
    raise ValueError(
        "load_torchvision_resnet needs a BatchNorm backbone "
        "(backbone_norm='frozen_batch' or 'batch'); GroupNorm/none backbones "
        "cannot take the pretrained BatchNorm weights and statistics.")
  if batch_stats is None:
    raise ValueError("load_torchvision_resnet needs batch_stats (the "
                     "'batch_stats' collection from init) for the running "
                     "statistics of the pretrained BatchNorms.")
  batch_stats = flax.core.unfreeze(batch_stats)
  stats = batch_stats["backbone"] if nested else batch_stats

  ours = {}  # torch key -> (collection, flax path, target leaf)
  for coll, tree in (("params", backbone), ("batch_stats", stats)):
    for p, leaf in flax.traverse_util.flatten_dict(tree).items():
      ours[_torch_key(p)] = (coll, p, leaf)

  ckpt = _read_checkpoint(path)
  ckpt = {k: v for k, v in ckpt.items()
          if not k.startswith("fc.") and not k.endswith(".num_batches_tracked")}
  missing = sorted(set(ours) - set(ckpt))
  extra = sorted(set(ckpt) - set(ours))
  if missing or extra:
    raise ValueError(
        f"{path}: checkpoint and backbone keys differ (depth or stage_sizes "
        f"wrong?). Missing from the checkpoint ({len(missing)}): "
        f"{_short(missing)}. Unexpected in the checkpoint ({len(extra)}): "
        f"{_short(extra)}.")

  new = {"params": {}, "batch_stats": {}}
  mismatched = []
  for key, (coll, p, leaf) in ours.items():
    value = np.asarray(ckpt[key])
    if p[-1] == "kernel":
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if value.shape != tuple(leaf.shape):
      mismatched.append(f"{key} {tuple(ckpt[key].shape)} -> "
                        f"{'/'.join(p)} {tuple(leaf.shape)}")
      continue
    new[coll][p] = jnp.asarray(value, dtype=leaf.dtype)
  if mismatched:
    raise ValueError(f"{path}: shape mismatches (width wrong?): "
                     + "; ".join(mismatched))
  backbone = flax.traverse_util.unflatten_dict(new["params"])
  stats = flax.traverse_util.unflatten_dict(new["batch_stats"])
  if nested:
    return {"params": {**params, "backbone": backbone},
            "batch_stats": {**batch_stats, "backbone": stats}}
  return {"params": backbone, "batch_stats": stats}


def _short(keys: Sequence[str], limit: int = 20) -> str:
  shown = ", ".join(keys[:limit])
  return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def count_params(params: PyTree) -> int:
  """Number of scalars in a (possibly abstract) pytree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
