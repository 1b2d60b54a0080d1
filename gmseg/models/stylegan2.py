"""StyleGAN2-ADA generator (Karras et al. 2020) in Flax, equal to the official
PyTorch `training.networks.Generator` (stylegan2-ada-pytorch) in float32.

Checked against `../shared/fixtures/stylegan2` (tests/test_stylegan2.py).
Conventions, as in the official code:

  * Weights are stored raw (equalized learning rate); gains are applied at run
    time: fully connected `w * lr_mul / sqrt(in)`, `b * lr_mul`.
  * Mapping: z normalised by its RMS, `mapping_layers` FC + leaky ReLU
    (slope 0.2, gain sqrt 2), broadcast to `num_ws` copies, optional
    truncation `w_avg + psi * (w - w_avg)` on the first `cutoff` entries.
  * Synthesis ('skip' architecture): blocks 4, 8, ..., R. Each layer
    modulates its 3x3 weight by a per-sample style (affine of w) and
    demodulates it; the first conv of blocks >= 8 upsamples (zero insertion,
    transposed 3x3 conv, [1,3,3,1] low-pass filter). Noise, bias, leaky ReLU
    * sqrt 2 and a clamp to +-conv_clamp follow. Each block adds its ToRGB
    output to the 2x filtered upsampled running image.

The modulated conv is computed in the un-fused form (scale the input by the
style, one shared-weight conv for the whole batch, scale the output by the
demodulation coefficients), which is the same function as the official fused
grouped conv and maps onto a plain batched convolution.

Parameter tree (everything in the `params` collection, the generator is frozen;
names follow the official state_dict; layouts are Flax's):

  mapping/fc{i}/{weight [in, out], bias [out]},  mapping/w_avg [w_dim]
  synthesis/b4/const [4, 4, C]
  synthesis/b{res}/conv{0,1}/{weight [3, 3, in, out], bias [out],
      noise_strength [], noise_const [res, res], affine/{weight, bias}}
  synthesis/b{res}/torgb/{weight [1, 1, in, 3], bias [3], affine/{...}}

`resample_filter` buffers are not parameters: they must be the normalised
[1,3,3,1] filter (checked on conversion).
"""
import dataclasses
import json
import math
import os
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmseg.models import generators

NOISE_MODES = ("random", "const", "none")
# Parameters are created in float32 whatever jax_enable_x64 says (flax's
# param_dtype convention), so an init gives the same values with x64 on or off;
# computations run in the promoted dtype of inputs and params (float64 inputs
# or params -> float64 throughout).
_PARAM_DTYPE = jnp.float32
_SQRT2 = math.sqrt(2.0)
_LRELU_SLOPE = 0.2


