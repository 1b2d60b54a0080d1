"""Reads official stylegan2-ada-pytorch snapshot pickles without torch.

A snapshot (`network-snapshot-*.pkl`) is a pickle of a dict
`{training_set_kwargs, G, D, G_ema, augment_pipe}`. Each network is a tree of
"persistent" objects: calls to `torch_utils.persistence.
_reconstruct_persistent_obj(meta)` whose meta dict holds the class name, the
module source (ignored here) and the torch module's instance dict `state`
(`_parameters`, `_buffers`, `_modules`, plain attributes, `_init_kwargs`).
Tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)`, each storage `torch.storage._load_from_bytes(bytes)` of a legacy
(non-zip) `torch.save` stream.

`read_pkl` unpickles with an allow-list of globals mapped to small local
functions (no code from the file runs, neither torch nor the official code is
needed), rebuilds the network's state_dict exactly as torch names it, and
infers the architecture from `_init_kwargs` and the module attributes.
`convert_pkl` then writes a directory that `gmseg.models.stylegan2.load`
reads. `load` is the registry's 'stylegan2' factory: a `.pkl` or a converted
directory (the model module knows nothing of pickles).
"""
import collections
import io
import os
import pickle
import struct
from typing import Optional

import numpy as np

from gmseg.models import generators
from gmseg.models import stylegan2

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001


class StyleGAN2PklError(ValueError):
  """A file that is not a readable stylegan2-ada-pytorch snapshot."""


# ----------------------------------------------------------------------------
# Stand-ins for the globals a snapshot references.


class PersistentObject:
  """A network module from the pickle: its class name and instance dict."""

  def __init__(self, meta: dict):
    if not isinstance(meta, dict) or "state" not in meta:
      raise StyleGAN2PklError("A persistent object has no 'state' in its meta "
                              "dict; the pickle is not a stylegan2-ada snapshot.")
    self.class_name = meta.get("class_name", "?")
    self.version = meta.get("version")
    self.state = meta["state"]

  def __repr__(self):
    return f"PersistentObject({self.class_name})"


class EasyDict(dict):
  """`dnnlib.util.EasyDict`: a dict with attribute access."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None


class _StorageType:
  """Stands in for a `torch.XStorage` class: only its element dtype matters."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _storage_dtype(name)


def _storage_dtype(name: str) -> np.dtype:
  table = {
      "FloatStorage": np.float32, "DoubleStorage": np.float64,
      "HalfStorage": np.float16, "LongStorage": np.int64,
      "IntStorage": np.int32, "ShortStorage": np.int16,
      "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
  }
  if name == "BFloat16Storage":
    import ml_dtypes  # ships with jax
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(table[name])


_STORAGE_NAMES = ("FloatStorage", "DoubleStorage", "HalfStorage",
                  "BFloat16Storage", "LongStorage", "IntStorage",
                  "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
  """A strided view of a 1-D storage array, copied out as numpy."""
  del unused  # requires_grad, backward hooks, metadata
  if not isinstance(storage, np.ndarray):
    raise StyleGAN2PklError(f"Tensor storage is {type(storage).__name__}, "
                            "expected a legacy storage stream.")
  size, stride = tuple(size), tuple(stride)
  if len(size) != len(stride):
    raise StyleGAN2PklError(f"Tensor size {size} and stride {stride} differ "
                            "in rank; the file is corrupt.")
  if any(s == 0 for s in size):
    return np.zeros(size, storage.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if storage_offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
    raise StyleGAN2PklError(
        f"Tensor view (offset {storage_offset}, size {size}, stride {stride}) "
        f"exceeds its storage of {storage.size} elements; the file is corrupt.")
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size,
      strides=tuple(s * item for s in stride))
  return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
  del requires_grad, backward_hooks, state
  return data


def _numpy_scalar(dtype, data=None):
  dtype = np.dtype(dtype)
  if dtype.hasobject or not isinstance(data, bytes):
    raise StyleGAN2PklError(f"Unsupported numpy scalar of dtype {dtype}.")
  return np.frombuffer(data, dtype)[0]


def _numpy_reconstruct(cls, shape, dtype_code):
  del cls, dtype_code
  return np.ndarray.__new__(np.ndarray, shape, np.uint8)


def _codecs_encode(text, encoding="utf-8"):
  if encoding != "latin1":
    raise StyleGAN2PklError(f"Unsupported _codecs.encode encoding {encoding!r}.")
  return text.encode("latin1")


_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentObject,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("_codecs", "encode"): _codecs_encode,
}


