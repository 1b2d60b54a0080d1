"""StyleGAN (v1) generator (Karras et al. 2019) in Flax, as the paper's code
builds it for DatasetGAN's checkpoints (LAGM `training/stylegan1.py`:
G_mapping, Truncation, G_synthesis; `StyleGANGenerator` around them).

Checked against `../shared/fixtures/stylegan1` (tests/test_stylegan1.py), in
float32 and float64. Conventions, as in that code:

  * Weights are stored raw; multipliers are applied at run time (equalized
    learning rate): mapping dense `w * 0.01 * sqrt(2) / sqrt(512)`,
    `b * 0.01`; style dense `w / sqrt(512)`; 3x3 convs
    `w * sqrt(2) / sqrt(in * 9)`; ToRGB `w / sqrt(in)`; other biases as stored.
  * Mapping: z normalised by its RMS (1e-8), 8 dense + leaky ReLU 0.2 (no
    gain), broadcast to 18 ws whatever the resolution. Truncation
    `w_avg + psi * (w - w_avg)` on the first `cutoff` of the 18.
  * Synthesis: block i (4x4 first) reads ws[2i] and ws[2i + 1]. The 4x4 block
    starts from `const + bias`; later blocks upsample with conv0_up (below).
    Each conv is followed by an epilogue: noise * per-channel weight, leaky
    ReLU 0.2, instance norm (eps 1e-5, biased variance), style
    `x * (1 + s[:C]) + s[C:]` with `s = dense(w)`. ToRGB (1x1, linear) after
    the last block only.
  * conv0_up below 128x128 output: nearest 2x, 3x3 conv, [1,2,1] blur, bias.
    From 128x128 on (the 'fused' path): a stride-2 transposed conv of the 3x3
    weight padded to 5x5 and summed over its four 4x4 windows, then the blur
    and bias. Mathematically that is nearest 2x and a kernel-flipped 3x3
    conv, not the small blocks' path: the switch must be at the same size.
  * Features: two maps per block, in the order the paper's code returns
    them: `x` (the block output, after its second epilogue), then `x2` (the
    second 3x3 conv's output with its bias, before that epilogue).
  * A 1024 generator returns its image and its last two features at 512 (a
    2x2 mean, which equals the code's bilinear, align_corners=False resize).

Noise is not part of any checkpoint: it comes from the `rng` key ('random'),
from a fixed key, the same for every call and sample ('const'), is left out
('none'), or is passed explicitly (`synthesis(..., noise=...)`).

Parameter tree (the generator is frozen; layouts are Flax's):

  mapping/dense{i}/{weight [512, 512], bias [512]},  w_avg [512]
  synthesis/b4/{const [4, 4, C], bias [C], conv/{weight [3, 3, C, C], bias}}
  synthesis/b{res}/{conv0_up, conv1}/{weight [3, 3, in, out], bias [out]}
  synthesis/b{res}/epi{1,2}/{noise_weight [C], style/{weight [512, 2C], bias [2C]}}
  synthesis/torgb/{weight [1, 1, C, 3], bias [3]}

The blur kernels (`conv0_up.intermediate.kernel`) are not parameters: they
must hold [1,2,1] x [1,2,1] / 16 (checked on conversion).
"""
import collections
import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmseg import errors
from gmseg.models import generators

NOISE_MODES = ("random", "const", "none")
Z_DIM = W_DIM = 512
# The mapping broadcasts to 18 ws at every resolution (the synthesis of a
# 1024 generator reads all of them, smaller ones fewer).
NUM_WS = 18
MAPPING_LAYERS = 8
_PARAM_DTYPE = jnp.float32
_SLOPE = 0.2
_INSTANCE_NORM_EPS = 1e-5
# 'const' noise: one fixed draw per layer, independent of the call's key.
_CONST_NOISE_SEED = 0
_BLUR = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16.0


class StateDictMismatch(errors.UserError, ValueError):
  """A state dict whose names or shapes do not fit the architecture."""


