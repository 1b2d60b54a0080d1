"""Torch-free reading of stylegan2-ada-pytorch snapshot pickles.

The snapshots are built here, opcode by opcode, with the structure the
official training loop writes (see ../shared/fixtures/stylegan2/README.md):
persistent objects, legacy storage streams, `_rebuild_parameter` /
`_rebuild_tensor_v2`, EasyDict kwargs and numpy float64 scalars.
"""
import collections
import importlib.util
import io
import json
import pickle
import struct

import jax
import numpy as np
import pytest

from conftest import REPO, shared_path
from gmseg.convert import stylegan2_pkl
from gmseg import generator_registry
from gmseg.models import stylegan2 as sg

ATOL = 1e-4


# ----------------------------------------------------------------------------
# A minimal pickle writer that can name arbitrary globals.


class Glob:
  def __init__(self, module, name):
    self.module, self.name = module, name


class Call:  # REDUCE: fn(*args)
  def __init__(self, fn, args):
    self.fn, self.args = fn, tuple(args)


class NewObj:  # NEWOBJ cls() then SETITEMS (dict subclasses)
  def __init__(self, cls, items):
    self.cls, self.items = cls, dict(items)


class Build:  # REDUCE then BUILD(state)
  def __init__(self, call, state):
    self.call, self.state = call, state


class ODict:  # collections.OrderedDict() then SETITEMS, as older torch
  def __init__(self, items):
    self.items = dict(items)


class PersId:
  def __init__(self, pid):
    self.pid = pid


