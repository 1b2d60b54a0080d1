"""gmseg.convert.torch_zip against the real DCGAN checkpoint and hand-built zips."""
import json
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest
from conftest import shared_path

from gmseg.convert import torch_zip
from gmseg.models import dcgan


# --- a tiny torch zip writer (raw pickle opcodes: torch is not installed) ---

def _frag(obj) -> bytes:
  """Pickle opcodes that push `obj` (no PROTO header, no STOP)."""
  return pickle.dumps(obj, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def _tensor(key, storage_class, numel, offset, size, stride) -> bytes:
  storage = (b"(" + _frag("storage") + _global("torch", storage_class) + _frag(key)
             + _frag("cuda:0") + _frag(numel) + b"tQ")
  args = (storage + _frag(offset) + _frag(tuple(size)) + _frag(tuple(stride)) + _frag(False)
          + _global("collections", "OrderedDict") + b")R")
  return _global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"


def _write_checkpoint(path, tensors, storages, prefix="mytest", byteorder="little"):
  """tensors: name -> (key, storage class, offset, size, stride); storages: key -> array."""
  body = b"".join(
      _frag(name) + _tensor(key, cls, storages[key].size, off, size, stride)
      for name, (key, cls, off, size, stride) in tensors.items())
  data_pkl = b"\x80\x02}(" + body + b"u."
  order = "<" if byteorder == "little" else ">"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{prefix}/data.pkl", data_pkl)
    z.writestr(f"{prefix}/byteorder", byteorder)
    for key, arr in storages.items():
      z.writestr(f"{prefix}/data/{key}", arr.astype(arr.dtype.newbyteorder(order)).tobytes())
    z.writestr(f"{prefix}/version", "3\n")
  return path


def _strided_reference(storage, offset, size, stride):
  out = np.empty(size, storage.dtype)
  for idx in np.ndindex(*size):
    out[idx] = storage[offset + sum(i * s for i, s in zip(idx, stride))]
  return out


# --- the real checkpoint ---

def test_dcgan_checkpoint_matches_reference_json():
  ref = json.loads(shared_path("fixtures", "dcgan_faces", "reference.json").read_text())
  ckpt = torch_zip.load(dcgan.find_weights())
  assert list(ckpt) == ref["checkpoint_top_level_keys"]
  sd = ckpt["netG_state_dict"]
  assert list(sd) == list(ref["netG_state_dict"])  # same keys in stored order
  for key, (shape, dtype) in ref["netG_state_dict"].items():
    assert sd[key].shape == tuple(shape), key
    assert sd[key].dtype == np.dtype(dtype.replace("torch.", "")), key
    assert sd[key].flags.c_contiguous
  for key, value in ref["num_batches_tracked_values"].items():
    assert int(sd[key]) == value
  assert dict(sd._metadata) == ref["state_dict_metadata_versions"]
  # Running variances are positive and the first kernel has trained scale.
  assert all(sd[f"main.{i}.running_var"].min() > 0 for i in (1, 4, 7, 10))
  assert 0.005 < float(sd["main.0.weight"].std()) < 1.0


# --- hand-built checkpoints ---

def test_strided_tensors_shared_storage_and_dtypes(tmp_path):
  base = np.arange(40, dtype=np.float32) * 0.5 - 3
  storages = {
      "7": base,
      "k2": np.array([3, -2, 2**40], np.int64),
      "b": np.array([1.5, -2.25, 7], ml_dtypes.bfloat16),
      "h": np.array([True, False, True, True]),
      "d": np.linspace(-1, 1, 6).astype(np.float64),
  }
  tensors = {
      "transposed": ("7", "FloatStorage", 0, (3, 4), (1, 3)),
      "offset_gap": ("7", "FloatStorage", 5, (2, 3, 2), (16, 4, 1)),
      "contiguous": ("7", "FloatStorage", 2, (2, 5), (5, 1)),
      "broadcast": ("7", "FloatStorage", 1, (3, 2), (0, 7)),
      "scalar": ("7", "FloatStorage", 9, (), ()),
      "empty": ("7", "FloatStorage", 0, (0, 3), (3, 1)),
      "longs": ("k2", "LongStorage", 1, (2,), (1,)),
      "bf16": ("b", "BFloat16Storage", 0, (3,), (1,)),
      "bools": ("h", "BoolStorage", 0, (2, 2), (1, 2)),
      "doubles": ("d", "DoubleStorage", 0, (3, 2), (2, 1)),
  }
  for order in ("little", "big"):
    out = torch_zip.load(_write_checkpoint(tmp_path / f"ck_{order}.pt", tensors, storages,
                                           byteorder=order))
    assert list(out) == list(tensors)
    for name, (key, _, off, size, stride) in tensors.items():
      want = _strided_reference(storages[key], off, size, stride)
      got = out[name]
      assert got.shape == tuple(size) and got.dtype == storages[key].dtype, name
      assert got.dtype.isnative and got.flags.c_contiguous, name
      np.testing.assert_array_equal(got, want, err_msg=f"{name} ({order})")
  np.testing.assert_array_equal(out["transposed"], base[:12].reshape(4, 3).T)


def test_rebuild_tensor_bounds():
  storage = np.arange(10, dtype=np.int32)
  np.testing.assert_array_equal(torch_zip.rebuild_tensor(storage, 1, (3, 2), (3, 1)),
                                [[1, 2], [4, 5], [7, 8]])
  with pytest.raises(torch_zip.TorchCheckpointError, match="storage with 10 elements"):
    torch_zip.rebuild_tensor(storage, 2, (3, 3), (3, 1))
  with pytest.raises(torch_zip.TorchCheckpointError, match="rank"):
    torch_zip.rebuild_tensor(storage, 0, (3, 3), (3,))


# --- bad inputs give errors that say what is wrong ---

def test_not_a_zip(tmp_path):
  junk = tmp_path / "junk.pt"
  junk.write_bytes(b"GIF89a" + bytes(100))
  with pytest.raises(torch_zip.TorchCheckpointError, match="not a torch zip checkpoint"):
    torch_zip.load(junk)
  plain = tmp_path / "plain.pkl"
  plain.write_bytes(pickle.dumps({"a": np.arange(3).tolist()}))
  with pytest.raises(torch_zip.TorchCheckpointError, match="plain pickle"):
    torch_zip.load(plain)
  legacy = tmp_path / "legacy.pth"  # what torch.save wrote before 1.6
  legacy.write_bytes(pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)
                     + pickle.dumps(1001, protocol=2) + bytes(50))
  with pytest.raises(torch_zip.TorchCheckpointError, match="legacy"):
    torch_zip.load(legacy)
  empty = tmp_path / "empty.pt"
  empty.write_bytes(b"")
  with pytest.raises(torch_zip.TorchCheckpointError, match="empty"):
    torch_zip.load(empty)


