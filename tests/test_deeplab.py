"""DeepLabV3 / dilated ResNet: shapes, output stride, parameter counts against
torchvision, dilation rules, dropout, frozen BatchNorm, and the torchvision
checkpoint loader (on a torch-zip file written here, checked against an
independent NCHW/OIHW forward pass)."""
import math
import struct
import zipfile

import flax
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg.models import deeplab

TINY = dict(width=8, stage_sizes=(1, 1, 1, 1), aspp_channels=16)


def _init(model, x, seed=0):
  """Random variables of init's shapes, drawn with numpy: compiling
  `model.init` costs several seconds on CPU even for tiny models (one RNG
  program per tensor); test_shapes_and_output_stride runs the real one."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)

  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = math.prod(leaf.shape[:-1])
      return rng.normal(0, math.sqrt(2 / fan_in), leaf.shape).astype(np.float32)
    low, high = {"scale": (0.5, 1.5), "var": (0.5, 1.5)}.get(name, (-0.2, 0.2))
    return rng.uniform(low, high, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _apply(model, variables, x, rng=None, **kw):
  rngs = {} if rng is None else {"dropout": rng}
  fn = jax.jit(lambda v, x, rngs: model.apply(v, x, rngs=rngs, **kw))
  return fn(variables, x, rngs)


def _flat(tree):
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


# --- Model -------------------------------------------------------------------


def test_shapes_and_output_stride():
  model = deeplab.DeepLabV3(5, **TINY)
  x = jnp.zeros((2, 40, 24, 3))
  variables = jax.jit(model.init)(jax.random.key(0), x)
  logits, state = _apply(model, variables, x, capture_intermediates=True,
                         mutable=["intermediates"])
  assert logits.shape == (2, 40, 24, 5)
  inter = state["intermediates"]
  # Output stride 8: the backbone and the head run at H/8 x W/8.
  assert inter["backbone"]["__call__"][0].shape == (2, 5, 3, 8 * 8 * 4)
  assert inter["classifier"]["__call__"][0].shape == (2, 5, 3, 5)
  with pytest.raises(ValueError, match="depth"):
    deeplab.DeepLabV3(5, depth=34).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="backbone_norm"):
    deeplab.DeepLabV3(5, backbone_norm="frozen", **TINY).init(jax.random.key(0), x)


def test_param_counts_match_torchvision():
  # torchvision: resnet50 25,557,032 and resnet101 44,549,160 parameters,
  # of which fc (2048 * 1000 + 1000) is 2,049,000; deeplabv3_resnet50/101
  # 42,004,074 / 60,996,202 including the aux head (2,365,205 for 21 classes).
  expected = {50: (23_508_032, 39_638_869), 101: (42_500_160, 58_630_997)}
  for depth, (backbone, total) in expected.items():
    shapes = jax.eval_shape(deeplab.DeepLabV3(21, depth=depth).init,
                            jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    params = shapes["params"]
    assert set(params) == {"backbone", "classifier"}
    assert deeplab.count_params(params["backbone"]) == backbone
    assert deeplab.count_params(params) == total
    names = _flat(params)
    for name in ("backbone/stem_conv/kernel", "backbone/layer4/block0/conv1/kernel",
                 "backbone/layer4/block2/norm3/scale", "classifier/final/kernel",
                 "classifier/aspp/b3_conv/kernel", "classifier/aspp/project_conv/kernel",
                 "classifier/head_conv/kernel"):
      assert name in names, name
    assert names["backbone/layer3/block0/conv2/kernel"].shape == (3, 3, 256, 256)
    assert f"backbone/layer3/block{5 if depth == 50 else 22}/conv1/kernel" in names
    # frozen_batch keeps the statistics outside params, one mean/var pair per norm.
    stats = _flat(shapes["batch_stats"])
    assert all(k.startswith("backbone/") for k in stats)
    norms = [k for k in names if k.startswith("backbone/") and k.endswith("/scale")]
    assert len(stats) == 2 * len(norms)


def _convs(jaxpr):
  """(kernel spatial shape, window_strides, rhs_dilation) of every conv, in order."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      kernel = eqn.invars[1].aval.shape
      spatial = tuple(kernel[d] for d in eqn.params["dimension_numbers"].rhs_spec[2:])
      out.append((spatial, tuple(eqn.params["window_strides"]),
                  tuple(eqn.params["rhs_dilation"])))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out.extend(_convs(sub))
  return out