@dataclasses.dataclass(frozen=True)
class Arch:
  """Architecture of a StyleGAN (v1) generator.

  Attributes:
    resolution: the synthesis output side (a power of two, 4 ... 1024);
      a 1024 generator's image is returned at 512.
    fmap_base, fmap_max: channels of the block of side r are
      min(int(fmap_base / 2 ** (log2(r) - 1)), fmap_max) (8192 and 512 in
      every released checkpoint).
  """
  resolution: int = 1024
  fmap_base: int = 8192
  fmap_max: int = 512

  def __post_init__(self):
    r = self.resolution
    if r < 4 or r > 1024 or r & (r - 1):
      raise ValueError(f"StyleGAN resolution must be a power of two in [4, 1024] "
                       f"(18 ws feed at most 9 blocks), got {r}.")

  @property
  def block_resolutions(self) -> tuple[int, ...]:
    return tuple(2 ** i for i in range(2, int(math.log2(self.resolution)) + 1))

  def channels(self, res: int) -> int:
    return min(int(self.fmap_base / 2 ** (int(math.log2(res)) - 1)), self.fmap_max)

  @property
  def num_ws_used(self) -> int:
    """How many of the 18 ws the synthesis reads: two per block."""
    return 2 * len(self.block_resolutions)

  @property
  def output_resolution(self) -> int:
    """The side of the returned image (1024 generators are resized to 512)."""
    return 512 if self.resolution == 1024 else self.resolution


def _floating(x: jax.Array) -> jax.Array:
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _lrelu(x: jax.Array) -> jax.Array:
  return jnp.where(x >= 0, x, x * _SLOPE)