def test_truncated_file_and_member(tmp_path):
  cut = tmp_path / "cut.tar"
  cut.write_bytes(dcgan.find_weights().read_bytes()[:1_000_000])
  with pytest.raises(torch_zip.TorchCheckpointError, match="truncated"):
    torch_zip.load(cut)
  storages = {"0": np.arange(12, dtype=np.float32)}
  path = _write_checkpoint(tmp_path / "short.pt", {"w": ("0", "FloatStorage", 0, (12,), (1,))},
                           storages)
  # Rewrite the storage member with 8 of its 12 floats.
  with zipfile.ZipFile(path) as z:
    members = {n: z.read(n) for n in z.namelist()}
  members["mytest/data/0"] = members["mytest/data/0"][:32]
  with zipfile.ZipFile(path, "w") as z:
    for n, b in members.items():
      z.writestr(n, b)
  with pytest.raises(torch_zip.TorchCheckpointError, match="32 bytes but needs 48"):
    torch_zip.load(path)


def test_missing_data_pkl_and_storage(tmp_path):
  path = tmp_path / "nopkl.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/byteorder", "little")
  with pytest.raises(torch_zip.TorchCheckpointError, match="data.pkl"):
    torch_zip.load(path)
  path = _write_checkpoint(tmp_path / "nostorage.pt", {"w": ("9", "FloatStorage", 0, (2,), (1,))},
                           {"9": np.zeros(2, np.float32)})
  with zipfile.ZipFile(path) as z:
    members = {n: z.read(n) for n in z.namelist() if not n.endswith("data/9")}
  with zipfile.ZipFile(path, "w") as z:
    for n, b in members.items():
      z.writestr(n, b)
  with pytest.raises(torch_zip.TorchCheckpointError, match="storage '9'"):
    torch_zip.load(path)


def test_disallowed_global_is_named_not_run(tmp_path):
  path = tmp_path / "evil.pt"
  payload = b"\x80\x02" + _global("os", "system") + _frag(("echo pwned",)) + b"R."
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("evil/data.pkl", payload)
  with pytest.raises(torch_zip.TorchCheckpointError, match=r"os\.system"):
    torch_zip.load(path)
