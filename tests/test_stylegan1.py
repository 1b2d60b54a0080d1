"""StyleGAN (v1) against the paper's code (../shared/fixtures/stylegan1), and
its torch-free loader of DatasetGAN's `.for_g_all.pt` files.

tiny32 covers mapping, truncation and the small blocks' upsampling; syn128
(synthesis only) the fused upsampling of every block from 128x128 on. The
4-device check runs this file as a script in a subprocess (XLA_FLAGS set
before JAX starts).
"""
import collections
import functools
import json
import os
import pickle
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, shared_path
from gmseg import generator_registry
from gmseg.convert import stylegan1_pt, torch_legacy
from gmseg.models import stylegan1 as sg1

# The fixture README's float32 tolerances (its float32 reference itself is
# 3.3e-6 from its float64 one on w, up to 7.6e-5 on the features).
ATOL_W, ATOL_IMG = 1e-5, 1e-4
# float64 against the reference's float64 run: measured 1.1e-14 (w),
# 1.8e-13 (tiny32 features), 8.7e-14 (syn128 image); rounding, not method.
ATOL_64 = 1e-12
TINY = sg1.Arch(resolution=32, fmap_base=256, fmap_max=32)
SYN128 = sg1.Arch(resolution=128, fmap_base=256, fmap_max=16)
# Randomly initialised, for the training-step and 4-device checks: what they
# test does not depend on the size, and compiling them is most of their cost.
MINI = sg1.Arch(resolution=8, fmap_base=16, fmap_max=8)


def _mini_generator(noise_mode="random"):
  """MINI with standard normal weights (numpy: a jitted init costs seconds)."""
  abstract = jax.eval_shape(functools.partial(sg1.init_params, MINI), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), abstract)
  return sg1.make_generator(params, MINI, noise_mode=noise_mode)


def _nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