def test_dilation_follows_torchvision():
  model = deeplab.DeepLabV3(3, width=4, stage_sizes=(1, 1, 2, 2), aspp_channels=8)
  x = jnp.zeros((1, 32, 32, 3))
  variables = _init(model, x)
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(variables).jaxpr
  convs = [(s, st, d) for s, st, d in _convs(jaxpr) if s != (1, 1)]
  assert convs == [
      ((7, 7), (2, 2), (1, 1)),  # stem
      ((3, 3), (1, 1), (1, 1)),  # layer1.0
      ((3, 3), (2, 2), (1, 1)),  # layer2.0: the last strided 3x3
      ((3, 3), (1, 1), (1, 1)),  # layer3.0 keeps the previous dilation
      ((3, 3), (1, 1), (2, 2)),  # layer3.1
      ((3, 3), (1, 1), (2, 2)),  # layer4.0 keeps the previous dilation
      ((3, 3), (1, 1), (4, 4)),  # layer4.1
      ((3, 3), (1, 1), (12, 12)), ((3, 3), (1, 1), (24, 24)),
      ((3, 3), (1, 1), (36, 36)),  # ASPP
      ((3, 3), (1, 1), (1, 1)),  # head 3x3
  ]
  # Strided 1x1s: only layer2's downsample (layer3/4 downsample at stride 1).
  strided = [c for c in _convs(jaxpr) if c[0] == (1, 1) and c[1] != (1, 1)]
  assert strided == [((1, 1), (2, 2), (1, 1))]


def test_dropout_only_in_train_and_frozen_stats_fixed():
  model = deeplab.DeepLabV3(4, **TINY)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3), minval=-1, maxval=1)
  variables = _init(model, x)  # non-trivial statistics, unlike init's 0 / 1
  stats = variables["batch_stats"]
  eval_out = _apply(model, variables, x)
  r1, r2 = jax.random.key(3), jax.random.key(4)
  train_fn = jax.jit(lambda v, x, r: model.apply(
      v, x, train=True, rngs={"dropout": r}, mutable=["batch_stats"]))
  train1, new = train_fn(variables, x, r1)
  train1b, train2 = train_fn(variables, x, r1)[0], train_fn(variables, x, r2)[0]
  np.testing.assert_array_equal(train1, train1b)
  assert float(jnp.max(jnp.abs(train1 - train2))) > 1e-3
  assert float(jnp.max(jnp.abs(train1 - eval_out))) > 1e-3
  jax.tree.map(np.testing.assert_array_equal, new["batch_stats"], stats)
  # Without dropout, train equals eval: frozen BN (and GN) are the same
  # per-example function in both modes, so each example ignores the batch.
  no_drop = deeplab.DeepLabV3(4, dropout=0.0, **TINY)
  train0 = _apply(no_drop, variables, x, train=True, mutable=["batch_stats"])[0]
  np.testing.assert_allclose(train0, eval_out, atol=1e-5)
  np.testing.assert_allclose(
      _apply(no_drop, variables, x[:1], train=True, mutable=["batch_stats"])[0],
      train0[:1], atol=1e-5)
  # Contrast: ordinary BatchNorm updates its running statistics in train.
  bn = deeplab.DeepLabV3(4, backbone_norm="batch", **TINY)
  updated = _apply(bn, variables, x, r1, train=True,
                   mutable=["batch_stats"])[1]["batch_stats"]
  diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), updated, stats)
  assert max(jax.tree.leaves(diff)) > 1e-3


def test_group_backbone():
  model = deeplab.DeepLabV3(3, backbone_norm="group", norm="batch", **TINY)
  x = jnp.zeros((1, 16, 16, 3))
  variables = _init(model, x)
  names = _flat(variables["params"])
  assert "backbone/layer2/block0/norm1/gn/scale" in names
  assert set(variables["batch_stats"]) == {"classifier"}
  assert _apply(model, variables, x).shape == (1, 16, 16, 3)


# --- A minimal torch zip writer (the format torch.save uses) -----------------


class _Pickle:
  """Protocol-2 pickle opcodes for an OrderedDict of float32 tensors, the way
  torch.save writes a state dict (torch globals are named, never imported)."""

  def __init__(self):
    self.b = bytearray(b"\x80\x02")

  def glob(self, module, name):
    self.b += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

  def str(self, s):
    self.b += b"X" + struct.pack("<I", len(s.encode())) + s.encode()

  def int(self, i):
    self.b += b"J" + struct.pack("<i", i)

  def tuple(self, items):
    self.b += b"("
    for i in items:
      self.int(i)
    self.b += b"t"

  def ordered_dict(self):
    self.glob("collections", "OrderedDict")
    self.b += b")R"


