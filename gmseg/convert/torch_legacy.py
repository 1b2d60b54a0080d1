"""Reads legacy (pre-1.6, non-zip) `torch.save` files without torch.

What `torch.save(obj, f, _use_new_zipfile_serialization=False)` writes, and
every torch before 1.6 (DatasetGAN's 2019-2020 checkpoints): five pickles
back to back, then the raw storages.

  1. the magic number 0x1950a86a20f9469cfc6c
  2. the protocol version 1001
  3. sys info: {'protocol_version', 'little_endian', 'type_sizes'}
  4. the object; each tensor is `torch._utils._rebuild_tensor_v2(storage,
     offset, size, stride, ...)`, each storage a persistent id
     ('storage', <torch.XStorage class>, key, location, numel, view_metadata)
  5. the list of storage keys, in the order their data follows

followed, per key of that list, by an int64 element count and the elements.
The object is unpickled with the allow-list of `torch_zip` (no code from the
file runs); its tensors are filled in once the storages after it are read.
"""
import io
import os
import pickle
import struct

import numpy as np

from gmseg.convert import torch_zip

MAGIC = 0x1950a86a20f9469cfc6c
PROTOCOL = 1001
TorchCheckpointError = torch_zip.TorchCheckpointError


class _PendingTensor:
  """A tensor whose storage is read after the pickle that names it."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _pending_v2(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata
  return _PendingTensor(storage, storage_offset, size, stride)


class _Unpickler(torch_zip._Unpickler):  # pylint: disable=protected-access
  """torch_zip's allow-list, with tensors deferred until the storages are read."""

  def __init__(self, file):
    super().__init__(file, read_storage=None)
    self.declared: dict[str, tuple[np.dtype, int]] = {}

  def find_class(self, module, name):
    if (module, name) in (("torch._utils", "_rebuild_tensor_v2"),
                          ("torch._utils", "_rebuild_tensor")):
      return _pending_v2
    return super().find_class(module, name)

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], torch_zip._StorageType)):  # pylint: disable=protected-access
      raise TorchCheckpointError(f"Unsupported persistent id {pid!r:.200} in a legacy torch file.")
    _, storage_type, key, _location, numel = pid[:5]
    self.declared[str(key)] = (storage_type.dtype, int(numel))
    view = pid[5] if len(pid) > 5 else None
    if view is not None:  # torch < 1.0 storage views: (view_key, offset, size)
      return (str(key), int(view[1]), int(view[2]))
    return (str(key), 0, None)


class _Plain(pickle.Unpickler):
  """The header pickles and the key list: no globals at all."""

  def find_class(self, module, name):
    raise TorchCheckpointError(f"Unexpected global {module}.{name} in a legacy torch header.")


def is_legacy(path: str | os.PathLike) -> bool:
  """Whether `path` starts with the legacy torch.save magic number."""
  with open(path, "rb") as f:
    head = f.read(64)
  if head[:1] != b"\x80":
    return False
  try:
    return _Plain(io.BytesIO(head)).load() == MAGIC
  except Exception:  # pylint: disable=broad-except  (any other pickle: not legacy)
    return False


def _resolve(obj, storages: dict):
  """`obj` with every pending tensor rebuilt from `storages` (in place for
  dicts, so an OrderedDict keeps its `_metadata` attribute)."""
  if isinstance(obj, _PendingTensor):
    key, start, length = obj.storage
    flat = storages[key]
    if length is not None:
      flat = flat[start:start + length]
    return torch_zip.rebuild_tensor(flat, obj.offset, obj.size, obj.stride)
  if isinstance(obj, dict):
    for k in list(obj):
      obj[k] = _resolve(obj[k], storages)
    return obj
  if isinstance(obj, (list, tuple)):
    out = [_resolve(x, storages) for x in obj]
    return out if isinstance(obj, list) else tuple(out)
  return obj


def load(path: str | os.PathLike):
  """Reads a legacy torch.save file into Python containers of numpy arrays.

  Args:
    path: a file written by torch < 1.6 or with
      `_use_new_zipfile_serialization=False` (e.g. a `.pt` state dict).

  Returns:
    The saved object with every tensor as a numpy array of its dtype and
    shape (OrderedDicts keep their `_metadata`).

  Raises:
    TorchCheckpointError: not a legacy file, an unknown global (nothing from
      the file is executed), a truncated or inconsistent storage section.
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    try:
      if _Plain(f).load() != MAGIC:
        raise TorchCheckpointError(f"{path} is not a legacy torch.save file (no magic number).")
      if _Plain(f).load() != PROTOCOL:
        raise TorchCheckpointError(f"{path}: unsupported legacy torch protocol version.")
      info = _Plain(f).load()
      unpickler = _Unpickler(f)
      obj = unpickler.load()
      keys = _Plain(f).load()
    except TorchCheckpointError:
      raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, struct.error) as e:
      raise TorchCheckpointError(
          f"{path} is not a readable legacy torch.save file ({type(e).__name__}: {e}); "
          "it may be truncated: fetch it again.") from None
    little = info.get("little_endian", True) if isinstance(info, dict) else True
    storages = {}
    for key in map(str, keys):
      if key not in unpickler.declared:
        raise TorchCheckpointError(
            f"{path}: storage {key!r} is listed but never used; corrupt file.")
      dtype, numel = unpickler.declared[key]
      head = f.read(8)
      if len(head) != 8:
        raise TorchCheckpointError(f"{path} ends before storage {key!r}: the file is truncated.")
      count = struct.unpack("<q" if little else ">q", head)[0]
      if count != numel:
        raise TorchCheckpointError(f"{path}: storage {key!r} holds {count} elements, the "
                                   f"pickle says {numel}; corrupt file.")
      raw = f.read(count * dtype.itemsize)
      if len(raw) != count * dtype.itemsize:
        raise TorchCheckpointError(f"{path} ends inside storage {key!r}: the file is truncated.")
      stored = dtype.newbyteorder("<" if little else ">")
      storages[key] = np.frombuffer(raw, stored).astype(dtype.newbyteorder("="))
  missing = sorted(set(unpickler.declared) - set(storages))
  if missing:
    raise TorchCheckpointError(f"{path}: storages {missing[:5]} have no data; corrupt file.")
  return _resolve(obj, storages)