def _f64(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _load(name):
  data = np.load(shared_path("fixtures", "stylegan1", f"{name}.npz"))
  sd = collections.OrderedDict((k[6:], data[k]) for k in data.files if k.startswith("param/"))
  noise = tuple(_nhwc(data[k]) for k in data.files if k.startswith("input/noise/"))
  return data, sd, noise


@pytest.fixture(scope="module")
def tiny():
  data, sd, noise = _load("sg1_tiny32")
  return data, sd, sg1.params_from_state_dict(sd, TINY), noise


@functools.partial(jax.jit, static_argnums=3)
def _tiny_outputs(params, z, noise, arch):
  w = sg1.mapping(params, z, arch)
  w_trunc = sg1.mapping(params, z, arch, 0.7, 8)
  img, feats = sg1.synthesis(params, w_trunc, arch, noise=noise)
  return w, w_trunc, img, feats


def _errors(outputs, data, prefix):
  w, w_trunc, img, feats = outputs
  err = {"w": np.abs(w - data[f"{prefix}/w"]).max(),
         "w_trunc": np.abs(w_trunc - data[f"{prefix}/w_trunc"]).max(),
         "img": np.abs(img - _nhwc(data[f"{prefix}/img"])).max()}
  n_feats = len([k for k in data.files if k.startswith(f"{prefix}/feat/")])
  assert len(feats) == n_feats == 2 * len(TINY.block_resolutions)
  for i, f in enumerate(feats):
    ref = _nhwc(data[f"{prefix}/feat/{i}"])
    assert f.shape == ref.shape, i
    err[f"feat/{i}"] = np.abs(f - ref).max()
  return {k: float(v) for k, v in err.items()}


def test_tiny32_matches_reference_float32(tiny):
  data, _, params, noise = tiny
  out = _tiny_outputs(params, data["input/z"], noise, TINY)
  assert {str(x.dtype) for x in jax.tree.leaves(out)} == {"float32"}
  err = _errors(out, data, "output")
  print("tiny32 float32 max abs error:", err)
  assert err["w"] < ATOL_W and err["w_trunc"] < ATOL_W, err
  assert max(err.values()) < ATOL_IMG, err
  # Truncation acted on the ws up to the cutoff only.
  w, w_trunc = np.asarray(out[0]), np.asarray(out[1])
  assert np.abs(w[:, :8] - w_trunc[:, :8]).min() > 0
  np.testing.assert_array_equal(w[:, 8:], w_trunc[:, 8:])


def test_tiny32_matches_reference_float64(tiny):
  data, _, params, noise = tiny
  with jax.enable_x64(True):
    out = _tiny_outputs(_f64(params), jnp.asarray(data["input/z"], jnp.float64), _f64(noise),
                        TINY)
    assert {str(x.dtype) for x in jax.tree.leaves(out)} == {"float64"}
    err = _errors(out, data, "output64")
  print("tiny32 float64 max abs error:", err)
  assert max(err.values()) < ATOL_64, err


def test_syn128_fused_upsampling_matches_reference(tiny):
  data, sd, noise = _load("sg1_syn128")
  # syn128 is a synthesis network alone: borrow tiny32's mapping entries.
  mapping = {k: v for k, v in tiny[1].items() if k.startswith("g_mapping.")}
  params = sg1.params_from_state_dict({**mapping, **sd}, SYN128, np.zeros(512, np.float32))
  assert [r for r in SYN128.block_resolutions if r >= 128] == [128]  # the fused block
  run = jax.jit(lambda p, ws, n: sg1.synthesis(p, ws, SYN128, noise=n))
  img, feats = run(params, data["input/ws"], noise)
  err = {"img": float(np.abs(img - _nhwc(data["output/img"])).max())}
  for i, f in enumerate(feats):
    err[f"feat/{i}"] = float(np.abs(f - _nhwc(data[f"output/feat/{i}"])).max())
  print("syn128 float32 max abs error:", err)
  assert len(feats) == 12 and max(err.values()) < ATOL_IMG, err
  with jax.enable_x64(True):
    img64, _ = run(_f64(params), jnp.asarray(data["input/ws"], jnp.float64), _f64(noise))
    err64 = float(np.abs(np.asarray(img64) - _nhwc(data["output64/img"])).max())
  print("syn128 float64 image max abs error:", err64)
  assert err64 < ATOL_64


def test_both_checkpoint_formats_load_identical_params(tiny):
  _, sd, params, _ = tiny
  legacy = torch_legacy.load(shared_path("fixtures", "stylegan1", "sg1_tiny32_legacy.pt"))
  assert list(legacy) == list(sd)
  assert "g_mapping" in legacy._metadata  # pylint: disable=protected-access
  for fmt in ("legacy", "zip"):
    path = shared_path("fixtures", "stylegan1", f"sg1_tiny32_{fmt}.pt")
    read, arch = stylegan1_pt.read_params(path, resolution=32)
    assert arch == TINY
    same = jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b), read, params)
    assert jax.tree.all(same), fmt


def _zero_state_dict(shapes: dict) -> dict:
  """Weightless stand-ins (zero-stride views: no memory); blur kernels hold the blur."""
  blur = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32).reshape(1, 1, 3, 3) / 16
  return {k: blur if k.endswith("intermediate.kernel") else np.broadcast_to(np.float32(0), s)
          for k, s in shapes.items()}


@pytest.mark.parametrize("res", ["256", "512", "1024"])
def test_full_size_key_lists_are_accepted(res):
  with open(shared_path("fixtures", "stylegan1", "sg1_full_keys.json")) as f:
    ref = json.load(f)["resolutions"][res]
  shapes = {k: tuple(v) for k, v in ref["state_dict"].items()}
  arch = sg1.infer_arch(_zero_state_dict(shapes))
  assert arch == sg1.Arch(resolution=int(res))
  assert sg1.expected_state_dict_shapes(arch) == shapes  # same names, order, shapes
  # DatasetGAN's files (no truncation.avg_latent) convert, with the .npy's w_avg.
  no_avg = {k: v for k, v in _zero_state_dict(shapes).items() if k != sg1.AVG_LATENT}
  params = sg1.params_from_state_dict(no_avg, arch, np.zeros(512, np.float32))
  abstract = jax.eval_shape(functools.partial(sg1.init_params, arch), jax.random.PRNGKey(0))
  assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, abstract)
  count = sum(x.size for x in jax.tree.leaves(abstract)) - abstract["w_avg"].size
  assert count == ref["parameter_count_total"]
  assert sum(x.size for x in jax.tree.leaves(abstract["mapping"])) == ref[
      "parameter_count_g_mapping"]
  gen = sg1.make_generator(abstract, arch, truncation_cutoff=7 if res == "256" else 8)
  assert [3, arch.output_resolution, arch.output_resolution] == ref["wrapper_image_shape_CHW"]
  assert gen.resolution == arch.output_resolution
  assert list(gen.feature_shapes) == [(h, w, c) for c, h, w in ref["wrapper_feature_shapes_CHW"]]