def write_torch_zip(path, state: dict):
  """Writes `state` (name -> float32 array) as torch.save would."""
  p, blobs = _Pickle(), {}
  p.ordered_dict()
  p.b += b"("
  for key, (name, value) in enumerate(state.items()):
    value = np.ascontiguousarray(value, np.float32)
    blobs[str(key)] = value.tobytes()
    p.str(name)
    p.glob("torch._utils", "_rebuild_tensor_v2")
    p.b += b"(("  # args tuple, then the persistent id tuple
    p.str("storage")
    p.glob("torch", "FloatStorage")
    p.str(str(key))
    p.str("cpu")
    p.int(value.size)
    p.b += b"tQ"
    p.int(0)
    p.tuple(value.shape)
    p.tuple([s // 4 for s in value.strides])
    p.b += b"\x89"  # requires_grad=False
    p.ordered_dict()  # backward_hooks
    p.b += b"tR"
  p.b += b"u."
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", bytes(p.b))
    z.writestr("archive/byteorder", "little")
    z.writestr("archive/version", "3\n")
    for key, raw in blobs.items():
      z.writestr(f"archive/data/{key}", raw)


def _torchvision_state(width, stage_sizes, seed=0):
  """Random torchvision-named ResNet state dict (OIHW kernels) incl. fc."""
  rng = np.random.default_rng(seed)
  state = {}

  def conv(name, o, i, k):
    state[name] = rng.normal(0, math.sqrt(2 / (i * k * k)), (o, i, k, k))

  def bn(name, c):
    state[f"{name}.weight"] = rng.uniform(0.5, 1.5, c)
    state[f"{name}.bias"] = rng.normal(0, 0.1, c)
    state[f"{name}.running_mean"] = rng.normal(0, 0.1, c)
    state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c)
    state[f"{name}.num_batches_tracked"] = np.zeros(())

  conv("conv1.weight", width, 3, 7)
  bn("bn1", width)
  cin = width
  for i, n in enumerate(stage_sizes):
    planes = width * 2**i
    for j in range(n):
      pre = f"layer{i + 1}.{j}"
      conv(f"{pre}.conv1.weight", planes, cin, 1)
      bn(f"{pre}.bn1", planes)
      conv(f"{pre}.conv2.weight", planes, planes, 3)
      bn(f"{pre}.bn2", planes)
      conv(f"{pre}.conv3.weight", planes * 4, planes, 1)
      bn(f"{pre}.bn3", planes * 4)
      if j == 0:
        conv(f"{pre}.downsample.0.weight", planes * 4, cin, 1)
        bn(f"{pre}.downsample.1", planes * 4)
      cin = planes * 4
  state["fc.weight"] = rng.normal(0, 0.01, (10, cin))
  state["fc.bias"] = np.zeros(10)
  return state


def _reference_resnet(state, x_nchw, stage_sizes):
  """torchvision's dilated ResNet forward in NCHW/OIHW from the state dict."""
  def conv(x, name, stride=1, dilation=1):
    w = jnp.asarray(state[name], jnp.float32)
    pad = dilation * (w.shape[-1] // 2)
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), [(pad, pad)] * 2, rhs_dilation=(dilation,) * 2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        precision=jax.lax.Precision.HIGHEST)

  def bn(x, name):
    s = lambda k: jnp.asarray(state[f"{name}.{k}"], jnp.float32)[None, :, None, None]
    return (x - s("running_mean")) / jnp.sqrt(s("running_var") + 1e-5) * s("weight") + s("bias")

  x = jax.nn.relu(bn(conv(x_nchw, "conv1.weight", 2), "bn1"))
  x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                            [(0, 0), (0, 0), (1, 1), (1, 1)])
  # replace_stride_with_dilation=[False, True, True], written out per layer:
  # (stride of block 0, dilation of block 0, dilation of the rest).
  plan = [(1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)]
  for i, n in enumerate(stage_sizes):
    stride0, dil0, dil = plan[i]
    for j in range(n):
      pre = f"layer{i + 1}.{j}"
      stride, d = (stride0, dil0) if j == 0 else (1, dil)
      y = jax.nn.relu(bn(conv(x, f"{pre}.conv1.weight"), f"{pre}.bn1"))
      y = jax.nn.relu(bn(conv(y, f"{pre}.conv2.weight", stride, d), f"{pre}.bn2"))
      y = bn(conv(y, f"{pre}.conv3.weight"), f"{pre}.bn3")
      if j == 0:
        x = bn(conv(x, f"{pre}.downsample.0.weight", stride), f"{pre}.downsample.1")
      x = jax.nn.relu(x + y)
  return x