@dataclasses.dataclass(frozen=True)
class Arch:
  """Architecture of an official StyleGAN2-ADA generator.

  Attributes:
    z_dim: latent size.
    w_dim: intermediate latent size.
    resolution: output image side (a power of two >= 4).
    img_channels: output channels (3).
    channel_base: channels at resolution r are min(channel_base // r,
      channel_max), as in the official code (32768 for 'paper256'/'stylegan2').
    channel_max: upper bound on channels.
    mapping_layers: number of FC layers in the mapping network.
    mapping_lr_multiplier: equalized-lr multiplier of the mapping layers.
    conv_clamp: clamp of conv/ToRGB outputs, None for none.
    architecture: synthesis architecture; only 'skip' (the official G).
  """
  z_dim: int = 512
  w_dim: int = 512
  resolution: int = 256
  img_channels: int = 3
  channel_base: int = 32768
  channel_max: int = 512
  mapping_layers: int = 8
  mapping_lr_multiplier: float = 0.01
  conv_clamp: Optional[float] = 256
  architecture: str = "skip"

  def __post_init__(self):
    r = self.resolution
    if r < 4 or r & (r - 1):
      raise ValueError(f"resolution must be a power of two >= 4, got {r}.")
    if self.architecture != "skip":
      raise ValueError(
          f"Only the 'skip' synthesis architecture is implemented (that of "
          f"every official StyleGAN2-ADA generator); got {self.architecture!r}.")

  @property
  def block_resolutions(self) -> tuple[int, ...]:
    return tuple(2 ** i for i in range(2, int(math.log2(self.resolution)) + 1))

  def channels(self, res: int) -> int:
    return min(self.channel_base // res, self.channel_max)

  @property
  def num_ws(self) -> int:
    # b4 has one conv, later blocks two; the last ToRGB takes one more w.
    return 2 * len(self.block_resolutions)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Arch":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"Unknown StyleGAN2 arch keys {unknown}; known: "
                       f"{sorted(known)}.")
    return cls(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _as_arch(arch) -> Arch:
  return arch if isinstance(arch, Arch) else Arch.from_dict(arch)


# ----------------------------------------------------------------------------
# Building blocks.


def _lrelu(x: jax.Array) -> jax.Array:
  return jnp.where(x >= 0, x, x * _LRELU_SLOPE) * _SQRT2


def _floating(x: jax.Array) -> jax.Array:
  """`x` in its own float dtype (float32 or float64), other dtypes in float32."""
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _clamp(x: jax.Array, clamp: Optional[float]) -> jax.Array:
  return x if clamp is None else jnp.clip(x, -clamp, clamp)


def _filter_2d() -> np.ndarray:
  """The normalised outer product of [1, 3, 3, 1] (sums to 1), `[4, 4]`."""
  f = np.array([1.0, 3.0, 3.0, 1.0], np.float32)
  f = np.outer(f, f)
  return f / f.sum()


def _fir(x: jax.Array, pad: tuple[int, int], dilate: int) -> jax.Array:
  """The [1,3,3,1] filter with gain 4 on each channel of `[B, H, W, C]`,
  after zero insertion (`dilate` 2: a zero between samples) and padding."""
  c = x.shape[-1]
  k = jnp.tile(jnp.asarray(_filter_2d() * 4.0, x.dtype)[:, :, None, None], (1, 1, 1, c))
  return jax.lax.conv_general_dilated(
      x, k, window_strides=(1, 1), padding=(pad, pad),
      lhs_dilation=(dilate, dilate), dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=c)


def upsample_2x(x: jax.Array) -> jax.Array:
  """Official `upfirdn2d.upsample2d` with the [1,3,3,1] filter, `[B, H, W, C]`
  -> `[B, 2H, 2W, C]`: a zero after each sample, pad 2 before and 1 after,
  filter * 4. lhs_dilation leaves out the last zero: pad 2 after instead."""
  return _fir(x, (2, 2), 2)


def _conv(x: jax.Array, w: jax.Array, up: bool) -> jax.Array:
  """Cross-correlation with 'same' padding, or the official up=2 conv.

  The up=2 conv is, per axis: zero insertion (H -> 2H), pad 3 before and 2
  after, a valid true convolution with the 3x3 kernel, then the [1,3,3,1]
  filter (gain 4), valid: output 2H. The two linear filters commute, so the
  order (conv then FIR) matches the official transposed conv + FIR.
  `x`: `[B, H, W, I]`, `w`: `[kh, kw, I, O]`.
  """
  dn = ("NHWC", "HWIO", "NHWC")
  # lax convolutions need one dtype: promote, as jnp ops do (float64 runs).
  dtype = jnp.promote_types(x.dtype, w.dtype)
  x, w = x.astype(dtype), w.astype(dtype)
  if not up:
    p = w.shape[0] // 2
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)),
                                        dimension_numbers=dn)
  # Dilated length 2H-1 + 3 + 3 = 2H + 5, i.e. the zero-inserted 2H signal
  # padded 3 before and 2 after; the valid 3x3 conv then gives 2H + 3.
  y = jax.lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), ((3, 3), (3, 3)),
                                   lhs_dilation=(2, 2), dimension_numbers=dn)
  return _fir(y, (0, 0), 1)


class FullyConnected(nn.Module):
  """Equalized-lr dense layer: `x @ (weight * lr / sqrt(in)) + bias * lr`."""
  features: int
  lr_multiplier: float = 1.0
  bias_init: float = 0.0
  activation: str = "linear"  # or 'lrelu'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    weight = self.param(
        "weight", lambda k, s: jax.random.normal(k, s, _PARAM_DTYPE) / self.lr_multiplier,
        (fan_in, self.features))
    bias = self.param("bias", nn.initializers.constant(self.bias_init),
                      (self.features,), _PARAM_DTYPE)
    y = x @ (weight * (self.lr_multiplier / math.sqrt(fan_in)))
    y = y + bias * self.lr_multiplier
    return _lrelu(y) if self.activation == "lrelu" else y