@pytest.fixture(scope="module")
def w_avg_file(tiny, tmp_path_factory):
  path = tmp_path_factory.mktemp("sg1") / "avg_latent_stylegan1.npy"
  np.save(path, tiny[1][sg1.AVG_LATENT])
  return path


def test_registry_builds_the_generator(w_avg_file, tiny):
  path = shared_path("fixtures", "stylegan1", "sg1_tiny32_legacy.pt")
  gen = generator_registry.get("stylegan1", path=str(path), w_avg_path=str(w_avg_file),
                               resolution=32, truncation_cutoff=8, noise_mode="random")
  assert (gen.name, gen.resolution, gen.z_dim) == ("stylegan1_32", 32, 512)
  assert gen.feature_shapes == ((4, 4, 32),) * 2 + ((8, 8, 32),) * 2 + ((16, 16, 32),) * 2 + (
      (32, 32, 16),) * 2
  jax.tree.map(np.testing.assert_array_equal, gen.params, tiny[2])


def test_datasetgan_config_builds_it(w_avg_file, tiny):
  """configs/datasetgan.py:gen=stylegan1 reaches the loader through build."""
  from gmseg import build  # pylint: disable=g-import-not-at-top
  from gmseg.experiments import config_files  # pylint: disable=g-import-not-at-top
  path = shared_path("fixtures", "stylegan1", "sg1_tiny32_zip.pt")
  config = config_files.load_config(  # an unlocked copy
      REPO / "configs" / "datasetgan.py",
      f"obj=cat,gen=stylegan1,gen_path={path},w_avg={w_avg_file}")
  assert config.generator.name == "stylegan1"
  assert (config.generator.kwargs.resolution, config.generator.kwargs.truncation_cutoff) == (256, 7)
  with pytest.raises(stylegan1_pt.StyleGAN1CheckpointError,
                     match="32x32 generator, not the 256x256"):
    build.generator(config)
  config.generator.kwargs.resolution = 32
  gen = build.generator(config)
  assert gen.resolution == 32 and len(gen.feature_shapes) == 8
  config.generator.kwargs.path = "<unset: pass gen_path=...>"
  with pytest.raises(stylegan1_pt.StyleGAN1FileNotFound, match="<unset: pass gen_path"):
    build.generator(config)


@pytest.fixture(scope="module")
def mini_gen():
  return _mini_generator()


def test_jit_and_noise(mini_gen):
  gen = mini_gen
  z = gen.sample_z(jax.random.PRNGKey(0), 2)
  a = gen.apply_fn(gen.params, z, jax.random.PRNGKey(1))
  b = gen.apply_fn(gen.params, z, jax.random.PRNGKey(1))
  c = gen.apply_fn(gen.params, z, jax.random.PRNGKey(2))
  assert gen.apply_fn._cache_size() == 1  # compiled once
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert np.abs(np.asarray(a[0]) - np.asarray(c[0])).max() > 1e-3
  # 'const' noise: the same maps for every call and sample (a fixed key);
  # 'random': a map per layer and sample. One program for all three.
  maps, again, rand = jax.jit(lambda key: (
      sg1.noise_maps(MINI, 2, "const", None), sg1.noise_maps(MINI, 4, "const", key),
      sg1.noise_maps(MINI, 2, "random", key)))(jax.random.PRNGKey(9))
  assert len(maps) == 4 and maps[0].shape == (1, 4, 4, 1)
  jax.tree.map(np.testing.assert_array_equal, maps, again)
  assert rand[3].shape == (2, 8, 8, 1) and not np.allclose(rand[2], rand[3])
  assert not np.allclose(rand[3][0], rand[3][1])