def _conv(x: jax.Array, w: jax.Array, padding: int, lhs_dilation: int = 1) -> jax.Array:
  """Cross-correlation, `x` `[B, H, W, I]`, `w` `[kh, kw, I, O]`."""
  dtype = jnp.promote_types(x.dtype, w.dtype)  # lax wants one dtype (float64 runs)
  return jax.lax.conv_general_dilated(
      x.astype(dtype), w.astype(dtype), (1, 1), ((padding, padding),) * 2,
      lhs_dilation=(lhs_dilation, lhs_dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _blur(x: jax.Array) -> jax.Array:
  """The depthwise [1,2,1] x [1,2,1] / 16 filter, zero padding 1."""
  c = x.shape[-1]
  k = jnp.tile(jnp.asarray(_BLUR, x.dtype)[:, :, None, None], (1, 1, 1, c))
  return jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      feature_group_count=c)


def mean_2x2(x: jax.Array) -> jax.Array:
  """`[B, 2H, 2W, C]` -> `[B, H, W, C]`, the mean of each 2x2 cell (the
  paper's code's 1024 -> 512 bilinear resize, align_corners=False)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Dense(nn.Module):
  """Weight-scaled dense layer: `x @ (weight * w_mul) + bias * lr_mul`,
  `w_mul = gain * lr_mul / sqrt(in)`."""
  features: int
  gain: float = 1.0
  lr_multiplier: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    weight = self.param("weight", nn.initializers.normal(1.0 / self.lr_multiplier),
                        (fan_in, self.features), _PARAM_DTYPE)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
    # Python-float multipliers are weakly typed: float32 in a float32 run (as
    # the reference rounds them), float64 in a float64 one.
    w_mul = self.gain * self.lr_multiplier / math.sqrt(fan_in)
    return x @ (weight * w_mul) + bias * self.lr_multiplier


class MappingNetwork(nn.Module):
  """z `[B, 512]` -> w `[B, 512]` (pixel norm, 8 dense + leaky ReLU)."""

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = _floating(z)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + 1e-8)
    for i in range(MAPPING_LAYERS):
      x = _lrelu(Dense(W_DIM, gain=math.sqrt(2.0), lr_multiplier=0.01, name=f"dense{i}")(x))
    return x


def truncate(ws: jax.Array, w_avg: jax.Array, psi: float, cutoff: int) -> jax.Array:
  """`w_avg + psi * (w - w_avg)` on `ws[:, :cutoff]` (`[B, 18, 512]`); the
  rest unchanged. Written as `w + (psi - 1) * (w - w_avg)`, the form the
  reference rounds (torch.lerp)."""
  if psi == 1 or cutoff == 0:
    return ws
  truncated = ws + (psi - 1.0) * (ws - w_avg)
  mask = (jnp.arange(ws.shape[1]) < cutoff)[None, :, None]
  return jnp.where(mask, truncated, ws)


class Conv3x3(nn.Module):
  """3x3 conv + bias, optionally upsampling 2x first (conv0_up).

  Attributes:
    features: output channels.
    up: 'none', 'nearest' (nearest 2x, conv, blur) or 'fused' (transposed
      conv of the summed 4x4 kernel, blur); both upsampling paths add the
      bias after the blur.
  """
  features: int
  up: str = "none"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    weight = self.param("weight", nn.initializers.normal(1.0),
                        (3, 3, fan_in, self.features), _PARAM_DTYPE)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)
    w = weight * (math.sqrt(2.0) / math.sqrt(fan_in * 9))
    if self.up == "none":
      return _conv(x, w, 1) + bias
    if self.up == "nearest":
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      y = _conv(x, w, 1)
    elif self.up == "fused":
      # torch conv_transpose2d(x, w4, stride 2, padding 1) is a correlation of
      # the zero-inserted x, padded 4 - 1 - 1 = 2, with the flipped kernel.
      w5 = jnp.pad(w, ((1, 1), (1, 1), (0, 0), (0, 0)))
      w4 = w5[1:, 1:] + w5[:-1, 1:] + w5[1:, :-1] + w5[:-1, :-1]
      y = _conv(x, w4[::-1, ::-1], 2, lhs_dilation=2)
    else:
      raise ValueError(f"Unknown upsampling {self.up!r}.")
    return _blur(y) + bias


class Epilogue(nn.Module):
  """Noise, leaky ReLU, instance norm, style modulation by w `[B, 512]`."""

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, noise: Optional[jax.Array]) -> jax.Array:
    c = x.shape[-1]
    noise_weight = self.param("noise_weight", nn.initializers.zeros, (c,), _PARAM_DTYPE)
    if noise is not None:
      x = x + noise * noise_weight
    x = _lrelu(x)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    x = (x - mean) * jax.lax.rsqrt(var + _INSTANCE_NORM_EPS)
    s = Dense(2 * c, name="style")(w)[:, None, None, :]
    return x * (1.0 + s[..., :c]) + s[..., c:]


class Block(nn.Module):
  """One resolution: (const + bias | conv0_up), epilogue 1, conv, epilogue 2.

  Returns (x, x2): the block output and its second conv's output (with
  bias, before epilogue 2), both `[B, res, res, C]`.
  """
  arch: Arch
  resolution: int

  @nn.compact
  def __call__(self, x, w1, w2, noise1, noise2, batch: int):
    ch = self.arch.channels(self.resolution)
    if self.resolution == 4:
      const = self.param("const", nn.initializers.ones, (4, 4, ch), _PARAM_DTYPE)
      bias = self.param("bias", nn.initializers.ones, (ch,), _PARAM_DTYPE)
      x = jnp.broadcast_to((const + bias)[None], (batch, 4, 4, ch))
      second = "conv"
    else:
      # The reference picks the path by input side: 2 * side >= 128 is fused.
      up = "fused" if self.resolution >= 128 else "nearest"
      x = Conv3x3(ch, up=up, name="conv0_up")(x)
      second = "conv1"
    x = Epilogue(name="epi1")(x, w1, noise1)
    x2 = Conv3x3(ch, name=second)(x)
    return Epilogue(name="epi2")(x2, w2, noise2), x2


class ToRGB(nn.Module):
  """1x1 conv + bias, weight scaled by 1 / sqrt(in); no activation."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    weight = self.param("weight", nn.initializers.normal(1.0), (1, 1, fan_in, 3),
                        _PARAM_DTYPE)
    bias = self.param("bias", nn.initializers.zeros, (3,), _PARAM_DTYPE)
    return _conv(x, weight * (1.0 / math.sqrt(fan_in)), 0) + bias


class Synthesis(nn.Module):
  """ws `[B, 18, 512]` and one noise map (or None) per layer -> (image
  `[B, R, R, 3]`, features: 2 per block, `[B, r, r, C_r]`), before the 1024
  resize."""
  arch: Arch

  @nn.compact
  def __call__(self, ws: jax.Array, noise: Sequence[Optional[jax.Array]]):
    a = self.arch
    if ws.ndim != 3 or ws.shape[1] < a.num_ws_used or ws.shape[2] != W_DIM:
      raise ValueError(f"ws must be [B, >= {a.num_ws_used}, {W_DIM}], got {ws.shape}.")
    if len(noise) != a.num_ws_used:
      raise ValueError(f"Need {a.num_ws_used} noise maps (two per block), got {len(noise)}.")
    ws = _floating(ws)
    x, feats = None, []
    for i, res in enumerate(a.block_resolutions):
      x, x2 = Block(a, res, name=f"b{res}")(x, ws[:, 2 * i], ws[:, 2 * i + 1],
                                            noise[2 * i], noise[2 * i + 1], ws.shape[0])
      feats += [x, x2]
    return ToRGB(name="torgb")(x), tuple(feats)