class MappingNetwork(nn.Module):
  """z `[B, z_dim]` -> ws `[B, num_ws, w_dim]`, with truncation."""
  w_dim: int
  num_ws: int
  num_layers: int = 8
  lr_multiplier: float = 0.01

  @nn.compact
  def __call__(self, z: jax.Array, truncation_psi: float = 1.0,
               truncation_cutoff: Optional[int] = None) -> jax.Array:
    x = _floating(z)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + 1e-8)
    for i in range(self.num_layers):
      x = FullyConnected(self.w_dim, self.lr_multiplier, activation="lrelu",
                         name=f"fc{i}")(x)
    w_avg = self.param("w_avg", nn.initializers.zeros, (self.w_dim,), _PARAM_DTYPE)
    ws = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
    if truncation_psi != 1:
      cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
      truncated = w_avg + truncation_psi * (ws - w_avg)
      mask = (jnp.arange(self.num_ws) < cutoff)[None, :, None]
      ws = jnp.where(mask, truncated, ws)
    return ws


class ModulatedLayer(nn.Module):
  """One synthesis conv (3x3, demodulated, noise, lrelu) or a ToRGB (1x1).

  Attributes:
    features: output channels.
    kernel: 3 (synthesis conv) or 1 (ToRGB).
    up: upsample 2x (the first conv of blocks >= 8).
    resolution: output side, for the noise buffers.
    torgb: ToRGB semantics: no demodulation, style * 1/sqrt(in * k * k),
      linear, no noise.
    conv_clamp: output clamp, None for none.
  """
  features: int
  kernel: int = 3
  up: bool = False
  resolution: int = 4
  torgb: bool = False
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, noise_mode: str,
               noise_rng: Optional[jax.Array]) -> jax.Array:
    """x `[B, H, W, I]`, w `[B, w_dim]` -> `[B, H', W', features]`."""
    fan_in = x.shape[-1]
    styles = FullyConnected(fan_in, bias_init=1.0, name="affine")(w)
    weight = self.param("weight", nn.initializers.normal(1.0),
                        (self.kernel, self.kernel, fan_in, self.features), _PARAM_DTYPE)
    if self.torgb:
      styles = styles * (1.0 / math.sqrt(fan_in * self.kernel * self.kernel))
    else:
      noise_strength = self.param("noise_strength", nn.initializers.zeros, (), _PARAM_DTYPE)
      noise_const = self.param("noise_const", nn.initializers.normal(1.0),
                               (self.resolution, self.resolution), _PARAM_DTYPE)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), _PARAM_DTYPE)

    y = _conv(x * styles[:, None, None, :], weight, self.up)
    if not self.torgb:
      # Demodulation: 1/||style-scaled weight|| per sample and output channel.
      wsq = jnp.sum(jnp.square(weight), axis=(0, 1))  # [I, O]
      dcoefs = jax.lax.rsqrt(jnp.square(styles) @ wsq + 1e-8)  # [B, O]
      y = y * dcoefs[:, None, None, :]
      if noise_mode == "const":
        y = y + (noise_const * noise_strength)[None, :, :, None]
      elif noise_mode == "random":
        b, h, wd, _ = y.shape
        noise = jax.random.normal(noise_rng, (b, h, wd, 1), y.dtype)
        # Recorded only when 'intermediates' is mutable (tests, inspection).
        self.sow("intermediates", "noise", noise)
        y = y + noise * noise_strength
      y = _lrelu(y + bias)
    else:
      y = y + bias
    return _clamp(y, self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution: (const or upsampling conv0), conv1, ToRGB.

  Attributes:
    arch: the architecture.
    resolution: this block's output side.
    first_layer: global index of this block's first conv (noise keys).
  """
  arch: Arch
  resolution: int
  first_layer: int

  @nn.compact
  def __call__(self, x, img, ws, noise_mode, rng):
    """x `[B, r/2, r/2, C_in]` (None for b4), img `[B, r/2, r/2, 3]` (None
    for b4), ws `[B, n, w_dim]` (this block's ws) -> (x, img)."""
    a, res = self.arch, self.resolution
    ch = a.channels(res)

    def conv(name, idx, up, x, w):
      # A distinct key per layer: fold_in by the global layer index.
      key = None if rng is None else jax.random.fold_in(rng, self.first_layer + idx)
      return ModulatedLayer(ch, 3, up=up, resolution=res,
                            conv_clamp=a.conv_clamp, name=name)(
                                x, w, noise_mode, key)

    if res == 4:
      const = self.param("const", nn.initializers.normal(1.0), (4, 4, ch), _PARAM_DTYPE)
      x = jnp.broadcast_to(const[None], (ws.shape[0], 4, 4, ch))
      x = conv("conv1", 0, False, x, ws[:, 0])
    else:
      x = conv("conv0", 0, True, x, ws[:, 0])
      x = conv("conv1", 1, False, x, ws[:, 1])
    y = ModulatedLayer(a.img_channels, 1, resolution=res, torgb=True,
                       conv_clamp=a.conv_clamp, name="torgb")(
                           x, ws[:, -1], "none", None)
    img = y if img is None else upsample_2x(img) + y
    return x, img


class SynthesisNetwork(nn.Module):
  """ws `[B, num_ws, w_dim]` -> (image `[B, R, R, 3]`, block features)."""
  arch: Arch

  @nn.compact
  def __call__(self, ws: jax.Array, noise_mode: str = "const",
               rng: Optional[jax.Array] = None):
    if noise_mode not in NOISE_MODES:
      raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.")
    if noise_mode == "random" and rng is None:
      raise ValueError("noise_mode='random' needs an rng key.")
    a = self.arch
    if ws.shape[1:] != (a.num_ws, a.w_dim):
      raise ValueError(f"ws must be [B, {a.num_ws}, {a.w_dim}], got {ws.shape}.")
    ws = _floating(ws)
    x = img = None
    feats = []
    w_idx = 0
    for res in a.block_resolutions:
      num_conv = 1 if res == 4 else 2
      # Each block takes its convs' ws plus the next one for its ToRGB
      # (shared with the next block's first conv).
      x, img = SynthesisBlock(a, res, w_idx, name=f"b{res}")(
          x, img, ws[:, w_idx:w_idx + num_conv + 1], noise_mode, rng)
      w_idx += num_conv
      feats.append(x)
    return img, tuple(feats)


class Generator(nn.Module):
  """The full generator: mapping then synthesis."""
  arch: Arch

  def setup(self):
    self.mapping = MappingNetwork(
        w_dim=self.arch.w_dim, num_ws=self.arch.num_ws,
        num_layers=self.arch.mapping_layers,
        lr_multiplier=self.arch.mapping_lr_multiplier)
    self.synthesis = SynthesisNetwork(self.arch)

  def map(self, z, truncation_psi=1.0, truncation_cutoff=None):
    return self.mapping(z, truncation_psi, truncation_cutoff)

  def synthesize(self, ws, noise_mode="const", rng=None):
    return self.synthesis(ws, noise_mode, rng)

  def __call__(self, z, truncation_psi=0.7, truncation_cutoff=None,
               noise_mode="random", rng=None):
    ws = self.mapping(z, truncation_psi, truncation_cutoff)
    return self.synthesis(ws, noise_mode, rng)


# ----------------------------------------------------------------------------
# Official state_dict <-> params.

_BUFFER_FILTER = "resample_filter"


def expected_state_dict_shapes(arch) -> dict[str, tuple[int, ...]]:
  """Official `Generator.state_dict()` names -> shapes (PyTorch layouts)."""
  a = _as_arch(arch)
  out: dict[str, tuple[int, ...]] = {}

  def mod_layer(prefix, cin, cout, k, res, torgb):
    out[f"{prefix}.weight"] = (cout, cin, k, k)
    if not torgb:
      out[f"{prefix}.noise_strength"] = ()
    out[f"{prefix}.bias"] = (cout,)
    if not torgb:
      out[f"{prefix}.resample_filter"] = (4, 4)
      out[f"{prefix}.noise_const"] = (res, res)
    out[f"{prefix}.affine.weight"] = (cin, a.w_dim)
    out[f"{prefix}.affine.bias"] = (cin,)

  for res in a.block_resolutions:
    p = f"synthesis.b{res}"
    ch = a.channels(res)
    if res == 4:
      out[f"{p}.const"] = (ch, 4, 4)
    out[f"{p}.resample_filter"] = (4, 4)
    if res > 4:
      mod_layer(f"{p}.conv0", a.channels(res // 2), ch, 3, res, False)
    mod_layer(f"{p}.conv1", ch, ch, 3, res, False)
    mod_layer(f"{p}.torgb", ch, a.img_channels, 1, res, True)
  out["mapping.w_avg"] = (a.w_dim,)
  for i in range(a.mapping_layers):
    fin = a.z_dim if i == 0 else a.w_dim
    out[f"mapping.fc{i}.weight"] = (a.w_dim, fin)
    out[f"mapping.fc{i}.bias"] = (a.w_dim,)
  return out


def params_from_state_dict(state_dict: Mapping[str, Any], arch) -> dict:
  """Maps an official G/G_ema state_dict (name -> array) to our params.

  Strict: every expected name must be present with its shape, and nothing
  else; the error lists missing, extra and mis-shaped entries. The
  `resample_filter` buffers must hold the [1,3,3,1] filter.
  """
  a = _as_arch(arch)
  expected = expected_state_dict_shapes(a)
  sd = {k: np.asarray(v, np.float32) for k, v in state_dict.items()}
  missing = [k for k in expected if k not in sd]
  extra = [k for k in sd if k not in expected]
  shapes = [f"{k}: {sd[k].shape} != {expected[k]}" for k in expected
            if k in sd and sd[k].shape != expected[k]]
  if missing or extra or shapes:
    raise ValueError(
        "StyleGAN2 state_dict does not match the architecture "
        f"{a.to_dict()}:\n  missing: {missing}\n  extra: {extra}\n"
        f"  wrong shapes: {shapes}\nCheck z_dim/w_dim/resolution/"
        "channel_base/channel_max/mapping_layers (class-conditional "
        "generators, c_dim > 0, are not supported).")
  f = _filter_2d()
  for k, v in sd.items():
    if k.endswith(_BUFFER_FILTER) and not np.allclose(v, f, atol=1e-6):
      raise ValueError(f"{k} is not the normalised [1,3,3,1] filter; other "
                       "resample filters are not supported.")

  def fc(prefix):
    return {"weight": sd[f"{prefix}.weight"].T, "bias": sd[f"{prefix}.bias"]}

  def mod_layer(prefix, torgb):
    p = {"affine": fc(f"{prefix}.affine"),
         "weight": sd[f"{prefix}.weight"].transpose(2, 3, 1, 0),
         "bias": sd[f"{prefix}.bias"]}
    if not torgb:
      p["noise_strength"] = sd[f"{prefix}.noise_strength"]
      p["noise_const"] = sd[f"{prefix}.noise_const"]
    return p

  mapping = {f"fc{i}": fc(f"mapping.fc{i}") for i in range(a.mapping_layers)}
  mapping["w_avg"] = sd["mapping.w_avg"]
  synthesis = {}
  for res in a.block_resolutions:
    p = f"synthesis.b{res}"
    block = {}
    if res == 4:
      block["const"] = sd[f"{p}.const"].transpose(1, 2, 0)
    else:
      block["conv0"] = mod_layer(f"{p}.conv0", False)
    block["conv1"] = mod_layer(f"{p}.conv1", False)
    block["torgb"] = mod_layer(f"{p}.torgb", True)
    synthesis[f"b{res}"] = block
  return {"mapping": mapping, "synthesis": synthesis}


def init_params(arch, rng: jax.Array) -> dict:
  """Randomly initialised params with the right tree (for shapes/tests)."""
  a = _as_arch(arch)
  variables = Generator(a).init(rng, jnp.zeros((1, a.z_dim)), 0.7, None,
                                "const")
  return variables["params"]


# ----------------------------------------------------------------------------
# The gmseg generator interface.


def make_generator(params, arch_config, truncation_psi: float = 0.7,
                   truncation_cutoff: Optional[int] = None,
                   noise_mode: str = "random",
                   name: str = "stylegan2") -> generators.Generator:
  """Wraps params into a `generators.Generator`.

  `apply_fn(params, z [B, z_dim], rng) -> (images [B, R, R, 3] (unclamped,
  roughly [-1, 1]), features)`, features being every synthesis block's output
  `x` (`[B, r, r, C_r]` for r = 4 ... R). The rng drives the 'random' noise
  (a distinct key per layer); it is unused in the other modes. `apply_fn` is
  jitted (compiles once per batch size) and may be called inside other jits.
  """
  a = _as_arch(arch_config)
  if noise_mode not in NOISE_MODES:
    raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.")
  if truncation_cutoff is not None and not 0 <= truncation_cutoff <= a.num_ws:
    raise ValueError(f"truncation_cutoff must be in [0, {a.num_ws}], got "
                     f"{truncation_cutoff}.")
  module = Generator(a)
  psi = float(truncation_psi)
  cutoff = None if truncation_cutoff is None else int(truncation_cutoff)

  @jax.jit
  def apply_fn(params, z, rng):
    return module.apply({"params": params}, z, psi, cutoff, noise_mode, rng)

  return generators.describe(apply_fn, params, a.z_dim, name)


def mapping(params, z: jax.Array, arch_config, truncation_psi: float = 1.0,
            truncation_cutoff: Optional[int] = None) -> jax.Array:
  """z `[B, z_dim]` -> ws `[B, num_ws, w_dim]` (for tests and notebooks)."""
  return Generator(_as_arch(arch_config)).apply(
      {"params": params}, z, truncation_psi, truncation_cutoff,
      method=Generator.map)


def synthesis(params, ws: jax.Array, arch_config, noise_mode: str = "const",
              rng: Optional[jax.Array] = None):
  """ws `[B, num_ws, w_dim]` -> (images `[B, R, R, 3]`, features)."""
  return Generator(_as_arch(arch_config)).apply(
      {"params": params}, ws, noise_mode, rng, method=Generator.synthesize)


# ----------------------------------------------------------------------------
# Converted checkpoint directories: params.npz + config.json.

PARAMS_FILE = "params.npz"
CONFIG_FILE = "config.json"


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, key + "/"))
    else:
      out[key] = v
  return out


def save_converted(out_dir: str, params, arch_config) -> None:
  """Writes `out_dir/params.npz` (flat '/'-joined keys) and `config.json`."""
  a = _as_arch(arch_config)
  os.makedirs(out_dir, exist_ok=True)
  flat = {k: np.asarray(v, np.float32) for k, v in _flatten(params).items()}
  np.savez(os.path.join(out_dir, PARAMS_FILE), **flat)
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump({"format": "gmseg.stylegan2/1", "arch": a.to_dict()}, f, indent=1)


def load_converted(path: str) -> tuple[dict, Arch]:
  """Reads a directory written by `save_converted`; checks the param tree."""
  cfg_path = os.path.join(path, CONFIG_FILE)
  npz_path = os.path.join(path, PARAMS_FILE)
  for p in (cfg_path, npz_path):
    if not os.path.exists(p):
      raise FileNotFoundError(
          f"{p} is missing: {path} is not a converted StyleGAN2 checkpoint. "
          "Convert an official .pkl with `python launch/convert_stylegan2.py "
          "--pkl SNAPSHOT.pkl --out DIR`.")
  with open(cfg_path) as f:
    arch = Arch.from_dict(json.load(f)["arch"])
  with np.load(npz_path) as data:
    flat = {k: data[k] for k in data.files}
  expected = _flatten(jax.eval_shape(lambda: init_params(arch, jax.random.PRNGKey(0))))
  missing = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  shapes = [f"{k}: {flat[k].shape} != {expected[k].shape}" for k in expected
            if k in flat and flat[k].shape != expected[k].shape]
  if missing or extra or shapes:
    raise ValueError(f"{npz_path} does not match {cfg_path}:\n  missing: "
                     f"{missing}\n  extra: {extra}\n  wrong shapes: {shapes}")
  params: dict = {}
  for k, v in flat.items():
    node = params
    *parents, leaf = k.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(v, jnp.float32)
  return params, arch


def load(path: str, truncation_psi: float = 0.7,
         truncation_cutoff: Optional[int] = None,
         noise_mode: str = "random") -> generators.Generator:
  """A directory written by `save_converted` as a Generator.

  Official `.pkl` snapshots are read by the converter: the registry's
  'stylegan2' factory (`gmseg.convert.stylegan2_pkl.load`) takes both.
  """
  if os.path.isfile(path):
    # A snapshot file, not a converted folder: the converter reads those, and
    # models know nothing of converters (tests/test_layout.py).
    raise ValueError(
        f"{path} is a file; models.stylegan2.load reads a folder written by "
        "save_converted. For an official .pkl use generator_registry.get("
        "'stylegan2', path=...) or gmseg.convert.stylegan2_pkl.load, or convert it once with "
        "`python launch/convert_stylegan2.py --pkl SNAPSHOT.pkl --out DIR`.")
  params, arch = load_converted(path)
  return make_generator(params, arch, truncation_psi, truncation_cutoff,
                        noise_mode, name=f"stylegan2_{arch.resolution}")