def test_annotator_step_on_the_generator(mini_gen):
  """The generator's features train an annotator: one annotator step, end
  to end (random noise, S's gradients on labelled and generated images)."""
  import optax  # pylint: disable=g-import-not-at-top
  from test_steps import TinySegmenter  # pylint: disable=g-import-not-at-top
  from gmseg import state as state_lib, steps
  from gmseg.models import annotator
  gen = mini_gen
  assert gen.feature_shapes == ((4, 4, 8),) * 2 + ((8, 8, 4),) * 2
  m = state_lib.Method(gen_fn=gen.apply_fn, z_dim=gen.z_dim,
                       annotator=annotator.Annotator(3, tmp_channels=4, num_layers=1),
                       segmenter=TinySegmenter(3), ann_tx=optax.sgd(0.1),
                       seg_tx=optax.sgd(0.1), matched=(), syn_batch=2, seg_batch=2)
  s = jax.jit(lambda p: state_lib.init_state(m, p, 0))(gen.params)  # one compile, not one per op
  m = state_lib.Method(**{**m.__dict__, "matched": state_lib.matched_paths(s.seg_params,
                                                                           "re:.*")})
  images = jax.random.uniform(jax.random.PRNGKey(6), (2, 8, 8, 3), minval=-1, maxval=1)
  labels = jax.random.randint(jax.random.PRNGKey(7), (2, 8, 8), 0, 3)
  s1, metrics = jax.jit(functools.partial(steps.annotator_step, method=m))(
      s, {"image": images, "label": labels}, gen.params)
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  moved = max(float(jnp.abs(a - b).max()) for a, b in zip(
      jax.tree.leaves(s1.ann_params), jax.tree.leaves(s.ann_params)))
  assert moved > 1e-6


# ----------------------------------------------------------------------------
# Wrong files: one clear error each.


