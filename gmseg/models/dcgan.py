"""The pretrained DCGAN face generator of PyPI `gan-face-generate` 1.1.1.

A DCGAN generator (nz=100, ngf=64) trained on DigiFace-1M synthetic faces;
its `weights.tar` ships inside the package (research use only: see
../shared/fixtures/dcgan_faces/README.md). The network is an `nn.Sequential`
`main` of five 4x4 transposed convolutions (no bias), BatchNorm + ReLU after
the first four, tanh at the end:

  z [B,100] -> 512@4 -> 256@8 -> 128@16 -> 64@32 -> 3@64 (tanh)

The four post-ReLU maps are the generator's features, low to high resolution.
Flax module names follow the torch indices (`main_0`, `main_1`, ...) so the
converted parameters can be traced back to the state dict.

Only the weights file is read from the package: its Python modules import
torch and are never imported here.
"""
import importlib.util
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmseg.convert import torch_zip
from gmseg.models import generators

INSTALL = "pip install --no-deps gan-face-generate==1.1.1"
BN_EPS = 1e-5  # torch BatchNorm2d default, used by all four layers


class FrozenBatchNorm(nn.Module):
  """BatchNorm in eval mode: stored running statistics, never updated.

  y = (x - mean) / sqrt(var + eps) * scale + bias, in torch's order of
  operations so float32 results match the reference closely. `var` is torch's
  stored running variance as it is (unbiased accumulation; eval-mode use is
  the same in both frameworks). Parameters are float32 even under
  jax_enable_x64, like the transposed convolutions' (see layers).
  """
  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
    return (x - mean) / jnp.sqrt(var + self.eps) * scale + bias


class DCGANGenerator(nn.Module):
  """DCGAN generator: `z [B, z_dim]` -> (images `[B, 64, 64, 3]`, features).

  Features are the post-ReLU maps `[B,4,4,8w]`, `[B,8,8,4w]`, `[B,16,16,2w]`,
  `[B,32,32,w]` with w = `width`. `precision` defaults to 'highest' so GPU
  TF32 does not move outputs away from the float32 reference.
  """
  z_dim: int = 100
  width: int = 64
  channels: int = 3
  precision: str | None = "highest"

  def _deconv(self, x, features, stride, pad, index):
    # torch ConvTranspose2d(k=4, stride, padding=pad) is the transpose of a
    # conv (transpose_kernel=True flips the kernel and swaps its channel
    # axes); lax pads the stride-dilated input by k - 1 - pad per side.
    return nn.ConvTranspose(
        features, (4, 4), strides=(stride, stride), padding=((3 - pad, 3 - pad),) * 2,
        use_bias=False, transpose_kernel=True, precision=self.precision,
        name=f"main_{index}")(x)

  @nn.compact
  def __call__(self, z):
    if z.ndim != 2 or z.shape[-1] != self.z_dim:
      raise ValueError(f"z must be [batch, {self.z_dim}], got {z.shape}; reshape torch-style "
                       f"[B, {self.z_dim}, 1, 1] latents with z.reshape(B, {self.z_dim}).")
    x = z.reshape(z.shape[0], 1, 1, self.z_dim)
    feats = []
    stages = [(8, 1, 0), (4, 2, 1), (2, 2, 1), (1, 2, 1)]  # (width multiple, stride, pad)
    for i, (mult, stride, pad) in enumerate(stages):
      x = self._deconv(x, self.width * mult, stride, pad, 3 * i)
      x = FrozenBatchNorm(name=f"main_{3 * i + 1}")(x)
      x = nn.relu(x)
      feats.append(x)
    img = jnp.tanh(self._deconv(x, self.channels, 2, 1, 12))
    return img, tuple(feats)


def _param_shapes(module: DCGANGenerator) -> dict:
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jnp.zeros((1, module.z_dim), jnp.float32))
  return jax.tree.map(lambda a: a.shape, abstract["params"])


