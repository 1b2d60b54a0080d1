"""Reads PyTorch zip checkpoints (`torch.save`, torch >= 1.6) without torch.

The format is a zip archive with one top-level folder (named after the file
stem at save time: `archive/`, `weights/`, ...) holding

  <prefix>/data.pkl     a pickle of the saved object; each tensor is a call to
                        `torch._utils._rebuild_tensor_v2(storage, offset, size,
                        stride, ...)` whose storage is a persistent id
                        ('storage', <torch.XStorage class>, key, location, numel)
  <prefix>/data/<key>   the raw element bytes of each storage
  <prefix>/byteorder    'little' or 'big' (absent in old files: little)

`load` unpickles `data.pkl` with an allow-list of globals (no code from the
file runs) and returns the object with every tensor as a numpy array. The
device a tensor was saved from ('cuda:0', ...) is ignored. torchvision's
ResNet `.pth` files and state dicts saved by `torch.save` use this format.
"""
import collections
import io
import os
import pickle
import zipfile

import numpy as np

try:  # bfloat16 as a numpy dtype; ml_dtypes ships with jax.
  import ml_dtypes
  _BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover
  _BFLOAT16 = None

# The first object of a pre-1.6 (non-zip) `torch.save` file.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class TorchCheckpointError(ValueError):
  """A file that is not a readable torch zip checkpoint."""


class _StorageType:
  """Stands in for a `torch.XStorage` class: only its element dtype matters."""

  def __init__(self, name: str, dtype: np.dtype | None):
    self.name = name
    self.dtype = dtype

  def __repr__(self):
    return f"torch.{self.name}"


_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": _BFLOAT16,
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}


def rebuild_tensor(storage: np.ndarray, offset: int, size, stride) -> np.ndarray:
  """The tensor `storage[offset + sum(i_k * stride_k)]` as a contiguous copy.

  Args:
    storage: the flat storage, `[numel]`.
    offset: storage offset in elements.
    size: the tensor shape.
    stride: strides in elements (torch convention), one per dimension.

  Returns:
    A C-contiguous array of shape `size` and the storage's dtype.
  """
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride):
    raise TorchCheckpointError(f"Tensor size {size} and stride {stride} differ in rank.")
  if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
    raise TorchCheckpointError(
        f"Negative offset/size/stride in tensor (offset {offset}, size {size}, stride {stride}).")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise TorchCheckpointError(
        f"Tensor (offset {offset}, size {size}, stride {stride}) reads element {last} "
        f"of a storage with {storage.size} elements: the storage is truncated or the "
        "checkpoint is corrupt.")
  base = np.ascontiguousarray(storage)[offset:]
  view = np.lib.stride_tricks.as_strided(
      base, shape=size, strides=tuple(s * base.itemsize for s in stride), writeable=False)
  return np.array(view, copy=True, order="C")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata  # autograd state: not needed for numpy
  return rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
  return rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
  del requires_grad, backward_hooks, state
  return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}


class _Unpickler(pickle.Unpickler):
  """Builds only allow-listed globals; storages come from `read_storage`."""

  def __init__(self, file, read_storage):
    super().__init__(file)
    self._read_storage = read_storage
    self._storages = {}

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
      if _STORAGE_DTYPES[name] is None:
        raise TorchCheckpointError(f"torch.{name} needs the ml_dtypes package (pip install ml_dtypes).")
      return _StorageType(name, _STORAGE_DTYPES[name])
    raise TorchCheckpointError(
        f"The checkpoint references the global {module}.{name}, which this torch-free reader "
        "does not build (it reads tensors, storages and OrderedDicts only). Re-save the "
        "checkpoint as a plain state dict: torch.save(model.state_dict(), path).")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise TorchCheckpointError(f"Unsupported persistent id in data.pkl: {pid!r:.200}.")
    _, storage_type, key, _location, numel = pid[:5]
    if not isinstance(storage_type, _StorageType):
      raise TorchCheckpointError(f"Persistent id {pid!r:.200} has no torch storage class.")
    if key not in self._storages:
      self._storages[key] = self._read_storage(str(key), storage_type.dtype, int(numel))
    return self._storages[key]