def noise_maps(arch: Arch, batch: int, noise_mode: str, rng: Optional[jax.Array],
               dtype=jnp.float32) -> tuple[Optional[jax.Array], ...]:
  """One noise map per layer (2 per block, 4x4 first), `[B or 1, r, r, 1]`.

  'random': standard normal from `rng`, a distinct key per layer (fold_in
  by its index), a different map per sample; 'const': the same, from a fixed
  key and shared by the batch, so every call gives the same maps; 'none':
  no noise.
  """
  if noise_mode not in NOISE_MODES:
    raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.")
  if noise_mode == "none":
    return (None,) * arch.num_ws_used
  if noise_mode == "random" and rng is None:
    raise ValueError("noise_mode='random' needs an rng key.")
  key = jax.random.PRNGKey(_CONST_NOISE_SEED) if noise_mode == "const" else rng
  n = 1 if noise_mode == "const" else batch
  return tuple(jax.random.normal(jax.random.fold_in(key, j), (n, r, r, 1), dtype)
               for j, r in enumerate(np.repeat(arch.block_resolutions, 2)))


class Generator(nn.Module):
  """Mapping, truncation toward `w_avg`, synthesis, the 1024 -> 512 resize."""
  arch: Arch

  def setup(self):
    self.mapping = MappingNetwork()
    self.w_avg = self.param("w_avg", nn.initializers.zeros, (W_DIM,), _PARAM_DTYPE)
    self.synthesis = Synthesis(self.arch)

  def map(self, z, truncation_psi: float = 1.0, truncation_cutoff: int = NUM_WS):
    """z `[B, 512]` -> ws `[B, 18, 512]`, truncated."""
    w = self.mapping(z)
    ws = jnp.broadcast_to(w[:, None], (w.shape[0], NUM_WS, W_DIM))
    return truncate(ws, self.w_avg, truncation_psi, truncation_cutoff)

  def synthesize(self, ws, noise_mode="const", rng=None, noise=None):
    """ws `[B, 18, 512]` -> (image, features), resized as the paper's code
    does at 1024. `noise` (one map per layer, see `noise_maps`) overrides
    `noise_mode`."""
    if noise is None:
      noise = noise_maps(self.arch, ws.shape[0], noise_mode, rng, _floating(ws).dtype)
    img, feats = self.synthesis(ws, tuple(noise))
    if self.arch.resolution == 1024:
      img = mean_2x2(img)
      feats = feats[:-2] + tuple(mean_2x2(f) for f in feats[-2:])
    return img, feats

  def __call__(self, z, truncation_psi=0.7, truncation_cutoff=8, noise_mode="random",
               rng=None):
    return self.synthesize(self.map(z, truncation_psi, truncation_cutoff), noise_mode, rng)


def init_params(arch: Arch, rng: jax.Array) -> dict:
  """Randomly initialised params with the right tree (for shapes and tests)."""
  return Generator(arch).init(rng, jnp.zeros((1, Z_DIM)), 0.7, 8, "const")["params"]


# ----------------------------------------------------------------------------
# The paper's code's state_dict <-> params.

AVG_LATENT = "truncation.avg_latent"
_BLUR_SUFFIX = ".conv0_up.intermediate.kernel"