def _tf_hint(module: str) -> Optional[str]:
  if module.startswith(("dnnlib.tflib", "tensorflow")):
    return (f"This is a TensorFlow-era StyleGAN/StyleGAN2 pickle (it references "
            f"'{module}'). Convert it first with the official "
            "stylegan2-ada-pytorch repository: `python legacy.py --source "
            "OLD.pkl --dest NEW.pkl`, then convert NEW.pkl here.")
  return None


class _SnapshotUnpickler(pickle.Unpickler):
  """The outer pickle: only the allow-listed globals resolve."""

  def find_class(self, module, name):
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    hint = _tf_hint(module)
    if hint:
      raise StyleGAN2PklError(hint)
    raise StyleGAN2PklError(
        f"The pickle references the unsupported global '{module}.{name}'; it "
        "is not a stylegan2-ada-pytorch snapshot (or holds objects this "
        "reader does not know). Nothing from the file was executed.")

  def persistent_load(self, pid):
    raise StyleGAN2PklError(f"Unexpected persistent id {pid!r} in the outer "
                            "pickle (torch zip checkpoints are not snapshots: "
                            "use gmseg.convert.torch_zip).")


# ----------------------------------------------------------------------------
# Legacy torch.save streams (one storage each).


class _StorageRef:

  def __init__(self, key, view=None):
    self.key = key
    self.view = view


class _StreamUnpickler(pickle.Unpickler):
  """The pickles inside a legacy storage stream."""

  def __init__(self, f, storages: dict):
    super().__init__(f)
    self._storages = storages

  def find_class(self, module, name):
    if module == "torch" and name in _STORAGE_NAMES:
      return _StorageType(name)
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    raise StyleGAN2PklError(f"Unsupported global '{module}.{name}' in a "
                            "legacy torch storage stream.")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise StyleGAN2PklError(f"Unexpected persistent id {pid!r} in a legacy "
                              "torch storage stream.")
    _, stype, key, _location, numel = pid[:5]
    view = pid[5] if len(pid) > 5 else None
    self._storages[str(key)] = (stype.dtype, int(numel))
    return _StorageRef(str(key), view)


def _load_from_bytes(data: bytes) -> np.ndarray:
  """Decodes one legacy `torch.save` stream holding a storage -> 1-D array."""
  if not isinstance(data, (bytes, bytearray)):
    raise StyleGAN2PklError("_load_from_bytes got no bytes; corrupt file.")
  f = io.BytesIO(data)
  storages: dict = {}
  load = lambda: _StreamUnpickler(f, storages).load()  # noqa: E731
  if load() != _LEGACY_MAGIC:
    raise StyleGAN2PklError("A storage stream lacks the legacy torch.save "
                            "magic number; the file is corrupt.")
  if load() != _LEGACY_PROTOCOL:
    raise StyleGAN2PklError("Unsupported legacy torch.save protocol version.")
  sys_info = load()
  little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
  ref = load()
  keys = load()
  arrays = {}
  for key in keys:
    key = str(key)
    if key not in storages:
      raise StyleGAN2PklError(f"Storage key {key!r} was never declared; corrupt file.")
    dtype, numel = storages[key]
    head = f.read(8)
    if len(head) != 8:
      raise StyleGAN2PklError("A storage stream is truncated; corrupt file.")
    count = struct.unpack("<q" if little else ">q", head)[0]
    if count != numel:
      raise StyleGAN2PklError(f"Storage {key!r} holds {count} elements, its "
                              f"header says {numel}; corrupt file.")
    dt = dtype.newbyteorder("<" if little else ">") if dtype.itemsize > 1 else dtype
    raw = f.read(count * dt.itemsize)
    if len(raw) != count * dt.itemsize:
      raise StyleGAN2PklError("A storage stream is truncated; corrupt file.")
    arrays[key] = np.frombuffer(raw, dt).astype(dtype)
  if not isinstance(ref, _StorageRef) or ref.key not in arrays:
    raise StyleGAN2PklError("A storage stream holds no storage; corrupt file.")
  arr = arrays[ref.key]
  if ref.view is not None:  # old torch: (view_key, offset, view_size)
    _, offset, view_size = ref.view
    arr = arr[offset:offset + view_size]
  return arr