class _NoGlobals(pickle.Unpickler):

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"global {module}.{name}")


def _describe_non_zip(path: str, head: bytes) -> str:
  """Why a file is not a torch zip checkpoint, and what to do."""
  if not head:
    return f"{path} is empty."
  if head.startswith(b"PK"):
    return (f"{path} starts like a zip archive but its central directory is unreadable: "
            "the file is probably truncated (an interrupted download or copy). Fetch it again.")
  if head[:1] == b"\x80":
    try:  # only the first of the (possibly several) pickles in the file
      first = _NoGlobals(io.BytesIO(head)).load()
    except Exception:  # a bigger or stranger first pickle: not the legacy magic
      first = None
    if first == _LEGACY_MAGIC:
      return (f"{path} is a legacy (pre-1.6, non-zip) torch.save file, which this reader does "
              "not handle. Re-save it with torch >= 1.6: "
              "torch.save(torch.load(path, map_location='cpu'), new_path).")
    return (f"{path} is a plain pickle, not a torch zip checkpoint (torch.save writes a zip "
            "archive since torch 1.6).")
  return (f"{path} is not a torch zip checkpoint (no zip or pickle header; first bytes "
          f"{head[:8]!r}).")


def _find_prefix(names: list[str], path: str) -> str:
  """The archive's top-level folder (with trailing '/'), located by its data.pkl."""
  hits = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
  if len(hits) != 1:
    what = "no <folder>/data.pkl" if not hits else f"several data.pkl files {hits}"
    raise TorchCheckpointError(
        f"{path} is a zip archive but has {what}, so it is not a torch checkpoint "
        f"(members: {names[:8]}{' ...' if len(names) > 8 else ''}).")
  return hits[0][:-len("data.pkl")]


def load(path: str | os.PathLike):
  """Reads a torch zip checkpoint into Python containers of numpy arrays.

  Args:
    path: a file written by `torch.save` (torch >= 1.6), e.g. a `.pt`, `.pth`
      or `.tar` checkpoint.

  Returns:
    The saved object (usually a dict or OrderedDict) with every tensor as a
    numpy array of its dtype and shape; OrderedDicts keep their `_metadata`.

  Raises:
    TorchCheckpointError: not a zip checkpoint (legacy torch.save, plain pickle,
      truncated file), no data.pkl, truncated storages or disallowed globals.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    head = f.read(64)
  try:
    archive = zipfile.ZipFile(path)
  except zipfile.BadZipFile:
    raise TorchCheckpointError(_describe_non_zip(path, head)) from None
  with archive:
    names = archive.namelist()
    prefix = _find_prefix(names, path)

    def read(name: str) -> bytes:
      try:
        return archive.read(name)
      except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise TorchCheckpointError(
            f"Cannot read member {name} of {path} ({e}): the file is truncated or corrupt. "
            "Fetch it again.") from None

    byteorder = "little"
    if prefix + "byteorder" in names:
      byteorder = read(prefix + "byteorder").decode("ascii", "replace").strip()
      if byteorder not in ("little", "big"):
        raise TorchCheckpointError(f"{path}: unknown byteorder record {byteorder!r}.")

    def read_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
      name = f"{prefix}data/{key}"
      if name not in names:
        raise TorchCheckpointError(f"{path}: data.pkl refers to storage {key!r} but {name} is missing.")
      raw = read(name)
      want = numel * dtype.itemsize
      if len(raw) < want:
        raise TorchCheckpointError(
            f"{path}: storage {name} holds {len(raw)} bytes but needs {want} "
            f"({numel} x {dtype}): the member is truncated.")
      stored = dtype.newbyteorder("<" if byteorder == "little" else ">")
      return np.frombuffer(raw, stored, count=numel).astype(dtype.newbyteorder("="))

    try:
      return _Unpickler(io.BytesIO(read(prefix + "data.pkl")), read_storage).load()
    except TorchCheckpointError:
      raise
    except (pickle.UnpicklingError, EOFError) as e:
      raise TorchCheckpointError(f"{path}: data.pkl is truncated or corrupt ({e}).") from None