def convert_state_dict(sd, module: DCGANGenerator | None = None) -> dict:
  """torch `netG_state_dict` (numpy arrays) -> Flax params of `DCGANGenerator`.

  Args:
    sd: mapping `main.<i>.<name>` -> array, as `torch_zip.load` returns it.
      ConvTranspose2d weights are `[in, out, kh, kw]`.
    module: the module whose param shapes to check (default: nz=100, ngf=64).

  Returns:
    `{'main_<i>': {'kernel': [kh, kw, out, in]}` for transposed convolutions,
    `{'scale', 'bias', 'mean', 'var'}` for BatchNorm}` as float32 numpy.

  Raises:
    ValueError: listing missing and unexpected keys, or mismatched shapes.
  """
  module = module or DCGANGenerator()
  shapes = _param_shapes(module)
  bn_names = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
  mapping = {}  # torch key -> (flax layer, flax name, converter)
  for layer, leaves in shapes.items():
    index = layer.split("_")[1]
    if "kernel" in leaves:
      # [in, out, kh, kw] -> [kh, kw, out, in]: the layout flax ConvTranspose
      # uses with transpose_kernel=True.
      mapping[f"main.{index}.weight"] = (layer, "kernel", lambda w: w.transpose(2, 3, 1, 0))
    else:
      for torch_name, flax_name in bn_names.items():
        mapping[f"main.{index}.{torch_name}"] = (layer, flax_name, lambda w: w)
  ignored = {k for k in sd if k.endswith(".num_batches_tracked")}  # training counter only
  missing = sorted(set(mapping) - set(sd))
  extra = sorted(set(sd) - set(mapping) - ignored)
  if missing or extra:
    raise ValueError(f"DCGAN state dict does not match the generator: missing {missing}, "
                     f"unexpected {extra}.")
  params = {layer: {} for layer in shapes}
  for key, (layer, name, convert) in mapping.items():
    value = np.asarray(convert(np.asarray(sd[key])), np.float32)
    if value.shape != tuple(shapes[layer][name]):
      raise ValueError(f"{key}: converted shape {value.shape} != expected "
                       f"{tuple(shapes[layer][name])} for {layer}/{name}.")
    params[layer][name] = value
  return params


def find_weights() -> pathlib.Path:
  """Path of `weights.tar` in the installed gan_face_generate package.

  Uses the import system's spec only: the package's modules import torch.
  """
  spec = importlib.util.find_spec("gan_face_generate")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "The DCGAN face weights come from the PyPI package gan-face-generate, which is not "
        f"installed. Install it without its torch dependencies: {INSTALL}")
  for folder in spec.submodule_search_locations:
    path = pathlib.Path(folder) / "weights.tar"
    if path.is_file():
      return path
  raise FileNotFoundError(
      f"gan_face_generate is installed at {list(spec.submodule_search_locations)} but has no "
      f"weights.tar; reinstall it: {INSTALL} --force-reinstall")


def load_params(weights_path: str | os.PathLike | None = None) -> dict:
  """Reads and converts the pretrained weights (default: from the package)."""
  path = pathlib.Path(weights_path) if weights_path is not None else find_weights()
  ckpt = torch_zip.load(path)
  if not isinstance(ckpt, dict) or "netG_state_dict" not in ckpt:
    keys = list(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
    raise ValueError(f"{path}: expected a checkpoint with 'netG_state_dict', found {keys}.")
  return convert_state_dict(ckpt["netG_state_dict"])


def load_pretrained(weights_path: str | os.PathLike | None = None) -> generators.Generator:
  """The pretrained DCGAN face generator (64x64, z_dim 100) as a `Generator`.

  `apply_fn(params, z [B, 100], rng)` is jitted once here; rng is unused (the
  network is deterministic). Images are `[B, 64, 64, 3]` in [-1, 1].
  """
  module = DCGANGenerator()
  params = jax.tree.map(jnp.asarray, load_params(weights_path))

  @jax.jit
  def apply_fn(params, z, rng):
    del rng  # no per-call noise in a DCGAN
    return module.apply({"params": params}, z)

  return generators.describe(apply_fn, params, module.z_dim, "dcgan_faces")