_GLOBALS[("torch.storage", "_load_from_bytes")] = _load_from_bytes


# ----------------------------------------------------------------------------
# Snapshot -> state_dict + architecture.


def load_snapshot(path: str) -> dict:
  """Unpickles a snapshot with the allow-list; returns its top-level dict
  (networks as `PersistentObject`s, tensors as numpy arrays)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No such snapshot file: {path}")
  with open(path, "rb") as f:
    head = f.read(4)
    f.seek(0)
    if head.startswith(b"PK"):
      raise StyleGAN2PklError(
          f"{path} is a zip archive (a torch.save checkpoint), not a "
          "stylegan2-ada-pytorch snapshot pickle; read it with "
          "gmseg.convert.torch_zip.")
    try:
      obj = _SnapshotUnpickler(f).load()
    except StyleGAN2PklError:
      raise
    except (EOFError, pickle.UnpicklingError, ValueError, KeyError, IndexError,
            TypeError, AttributeError, struct.error, UnicodeDecodeError,
            OverflowError, MemoryError) as e:
      raise StyleGAN2PklError(
          f"Could not read {path}: the file is truncated or corrupt "
          f"({type(e).__name__}: {e}). Copy or download it again.") from e
  return obj


def state_dict(module: PersistentObject, prefix: str = "") -> dict:
  """torch's `state_dict()` of a persistent module: own parameters, then
  persistent buffers, then sub-modules in order; None entries skipped."""
  st = module.state
  out = collections.OrderedDict()
  skip = set(st.get("_non_persistent_buffers_set") or ())
  for name, value in (st.get("_parameters") or {}).items():
    if value is not None:
      out[prefix + name] = value
  for name, value in (st.get("_buffers") or {}).items():
    if value is not None and name not in skip:
      out[prefix + name] = value
  for name, child in (st.get("_modules") or {}).items():
    if child is None:
      continue
    if not isinstance(child, PersistentObject):
      raise StyleGAN2PklError(f"Sub-module {prefix + name} is a "
                              f"{type(child).__name__}, not a network module.")
    out.update(state_dict(child, prefix + name + "."))
  return out


_GENERATOR_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels",
                   "mapping_kwargs", "synthesis_kwargs")


def infer_arch(generator: PersistentObject) -> stylegan2.Arch:
  """The architecture from `_init_kwargs` and the module attributes."""
  st = generator.state
  kwargs = dict(zip(_GENERATOR_ARGS, st.get("_init_args") or ()))
  kwargs.update(st.get("_init_kwargs") or {})

  def get(name, default=None):
    value = st.get(name, kwargs.get(name, default))
    if value is None:
      raise StyleGAN2PklError(f"The generator does not record {name!r}.")
    return value

  c_dim = int(get("c_dim", 0))
  if c_dim:
    raise StyleGAN2PklError(
        f"Class-conditional generators (c_dim={c_dim}) are not supported: the "
        "gmseg generator interface takes z only.")
  mapping_kwargs = dict(kwargs.get("mapping_kwargs") or {})
  synthesis_kwargs = dict(kwargs.get("synthesis_kwargs") or {})
  modules = st.get("_modules") or {}
  mapping = modules.get("mapping")
  map_state = mapping.state if isinstance(mapping, PersistentObject) else {}
  num_layers = map_state.get("num_layers", mapping_kwargs.get("num_layers", 8))
  lr_mul = mapping_kwargs.get("lr_multiplier", 0.01)
  fc0 = (map_state.get("_modules") or {}).get("fc0")
  if isinstance(fc0, PersistentObject) and "bias_gain" in fc0.state:
    lr_mul = fc0.state["bias_gain"]  # = lr_multiplier in the official layer
  arch = stylegan2.Arch(
      z_dim=int(get("z_dim")), w_dim=int(get("w_dim")),
      resolution=int(get("img_resolution")),
      img_channels=int(get("img_channels", 3)),
      channel_base=int(synthesis_kwargs.get("channel_base", 32768)),
      channel_max=int(synthesis_kwargs.get("channel_max", 512)),
      mapping_layers=int(num_layers),
      mapping_lr_multiplier=float(lr_mul),
      conv_clamp=(None if synthesis_kwargs.get("conv_clamp") is None
                  else float(synthesis_kwargs["conv_clamp"])),
      architecture=str(synthesis_kwargs.get("architecture", "skip")))
  if "num_ws" in st and int(st["num_ws"]) != arch.num_ws:
    raise StyleGAN2PklError(f"The generator has num_ws={st['num_ws']}, the "
                            f"inferred architecture {arch.num_ws}.")
  return arch


def read_pkl(path: str, key: str = "G_ema"):
  """Reads a snapshot's generator without torch.

  Args:
    path: an official stylegan2-ada-pytorch `.pkl`.
    key: which network: 'G_ema' (what the paper uses) or 'G'.
  Returns:
    (state_dict: official name -> numpy array, arch: stylegan2.Arch).
  """
  top = load_snapshot(path)
  if not isinstance(top, dict):
    raise StyleGAN2PklError(f"{path} holds a {type(top).__name__}, not a "
                            "snapshot dict with G/D/G_ema.")
  if key not in top:
    raise StyleGAN2PklError(
        f"{path} has no {key!r} network (keys: {sorted(map(str, top))}); "
        "a discriminator-only or partial pickle cannot be converted.")
  net = top[key]
  if not isinstance(net, PersistentObject) or net.class_name != "Generator":
    name = getattr(net, "class_name", type(net).__name__)
    raise StyleGAN2PklError(f"{path}: {key!r} is a {name}, not a Generator.")
  return state_dict(net), infer_arch(net)


def convert_pkl(pkl_path: str, out_dir: str, key: str = "G_ema") -> stylegan2.Arch:
  """Snapshot `.pkl` -> `out_dir/{params.npz, config.json}`; returns the arch.

  Names are checked strictly against the architecture before writing.
  """
  sd, arch = read_pkl(pkl_path, key)
  params = stylegan2.params_from_state_dict(sd, arch)
  stylegan2.save_converted(out_dir, params, arch)
  return arch


def load(path: str, truncation_psi: float = 0.7,
         truncation_cutoff: Optional[int] = None,
         noise_mode: str = "random") -> generators.Generator:
  """Registry factory 'stylegan2': an official `.pkl` (its `G_ema`, read
  without torch) or a directory written by `convert_pkl`."""
  if not (os.path.isfile(path) and path.endswith(".pkl")):
    return stylegan2.load(path, truncation_psi, truncation_cutoff, noise_mode)
  sd, arch = read_pkl(path)
  params = stylegan2.params_from_state_dict(sd, arch)
  return stylegan2.make_generator(params, arch, truncation_psi, truncation_cutoff,
                                  noise_mode, name=f"stylegan2_{arch.resolution}")


def describe_arch(arch: stylegan2.Arch) -> str:
  """One line for logs: resolution, ws and channels per block."""
  chans = ", ".join(f"{r}:{arch.channels(r)}" for r in arch.block_resolutions)
  return (f"StyleGAN2 {arch.resolution}x{arch.resolution}, z {arch.z_dim}, "
          f"w {arch.w_dim}, num_ws {arch.num_ws}, mapping "
          f"{arch.mapping_layers} layers, channels {{{chans}}}")


__all__ = ["StyleGAN2PklError", "read_pkl", "convert_pkl", "load", "load_snapshot",
           "state_dict", "infer_arch", "describe_arch"]