def expected_state_dict_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
  """State_dict names -> shapes (torch layouts), in state_dict order, of
  `Sequential(g_mapping, truncation, g_synthesis)` as the paper's code (and
  DatasetGAN's `.for_g_all.pt` files) name them. `truncation.avg_latent` is
  listed, although DatasetGAN's files probably lack it."""
  out: dict[str, tuple[int, ...]] = collections.OrderedDict()
  for i in range(MAPPING_LAYERS):
    out[f"g_mapping.dense{i}.weight"] = (W_DIM, Z_DIM if i == 0 else W_DIM)
    out[f"g_mapping.dense{i}.bias"] = (W_DIM,)
  out[AVG_LATENT] = (W_DIM,)
  last = arch.channels(arch.resolution)
  out["g_synthesis.torgb.weight"] = (3, last, 1, 1)
  out["g_synthesis.torgb.bias"] = (3,)

  def epi(p, c):
    out[f"{p}.top_epi.noise.weight"] = (c,)
    out[f"{p}.style_mod.lin.weight"] = (2 * c, W_DIM)
    out[f"{p}.style_mod.lin.bias"] = (2 * c,)

  for res in arch.block_resolutions:
    p, c = f"g_synthesis.blocks.{res}x{res}", arch.channels(res)
    if res == 4:
      out[f"{p}.const"] = (1, c, 4, 4)
      out[f"{p}.bias"] = (c,)
      epi(f"{p}.epi1", c)
      out[f"{p}.conv.weight"] = (c, c, 3, 3)
      out[f"{p}.conv.bias"] = (c,)
    else:
      out[f"{p}.conv0_up.weight"] = (c, arch.channels(res // 2), 3, 3)
      out[f"{p}.conv0_up.bias"] = (c,)
      out[f"{p}{_BLUR_SUFFIX}"] = (1, 1, 3, 3)
      epi(f"{p}.epi1", c)
      out[f"{p}.conv1.weight"] = (c, c, 3, 3)
      out[f"{p}.conv1.bias"] = (c,)
    epi(f"{p}.epi2", c)
  return out


def params_from_state_dict(state_dict: Mapping[str, Any], arch: Arch,
                           w_avg: Optional[np.ndarray] = None) -> dict:
  """Maps a state dict of the paper's code (name -> array) to our params.

  Strict: every name of `expected_state_dict_shapes` but `truncation.avg_latent`
  must be there with its shape, and nothing else; the error lists missing,
  extra and mis-shaped entries. The average latent is the state dict's
  `truncation.avg_latent` when present (it overrides a w_avg file in the
  paper's code too), else `w_avg` `[512]`. Blur kernels must be the [1,2,1]
  filter.
  """
  expected = expected_state_dict_shapes(arch)
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  missing = [k for k in expected if k not in sd and k != AVG_LATENT]
  extra = [k for k in sd if k not in expected]
  shapes = [f"{k}: {sd[k].shape} != {expected[k]}" for k in expected
            if k in sd and sd[k].shape != expected[k]]
  if missing or extra or shapes:
    raise StateDictMismatch(
        f"The StyleGAN (v1) state dict does not fit a {arch.resolution}x{arch.resolution} "
        f"generator (fmap_base {arch.fmap_base}, fmap_max {arch.fmap_max}):\n"
        f"  missing: {missing}\n  extra: {extra}\n  wrong shapes: {shapes}\n"
        "Check the resolution argument against the checkpoint "
        "(DatasetGAN: face 1024, car 512, cat 256).")
  for k, v in sd.items():
    if k.endswith(_BLUR_SUFFIX) and not np.allclose(v.reshape(3, 3), _BLUR, atol=1e-7):
      raise StateDictMismatch(f"{k} is not the [1,2,1] x [1,2,1] / 16 blur kernel; other "
                              "blur kernels are not supported.")
  if AVG_LATENT in sd:
    w_avg = sd[AVG_LATENT]
  if w_avg is None:
    raise StateDictMismatch(
        f"The state dict has no {AVG_LATENT} and no average latent was given: pass the "
        "w_avg .npy that comes with the checkpoint (DatasetGAN: avg_latent_stylegan1.npy).")
  w_avg = np.asarray(w_avg)
  if w_avg.shape != (W_DIM,):
    raise StateDictMismatch(f"The average latent has shape {w_avg.shape}; a StyleGAN (v1) "
                            f"average latent is [{W_DIM}] (one w, not a z or ws).")
  f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731

  def dense(p):
    return {"weight": f32(sd[f"{p}.weight"]).T, "bias": f32(sd[f"{p}.bias"])}

  def conv(p):
    return {"weight": f32(sd[f"{p}.weight"]).transpose(2, 3, 1, 0), "bias": f32(sd[f"{p}.bias"])}

  def epi(p):
    return {"noise_weight": f32(sd[f"{p}.top_epi.noise.weight"]),
            "style": dense(f"{p}.style_mod.lin")}

  synthesis = {"torgb": conv("g_synthesis.torgb")}
  for res in arch.block_resolutions:
    p = f"g_synthesis.blocks.{res}x{res}"
    block = {"epi1": epi(f"{p}.epi1"), "epi2": epi(f"{p}.epi2")}
    if res == 4:
      block.update(const=f32(sd[f"{p}.const"])[0].transpose(1, 2, 0), bias=f32(sd[f"{p}.bias"]),
                   conv=conv(f"{p}.conv"))
    else:
      block.update(conv0_up=conv(f"{p}.conv0_up"), conv1=conv(f"{p}.conv1"))
    synthesis[f"b{res}"] = block
  return {"mapping": {f"dense{i}": dense(f"g_mapping.dense{i}") for i in range(MAPPING_LAYERS)},
          "w_avg": f32(w_avg), "synthesis": synthesis}


def infer_arch(state_dict: Mapping[str, Any]) -> Arch:
  """The architecture a state dict was built with: the resolution from its
  block names, fmap_max from the 4x4 channels, fmap_base from the last
  block's (any value that gives the same channels when all are capped)."""
  sizes = {k.split(".")[2] for k in state_dict if k.startswith("g_synthesis.blocks.")}
  const = np.shape(state_dict.get("g_synthesis.blocks.4x4.const", ()))
  rgb = np.shape(state_dict.get("g_synthesis.torgb.weight", ()))
  if not sizes or len(const) != 4 or len(rgb) != 4:
    raise StateDictMismatch(
        "No g_synthesis.blocks.4x4.const or g_synthesis.torgb.weight: this is not a "
        f"StyleGAN (v1) state dict (its first keys: {list(state_dict)[:4]}).")
  try:
    res = max(int(x.split("x")[0]) for x in sizes)
  except ValueError:
    raise StateDictMismatch(f"Unreadable block names {sorted(sizes)}.") from None
  fmap_max, last = int(const[1]), int(rgb[1])
  fmap_base = (last if last < fmap_max else fmap_max) * 2 ** (int(math.log2(res)) - 1)
  return Arch(resolution=res, fmap_base=fmap_base, fmap_max=fmap_max)


# ----------------------------------------------------------------------------
# The gmseg generator interface.


def make_generator(params, arch: Arch, truncation_psi: float = 0.7,
                   truncation_cutoff: Optional[int] = 8, noise_mode: str = "random",
                   name: Optional[str] = None) -> generators.Generator:
  """Wraps params into a `generators.Generator`.

  `apply_fn(params, z [B, 512], rng) -> (images [B, R', R', 3] (unclamped,
  roughly [-1, 1]; R' = 512 for a 1024 generator), features)`, two features
  per block (`x`, then `x2`; `[B, r, r, C_r]`, the last two of a 1024
  generator at 512). The rng drives the 'random' noise; it is unused in the
  other modes. `apply_fn` is jitted and may be called inside other jits.
  `truncation_cutoff` None truncates all 18 ws.
  """
  if truncation_cutoff is None:
    truncation_cutoff = NUM_WS
  if noise_mode not in NOISE_MODES:
    raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.")
  if not 0 <= int(truncation_cutoff) <= NUM_WS:
    raise ValueError(f"truncation_cutoff must be in [0, {NUM_WS}], got {truncation_cutoff}.")
  module = Generator(arch)
  psi, cutoff = float(truncation_psi), int(truncation_cutoff)

  @jax.jit
  def apply_fn(params, z, rng):
    return module.apply({"params": params}, z, psi, cutoff, noise_mode, rng)

  return generators.describe(apply_fn, params, Z_DIM, name or f"stylegan1_{arch.resolution}")


def mapping(params, z: jax.Array, arch: Arch, truncation_psi: float = 1.0,
            truncation_cutoff: int = NUM_WS) -> jax.Array:
  """z `[B, 512]` -> ws `[B, 18, 512]` (for tests and notebooks)."""
  return Generator(arch).apply({"params": params}, z, truncation_psi, truncation_cutoff,
                               method=Generator.map)


def synthesis(params, ws: jax.Array, arch: Arch, noise_mode: str = "const",
              rng: Optional[jax.Array] = None, noise=None):
  """ws `[B, 18, 512]` -> (images, features); `noise`: one `[B or 1, r, r, 1]`
  map per layer, overriding `noise_mode`."""
  return Generator(arch).apply({"params": params}, ws, noise_mode, rng, noise,
                               method=Generator.synthesize)