def _tiny_model(stage_sizes=(1, 1, 2, 2), **kw):
  return deeplab.DeepLabV3(3, width=4, stage_sizes=stage_sizes, aspp_channels=8, **kw)


def test_load_torchvision_resnet_matches_reference(tmp_path):
  stages = (1, 1, 2, 2)
  state = _torchvision_state(4, stages)
  path = str(tmp_path / "resnet.pth")
  write_torch_zip(path, state)
  model = _tiny_model(stages)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  variables = _init(model, x)
  loaded = deeplab.load_torchvision_resnet(path, variables["params"],
                                           variables["batch_stats"])
  p, s = _flat(loaded["params"]), _flat(loaded["batch_stats"])
  np.testing.assert_array_equal(p["backbone/layer3/block1/conv2/kernel"],
                                state["layer3.1.conv2.weight"].astype(np.float32)
                                .transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["backbone/layer2/block0/downsample_norm/bias"],
                                state["layer2.0.downsample.1.bias"].astype(np.float32))
  np.testing.assert_array_equal(s["backbone/stem_norm/var"],
                                state["bn1.running_var"].astype(np.float32))
  # The classifier is untouched.
  jax.tree.map(np.testing.assert_array_equal, loaded["params"]["classifier"],
               variables["params"]["classifier"])
  # The loaded backbone computes torchvision's function (features in NHWC).
  mean, std = np.array(deeplab.IMAGENET_MEAN), np.array(deeplab.IMAGENET_STD)
  h = ((x + 1) / 2 - mean) / std
  backbone = deeplab.ResNet(stages, width=4)
  with jax.default_matmul_precision("highest"):
    ours = jax.jit(backbone.apply)({"params": loaded["params"]["backbone"],
                           "batch_stats": loaded["batch_stats"]["backbone"]}, h)
  ref = jax.jit(lambda h: _reference_resnet(state, h, stages))(
      jnp.transpose(h, (0, 3, 1, 2)))
  assert ours.shape == (2, 4, 4, 4 * 8 * 4)
  np.testing.assert_allclose(ours, jnp.transpose(ref, (0, 2, 3, 1)), rtol=1e-4, atol=1e-4)
  # The same keys as .npz load identically.
  npz = str(tmp_path / "resnet.npz")
  np.savez(npz, **state)
  again = deeplab.load_torchvision_resnet(npz, variables["params"], variables["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, again, loaded)


def test_load_torchvision_resnet_errors(tmp_path):
  stages = (1, 1, 2, 2)
  model = _tiny_model(stages)
  x = jnp.zeros((1, 16, 16, 3))
  variables = _init(model, x)
  params, stats = variables["params"], variables["batch_stats"]

  with pytest.raises(FileNotFoundError, match="resnet101-63fe2227.pth.*no conversion"):
    deeplab.load_torchvision_resnet(str(tmp_path / "nope.pth"), params, stats)

  # A checkpoint with one block fewer in layer4 and a stray key.
  state = _torchvision_state(4, (1, 1, 2, 1))
  state["layer1.0.extra.weight"] = np.zeros(3)
  path = str(tmp_path / "short.pth")
  write_torch_zip(path, state)
  with pytest.raises(ValueError) as err:
    deeplab.load_torchvision_resnet(path, params, stats)
  msg = str(err.value)
  assert "layer4.1.conv2.weight" in msg and "layer4.1.bn3.running_var" in msg
  assert "Missing from the checkpoint (15)" in msg  # 3 convs + 3 BNs x 4 keys
  assert "Unexpected in the checkpoint (1): layer1.0.extra.weight" in msg
  assert "fc." not in msg

  # Wrong width: every mismatch is named with both shapes.
  path = str(tmp_path / "wide.pth")
  write_torch_zip(path, _torchvision_state(8, stages))
  with pytest.raises(ValueError, match=r"shape mismatches.*conv1\.weight \(8, 3, 7, 7\) -> "
                     r"stem_conv/kernel \(7, 7, 3, 4\)"):
    deeplab.load_torchvision_resnet(path, params, stats)

  good = str(tmp_path / "good.pth")
  write_torch_zip(good, _torchvision_state(4, stages))
  with pytest.raises(ValueError, match="needs batch_stats"):
    deeplab.load_torchvision_resnet(good, params)
  group = _tiny_model(stages, backbone_norm="group")
  gvars = _init(group, x)
  with pytest.raises(ValueError, match="BatchNorm backbone"):
    deeplab.load_torchvision_resnet(good, gvars["params"], gvars.get("batch_stats"))