class Writer:
  """Writes protocol 2/3/4 opcodes; globals and long strings are memoised."""

  def __init__(self, protocol):
    self.protocol = protocol
    self.out = io.BytesIO()
    self.memo = {}

  def dump(self, obj) -> bytes:
    self.out.write(pickle.PROTO + bytes([self.protocol]))
    self.save(obj)
    self.out.write(pickle.STOP)
    return self.out.getvalue()

  def _memo_get(self, key):
    if key in self.memo:
      self.out.write(pickle.LONG_BINGET + struct.pack("<I", self.memo[key]))
      return True
    return False

  def _memo_put(self, key):
    self.memo[key] = len(self.memo)
    self.out.write(pickle.LONG_BINPUT + struct.pack("<I", self.memo[key]))

  def _str(self, s):
    b = s.encode("utf-8")
    self.out.write(pickle.BINUNICODE + struct.pack("<I", len(b)) + b)

  def save(self, obj):
    w = self.out.write
    if obj is None:
      w(pickle.NONE)
    elif obj is True or obj is False:
      w(pickle.NEWTRUE if obj else pickle.NEWFALSE)
    elif isinstance(obj, int):
      if -2**31 <= obj < 2**31:
        w(pickle.BININT + struct.pack("<i", obj))
      else:
        b = pickle.encode_long(obj)
        w(pickle.LONG1 + bytes([len(b)]) + b)
    elif isinstance(obj, float):
      w(pickle.BINFLOAT + struct.pack(">d", obj))
    elif isinstance(obj, str):
      key = ("str", obj)
      if len(obj) > 64 and self._memo_get(key):
        return
      self._str(obj)
      if len(obj) > 64:
        self._memo_put(key)
    elif isinstance(obj, bytes):
      w(pickle.BINBYTES + struct.pack("<I", len(obj)) + obj)
    elif isinstance(obj, tuple):
      w(pickle.MARK)
      for x in obj:
        self.save(x)
      w(pickle.TUPLE)
    elif isinstance(obj, list):
      w(pickle.EMPTY_LIST)
      if obj:
        w(pickle.MARK)
        for x in obj:
          self.save(x)
        w(pickle.APPENDS)
    elif isinstance(obj, (set, frozenset)):
      if self.protocol >= 4:
        w(pickle.EMPTY_SET)
        if obj:
          w(pickle.MARK)
          for x in obj:
            self.save(x)
          w(pickle.ADDITEMS)
      else:
        self.save(Call(Glob("builtins", "set"), (sorted(obj),)))
    elif isinstance(obj, dict):
      w(pickle.EMPTY_DICT)
      self._items(obj)
    elif isinstance(obj, Glob):
      key = ("glob", obj.module, obj.name)
      if self._memo_get(key):
        return
      if self.protocol >= 4:
        self._str(obj.module)
        self._str(obj.name)
        w(pickle.STACK_GLOBAL)
      else:
        w(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
      self._memo_put(key)
    elif isinstance(obj, Call):
      self.save(obj.fn)
      self.save(obj.args)
      w(pickle.REDUCE)
    elif isinstance(obj, NewObj):
      self.save(obj.cls)
      w(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
      self._items(obj.items)
    elif isinstance(obj, Build):
      self.save(obj.call)
      self.save(obj.state)
      w(pickle.BUILD)
    elif isinstance(obj, ODict):
      self.save(Call(Glob("collections", "OrderedDict"), ()))
      self._items(obj.items)
    elif isinstance(obj, PersId):
      self.save(obj.pid)
      w(pickle.BINPERSID)
    else:
      raise TypeError(type(obj))

  def _items(self, d):
    if d:
      self.out.write(pickle.MARK)
      for k, v in d.items():
        self.save(k)
        self.save(v)
      self.out.write(pickle.SETITEMS)


# ----------------------------------------------------------------------------
# Snapshot structure.

_MODULE_SRC = "# the networks module source (ignored by readers)\n" * 40
_BUFFERS = ("resample_filter", "noise_const", "w_avg")


def _ordered_dict():
  return Call(Glob("collections", "OrderedDict"), ())


def _storage_blob(arr: np.ndarray, key: str) -> bytes:
  """A legacy `torch.save` stream of one FloatStorage."""
  flat = np.ascontiguousarray(arr, "<f4").ravel()
  persist = Writer(2).dump(PersId(
      ("storage", Glob("torch", "FloatStorage"), key, "cpu", flat.size, None)))
  return b"".join([
      pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2),
      pickle.dumps(1001, protocol=2),
      pickle.dumps({"protocol_version": 1001, "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
      persist, pickle.dumps([key], protocol=2),
      struct.pack("<q", flat.size), flat.tobytes()])


class _Tensors:
  def __init__(self):
    self.count = 0

  def tensor(self, arr):
    arr = np.asarray(arr, np.float32)
    stride, acc = [], 1
    for n in reversed(arr.shape):
      stride.insert(0, acc)
      acc *= n
    self.count += 1
    storage = Call(Glob("torch.storage", "_load_from_bytes"),
                   (_storage_blob(arr, str(self.count)),))
    return Call(Glob("torch._utils", "_rebuild_tensor_v2"),
                (storage, 0, tuple(arr.shape), tuple(stride), False,
                 _ordered_dict()))

  def parameter(self, arr):
    return Call(Glob("torch._utils", "_rebuild_parameter"),
                (self.tensor(arr), False, _ordered_dict()))


def _f64(value, old):
  dtype = Build(Call(Glob("numpy", "dtype"), ("f8", False, True)),
                (3, "<", None, None, None, -1, -1, 0))
  module = "numpy.core.multiarray" if old else "numpy._core.multiarray"
  return Call(Glob(module, "scalar"), (dtype, struct.pack("<d", value)))


def _class_name(name):
  for prefix, cls in (("synthesis", "SynthesisNetwork"), ("mapping", "MappingNetwork"),
                      ("fc", "FullyConnectedLayer"), ("affine", "FullyConnectedLayer"),
                      ("torgb", "ToRGBLayer"), ("conv", "SynthesisLayer"),
                      ("b", "SynthesisBlock")):
    if name.startswith(prefix):
      return cls
  raise ValueError(name)


def _persistent(class_name, params, buffers, modules, attrs, nonpersistent=(),
                old=False):
  if old:  # torch 1.7-1.9 and numpy 1.x: OrderedDict containers
    params, buffers, modules = ODict(params), ODict(buffers), ODict(modules)
  state = {"training": False, "_parameters": params, "_buffers": buffers,
           "_non_persistent_buffers_set": set(nonpersistent),
           "_backward_hooks": _ordered_dict(), "_forward_hooks": _ordered_dict(),
           "_forward_pre_hooks": _ordered_dict(), "_state_dict_hooks": _ordered_dict(),
           "_load_state_dict_pre_hooks": _ordered_dict(), "_modules": modules}
  state.update(attrs)
  meta = {"type": "class", "version": 6, "module_src": _MODULE_SRC,
          "class_name": class_name, "state": state}
  return Call(Glob("torch_utils.persistence", "_reconstruct_persistent_obj"), (meta,))


def _network(state_dict, tensors, class_name, attrs, extras=True, old=False):
  """Rebuilds the module tree from dotted state_dict names (in order)."""
  tree = lambda: {"params": {}, "buffers": {}, "modules": {}}  # noqa: E731
  root = tree()
  for name, value in state_dict.items():
    node = root
    *path, leaf = name.split(".")
    for p in path:
      node = node["modules"].setdefault(p, tree())
    kind = "buffers" if leaf in _BUFFERS else "params"
    node[kind][leaf] = value

  def build(node, name, cls, attrs):
    params = {k: tensors.parameter(v) for k, v in node["params"].items()}
    buffers = {k: tensors.tensor(v) for k, v in node["buffers"].items()}
    nonpersistent = ()
    if extras and name == "mapping":
      # A non-persistent buffer and a None parameter: both must be skipped.
      buffers["scratch"] = tensors.tensor(np.ones(3))
      nonpersistent = ("scratch",)
      params["unused"] = None
    modules = {}
    for child, sub in node["modules"].items():
      child_attrs = {}
      if child.startswith(("fc", "affine")):
        fan_in = sub["params"]["weight"].shape[1]
        lr = 0.01 if child.startswith("fc") else 1.0
        child_attrs = {"activation": "lrelu" if child.startswith("fc") else "linear",
                       "weight_gain": _f64(lr / np.sqrt(fan_in), old),
                       "bias_gain": lr}
      modules[child] = build(sub, child, _class_name(child), child_attrs)
    return _persistent(cls, params, buffers, modules, attrs, nonpersistent, old)

  return build(root, "", class_name, attrs)


def _generator_attrs(meta):
  kw = meta["constructor_kwargs"]
  easy = lambda d: NewObj(Glob("dnnlib.util", "EasyDict"), d)  # noqa: E731
  init_kwargs = dict(kw, mapping_kwargs=easy(kw["mapping_kwargs"]),
                     synthesis_kwargs=easy(kw["synthesis_kwargs"]))
  return {"z_dim": kw["z_dim"], "c_dim": 0, "w_dim": kw["w_dim"],
          "img_resolution": kw["img_resolution"], "img_channels": 3,
          "num_ws": meta["num_ws"], "_init_args": (), "_init_kwargs": init_kwargs}


def build_snapshot(name, protocol=4, keys=("training_set_kwargs", "G", "D", "G_ema",
                                             "augment_pipe")):
  """Bytes of a snapshot pickle made from a fixture's weights. G gets other
  weights than G_ema, so reading the wrong network shows. Protocol 3 also
  mimics older files (OrderedDict containers, numpy.core names)."""
  old = protocol < 4
  data = np.load(shared_path("fixtures", "stylegan2", f"{name}.npz"))
  with open(shared_path("fixtures", "stylegan2", f"{name}.json")) as f:
    meta = json.load(f)
  sd = collections.OrderedDict((k[6:], data[k]) for k in data.files
                               if k.startswith("param/"))
  tensors = _Tensors()
  attrs = _generator_attrs(meta)
  disc_sd = {"b4.fc.weight": np.full((8, 4), 0.5), "b4.fc.bias": np.zeros(8)}
  nets = {
      "training_set_kwargs": None,
      "G": _network({k: v + 1 for k, v in sd.items()}, tensors, "Generator", attrs,
                    extras=False),
      "D": _network(disc_sd, tensors, "Discriminator", {}, extras=False),
      "G_ema": _network(sd, tensors, "Generator", attrs, old=old),
      "augment_pipe": None,
  }
  return Writer(protocol).dump({k: nets[k] for k in keys}), data, sd


@pytest.fixture(scope="module")
def tiny32_pkl(tmp_path_factory):
  blob, data, sd = build_snapshot("sg2_tiny32", protocol=4)
  path = tmp_path_factory.mktemp("sg2") / "snapshot.pkl"
  path.write_bytes(blob)
  return path, data, sd


@jax.jit
def _render(params, z):
  arch = _ARCH32
  ws = sg.mapping(params, z, arch, 0.7)
  return ws, sg.synthesis(params, ws, arch, "const")[0]


_ARCH32 = sg.Arch(z_dim=32, w_dim=32, resolution=32, channel_base=1024,
                  channel_max=64, mapping_layers=2, conv_clamp=256.0)


# ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [3, 4])
def test_reads_state_dict_and_arch_exactly(protocol, tmp_path):
  blob, data, sd = build_snapshot("sg2_tiny64", protocol=protocol)
  # Protocol 3 exercises the older layout (OrderedDicts, numpy.core).
  assert (b"numpy.core.multiarray\nscalar" in blob) == (protocol == 3)
  path = tmp_path / "snap.pkl"
  path.write_bytes(blob)
  got, arch = stylegan2_pkl.read_pkl(str(path))
  assert list(got) == list(sd)  # names and order as torch's state_dict
  for k in sd:
    np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
    assert got[k].dtype == np.float32 and got[k].shape == sd[k].shape
  assert arch == sg.Arch(z_dim=32, w_dim=32, resolution=64, channel_base=1024,
                         channel_max=64, mapping_layers=2,
                         mapping_lr_multiplier=0.01, conv_clamp=256.0)
  g, _ = stylegan2_pkl.read_pkl(str(path), key="G")
  np.testing.assert_array_equal(g["mapping.w_avg"], sd["mapping.w_avg"] + 1)
  top = stylegan2_pkl.load_snapshot(str(path))
  assert list(top) == ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"]
  assert list(stylegan2_pkl.state_dict(top["D"])) == ["b4.fc.weight", "b4.fc.bias"]


def test_converted_generator_reproduces_fixture(tiny32_pkl):
  path, data, _ = tiny32_pkl
  sd, arch = stylegan2_pkl.read_pkl(str(path))
  assert arch == _ARCH32
  params = sg.params_from_state_dict(sd, arch)
  ws, img = _render(params, data["input/z"])
  err_ws = np.abs(np.asarray(ws) - data["output/ws"]).max()
  err_img = np.abs(np.asarray(img) - data["output/img"].transpose(0, 2, 3, 1)).max()
  print("pkl tiny32: ws", err_ws, "img", err_img)
  assert err_ws < ATOL and err_img < ATOL


def test_cli_round_trip(tiny32_pkl, tmp_path, capsys):
  path, data, _ = tiny32_pkl
  spec = importlib.util.spec_from_file_location(
      "convert_stylegan2", REPO / "launch" / "convert_stylegan2.py")
  cli = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cli)
  out = tmp_path / "converted"
  assert cli.main(["--pkl", str(path), "--out", str(out)]) == 0
  assert "32x32" in capsys.readouterr().out
  assert sorted(p.name for p in out.iterdir()) == ["config.json", "params.npz"]
  with np.load(out / "params.npz") as npz:
    assert "synthesis/b8/conv0/affine/weight" in npz.files
    # 75 state_dict entries less the 11 resample_filter buffers (4 blocks, 7 convs).
    assert len(npz.files) == 64
  # The registry loads the directory by path; const noise gives the fixture.
  gen = generator_registry.get("stylegan2", path=str(out), truncation_psi=0.7,
                       noise_mode="const")
  assert gen.resolution == 32 and len(gen.feature_shapes) == 4
  params, arch = sg.load_converted(str(out))
  assert arch == _ARCH32
  _, img = _render(params, data["input/z"])
  np.testing.assert_allclose(np.asarray(img), data["output/img"].transpose(0, 2, 3, 1),
                             atol=ATOL, rtol=0)
  # The factory also takes the .pkl itself, with the same params.
  direct = generator_registry.get("stylegan2", path=str(path), noise_mode="const")
  for a, b in zip(jax.tree.leaves(direct.params), jax.tree.leaves(gen.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The model's own loader reads converted folders only and names the way in.
  with pytest.raises(ValueError, match="convert_stylegan2.py"):
    sg.load(str(path))
  # Errors go to stderr with a non-zero status.
  assert cli.main(["--pkl", str(tmp_path / "nope.pkl"), "--out", str(out)]) == 1


def test_truncated_file(tiny32_pkl, tmp_path):
  blob = tiny32_pkl[0].read_bytes()
  for cut in (len(blob) // 2, len(blob) - 3, 0):
    bad = tmp_path / f"cut{cut}.pkl"
    bad.write_bytes(blob[:cut])
    with pytest.raises(stylegan2_pkl.StyleGAN2PklError, match="truncated or corrupt"):
      stylegan2_pkl.read_pkl(str(bad))


def test_corrupt_storage_stream(tmp_path):
  tensor = _Tensors().tensor(np.ones(4))
  blob = Writer(3).dump({"G_ema": tensor})
  bad = blob.replace(pickle.dumps(1001, protocol=2), pickle.dumps(1002, protocol=2), 1)
  path = tmp_path / "bad.pkl"
  path.write_bytes(bad)
  with pytest.raises(stylegan2_pkl.StyleGAN2PklError, match="protocol"):
    stylegan2_pkl.read_pkl(str(path))


def test_tf_era_pickle(tmp_path):
  # TF StyleGAN2 pickles hold dnnlib.tflib Network objects.
  net = NewObj(Glob("dnnlib.tflib.network", "Network"), {"name": "G"})
  path = tmp_path / "tf.pkl"
  path.write_bytes(Writer(3).dump((net, net, net)))
  with pytest.raises(stylegan2_pkl.StyleGAN2PklError,
                     match=r"TensorFlow.*legacy\.py --source"):
    stylegan2_pkl.read_pkl(str(path))


def test_pickle_without_g_ema(tmp_path):
  blob, _, _ = build_snapshot("sg2_tiny32", protocol=3,
                              keys=("training_set_kwargs", "D"))
  path = tmp_path / "d_only.pkl"
  path.write_bytes(blob)
  with pytest.raises(stylegan2_pkl.StyleGAN2PklError, match=r"no 'G_ema'.*'D'"):
    stylegan2_pkl.read_pkl(str(path))


def test_unknown_global_is_named_and_not_run(tmp_path):
  path = tmp_path / "evil.pkl"
  path.write_bytes(Writer(3).dump({"G_ema": Call(Glob("os", "system"), ("echo hi",))}))
  with pytest.raises(stylegan2_pkl.StyleGAN2PklError, match=r"'os\.system'"):
    stylegan2_pkl.read_pkl(str(path))


def test_zip_checkpoint_is_refused(tmp_path):
  path = tmp_path / "model.pkl"
  path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
  with pytest.raises(stylegan2_pkl.StyleGAN2PklError, match="zip"):
    stylegan2_pkl.read_pkl(str(path))


def _snapshot_with(tmp_path, architecture="skip", filter_scale=1.0):
  """tiny32 with another synthesis architecture or resample filter."""
  data = np.load(shared_path("fixtures", "stylegan2", "sg2_tiny32.npz"))
  with open(shared_path("fixtures", "stylegan2", "sg2_tiny32.json")) as f:
    meta = json.load(f)
  meta["constructor_kwargs"]["synthesis_kwargs"]["architecture"] = architecture
  sd = collections.OrderedDict(
      (k[6:], data[k] * (filter_scale if k.endswith("resample_filter") else 1.0))
      for k in data.files if k.startswith("param/"))
  nets = {"G_ema": _network(sd, _Tensors(), "Generator", _generator_attrs(meta))}
  path = tmp_path / f"{architecture}_{filter_scale}.pkl"
  path.write_bytes(Writer(4).dump(nets))
  return path


@pytest.mark.parametrize("architecture,filter_scale,message", [
    ("resnet", 1.0, "Only the 'skip' synthesis architecture is implemented"),
    ("skip", 2.0, "resample_filter is not the normalised [1,3,3,1] filter"),
])
def test_cli_unsupported_snapshot_is_one_message(tmp_path, capsys, architecture, filter_scale,
                                                 message):
  spec = importlib.util.spec_from_file_location(
      "convert_stylegan2", REPO / "launch" / "convert_stylegan2.py")
  cli = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(cli)
  path = _snapshot_with(tmp_path, architecture, filter_scale)
  assert cli.main(["--pkl", str(path), "--out", str(tmp_path / "out")]) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
  assert not (tmp_path / "out").exists()