def _legacy_pt(state_dict: dict) -> bytes:
  """A legacy-format torch.save file of a float32 state dict (as torch < 1.6
  writes it), made with the opcode writer of test_convert_stylegan2."""
  # pylint: disable-next=g-import-not-at-top
  from test_convert_stylegan2 import Call, Glob, ODict, PersId, Writer
  entries, blobs = {}, []
  for i, (name, arr) in enumerate(state_dict.items()):
    arr = np.ascontiguousarray(arr, "<f4")
    stride = tuple(int(s // 4) for s in arr.strides) if arr.ndim else ()
    key = str(1000 + i)
    storage = PersId(("storage", Glob("torch", "FloatStorage"), key, "cpu", arr.size, None))
    entries[name] = Call(Glob("torch._utils", "_rebuild_tensor_v2"),
                         (storage, 0, arr.shape, stride, False, ODict({})))
    blobs.append((key, arr))
  blobs.sort()  # torch lists the keys sorted as strings
  head = [pickle.dumps(torch_legacy.MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
          pickle.dumps({"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
          Writer(2).dump(ODict(entries)), pickle.dumps([k for k, _ in blobs], protocol=2)]
  return b"".join(head + [struct.pack("<q", a.size) + a.tobytes() for _, a in blobs])


def test_datasetgan_layout_without_avg_latent(tiny, w_avg_file, tmp_path):
  """DatasetGAN's files lack truncation.avg_latent: the .npy supplies it,
  and without one the error says so."""
  sd = {k: v for k, v in tiny[1].items() if k != sg1.AVG_LATENT}
  path = tmp_path / "g.for_g_all.pt"
  path.write_bytes(_legacy_pt(sd))
  params, _ = stylegan1_pt.read_params(path, w_avg_file)
  jax.tree.map(np.testing.assert_array_equal, params, tiny[2])
  with pytest.raises(stylegan1_pt.StyleGAN1CheckpointError, match="avg_latent_stylegan1.npy"):
    stylegan1_pt.read_params(path)


def test_stylegan2_files_are_named(tmp_path):
  from test_convert_stylegan2 import build_snapshot  # pylint: disable=g-import-not-at-top
  pkl = tmp_path / "network-snapshot.pkl"
  pkl.write_bytes(build_snapshot("sg2_tiny32")[0])
  with pytest.raises(stylegan1_pt.StyleGAN1CheckpointError, match="generator 'stylegan2'"):
    generator_registry.get("stylegan1", path=str(pkl))
  sd2 = tmp_path / "sg2_state_dict.pt"
  sd2.write_bytes(_legacy_pt({"mapping.fc0.weight": np.zeros((4, 4)),
                              "synthesis.b4.const": np.zeros((8, 4, 4))}))
  with pytest.raises(stylegan1_pt.StyleGAN1CheckpointError, match="StyleGAN2 file"):
    stylegan1_pt.read_state_dict(sd2)


def test_missing_and_misshapen_keys_are_named(tiny, tmp_path):
  sd = dict(tiny[1])
  del sd["g_synthesis.blocks.8x8.epi1.style_mod.lin.bias"]
  sd["g_synthesis.blocks.16x16.conv1.weight"] = np.zeros((32, 32, 1, 1), np.float32)
  sd["g_synthesis.extra.weight"] = np.zeros(3, np.float32)
  path = tmp_path / "bad.pt"
  path.write_bytes(_legacy_pt(sd))
  with pytest.raises(stylegan1_pt.StyleGAN1CheckpointError) as e:
    stylegan1_pt.read_params(path)
  msg = str(e.value)
  assert "missing: ['g_synthesis.blocks.8x8.epi1.style_mod.lin.bias']" in msg
  assert "g_synthesis.blocks.16x16.conv1.weight: (32, 32, 1, 1) != (32, 32, 3, 3)" in msg
  assert "extra: ['g_synthesis.extra.weight']" in msg
  sd = dict(tiny[1])
  sd["g_synthesis.blocks.8x8.conv0_up.intermediate.kernel"] = np.full((1, 1, 3, 3), 1 / 9)
  with pytest.raises(sg1.StateDictMismatch, match="blur kernel"):
    sg1.params_from_state_dict(sd, TINY)


def test_wrong_average_latent_is_refused(tiny, tmp_path):
  bad = tmp_path / "w_avg_18.npy"
  np.save(bad, np.zeros((18, 512), np.float32))
  path = shared_path("fixtures", "stylegan1", "sg1_tiny32_zip.pt")
  with pytest.raises(stylegan1_pt.StyleGAN1CheckpointError, match=r"shape \(18, 512\).*512 floats"):
    stylegan1_pt.read_params(path, bad)
  flat = tmp_path / "w_avg_1x512.npy"
  np.save(flat, tiny[1][sg1.AVG_LATENT][None])
  assert stylegan1_pt.read_w_avg(flat).shape == (512,)
  with pytest.raises(stylegan1_pt.StyleGAN1CheckpointError, match="not the 64x64"):
    stylegan1_pt.read_params(path, flat, resolution=64)


def test_truncated_legacy_file(tmp_path):
  blob = (shared_path("fixtures", "stylegan1", "sg1_tiny32_legacy.pt")).read_bytes()
  cut = tmp_path / "cut.pt"
  cut.write_bytes(blob[:len(blob) - 1000])
  with pytest.raises(torch_legacy.TorchCheckpointError, match="truncated"):
    torch_legacy.load(cut)
  with pytest.raises(stylegan1_pt.StyleGAN1CheckpointError, match="truncated"):
    stylegan1_pt.read_state_dict(cut)  # one user error, for the launchers' one line


# ----------------------------------------------------------------------------
# 4 fake devices: the pmapped generator gives the single-device images.


def _worker() -> dict:
  assert jax.local_device_count() == 4, jax.devices()
  # Random noise, a key per device: each device draws its sample's noise.
  gen = _mini_generator()
  z = gen.sample_z(jax.random.PRNGKey(1), 4)  # one sample per device
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  rep = jax.tree.map(lambda x: jnp.broadcast_to(x, (4,) + x.shape), gen.params)
  img4, feats4 = jax.pmap(gen.apply_fn)(rep, z[:, None], keys)
  img1 = jnp.concatenate([gen.apply_fn(gen.params, z[i:i + 1], keys[i])[0] for i in range(4)])
  return {"max_diff": float(jnp.abs(img4[:, 0] - img1).max()),
          "feat_shapes": [list(f.shape) for f in feats4],
          "spread": float(jnp.abs(img4[1:, 0] - img4[:1, 0]).max())}


def test_four_devices_match_one():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                       "--xla_backend_optimization_level=1 "
                       "--xla_llvm_disable_expensive_passes=true")
  proc = subprocess.run([sys.executable, __file__], cwd=REPO / "tests", env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["max_diff"] < 1e-5, r
  assert r["feat_shapes"] == [[4, 1, 4, 4, 8]] * 2 + [[4, 1, 8, 8, 4]] * 2
  assert r["spread"] > 1e-2  # different z per device: different images


if __name__ == "__main__":
  sys.path.insert(0, str(REPO / "tests"))
  print(json.dumps(_worker()))
