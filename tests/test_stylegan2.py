"""StyleGAN2-ADA generator against the official PyTorch outputs (fixtures)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_path
from gmseg import generator_registry
from gmseg.models import stylegan2 as sg

ATOL = 1e-4


def _fixture(name):
  data = np.load(shared_path("fixtures", "stylegan2", f"{name}.npz"))
  with open(shared_path("fixtures", "stylegan2", f"{name}.json")) as f:
    meta = json.load(f)
  kw = meta["constructor_kwargs"]
  arch = sg.Arch(
      z_dim=kw["z_dim"], w_dim=kw["w_dim"], resolution=kw["img_resolution"],
      img_channels=kw["img_channels"],
      channel_base=kw["synthesis_kwargs"]["channel_base"],
      channel_max=kw["synthesis_kwargs"]["channel_max"],
      mapping_layers=kw["mapping_kwargs"]["num_layers"],
      conv_clamp=kw["synthesis_kwargs"]["conv_clamp"],
      architecture=kw["synthesis_kwargs"]["architecture"])
  state_dict = {k[len("param/"):]: data[k] for k in data.files
                if k.startswith("param/")}
  return data, arch, state_dict


def _all_outputs(params, z, arch):
  """Every fixture output key, computed in one jitted program."""
  out = {"ws": sg.mapping(params, z, arch, 0.7),
         "ws_psi1": sg.mapping(params, z, arch, 1.0),
         "ws_cut2": sg.mapping(params, z, arch, 0.7, 2)}
  img, feats = sg.synthesis(params, out["ws"], arch, "const")
  out["img"] = img
  for res, f in zip(arch.block_resolutions, feats):
    out[f"feat/b{res}"] = f
  out["img_cut2"] = sg.synthesis(params, out["ws_cut2"], arch, "const")[0]
  out["img_nonoise"] = sg.synthesis(params, out["ws"], arch, "none")[0]
  return out


@pytest.mark.parametrize("name", ["sg2_tiny32", "sg2_tiny64"])
def test_matches_official_outputs(name):
  data, arch, state_dict = _fixture(name)
  assert arch.num_ws == data["output/ws"].shape[1]
  assert len(state_dict) == len(sg.expected_state_dict_shapes(arch))
  params = sg.params_from_state_dict(state_dict, arch)
  out = jax.jit(_all_outputs, static_argnums=2)(params, data["input/z"], arch)
  expected_keys = {k[len("output/"):] for k in data.files
                   if k.startswith("output/")}
  assert set(out) == expected_keys
  errors = {}
  for key, value in out.items():
    ref = data[f"output/{key}"]
    if ref.ndim == 4:
      ref = ref.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    assert value.shape == ref.shape, key
    errors[key] = float(np.max(np.abs(np.asarray(value) - ref)))
  print(name, errors)
  assert all(e < ATOL for e in errors.values()), errors
  # The truncation and noise variants really differ from the main image.
  assert np.abs(data["output/img"] - data["output/img_cut2"]).max() > 1e-2
  assert np.abs(data["output/img"] - data["output/img_nonoise"]).max() > 1e-2


def test_state_dict_checked_strictly():
  _, arch, state_dict = _fixture("sg2_tiny32")
  bad = dict(state_dict)
  del bad["synthesis.b8.conv1.affine.bias"]
  bad["synthesis.b64.conv0.weight"] = np.zeros((1,), np.float32)
  bad["mapping.fc0.weight"] = bad["mapping.fc0.weight"][:, :16]
  with pytest.raises(ValueError) as e:
    sg.params_from_state_dict(bad, arch)
  msg = str(e.value)
  assert "synthesis.b8.conv1.affine.bias" in msg
  assert "synthesis.b64.conv0.weight" in msg
  assert "mapping.fc0.weight" in msg
  bad = dict(state_dict)
  bad["synthesis.b8.resample_filter"] = np.full((4, 4), 1 / 16, np.float32)
  with pytest.raises(ValueError, match="resample_filter"):
    sg.params_from_state_dict(bad, arch)


def test_random_noise_distinct_per_layer_and_deterministic():
  data, arch, state_dict = _fixture("sg2_tiny32")
  params = sg.params_from_state_dict(state_dict, arch)
  gen = sg.make_generator(params, arch, truncation_psi=0.7,
                          noise_mode="random")
  assert gen.resolution == 32 and gen.z_dim == 32
  assert gen.feature_shapes == ((4, 4, 64), (8, 8, 64), (16, 16, 64),
                                (32, 32, 32))
  z = jnp.asarray(data["input/z"][:2])
  rng = jax.random.PRNGKey(3)
  img_a, feats_a = gen.apply_fn(gen.params, z, rng)
  img_b, _ = gen.apply_fn(gen.params, z, rng)
  img_c, _ = gen.apply_fn(gen.params, z, jax.random.PRNGKey(4))
  assert img_a.shape == (2, 32, 32, 3)
  assert [f.shape[1:] for f in feats_a] == list(gen.feature_shapes)
  np.testing.assert_array_equal(np.asarray(img_a), np.asarray(img_b))
  assert np.abs(np.asarray(img_a) - np.asarray(img_c)).max() > 1e-3
  # Random noise changes the image but keeps it near the const-noise one.
  const_img = data["output/img"][:2].transpose(0, 2, 3, 1)
  diff = np.abs(np.asarray(img_a) - const_img)
  assert 1e-3 < diff.max()
  # jit: the second call of the same shape reused the compiled program.
  assert gen.apply_fn._cache_size() == 1

  # The noise maps themselves: distinct across layers of the same size and
  # across samples, standard normal.
  # Jitted: one compile rather than one per operation of the synthesis.
  synthesize = jax.jit(lambda params, z, rng: sg.Generator(arch).apply(
      {"params": params}, sg.mapping(params, z, arch, 0.7), "random", rng,
      method=sg.Generator.synthesize, mutable=["intermediates"]))
  _, state = synthesize(params, z, rng)
  noise = jax.tree.map(np.asarray, state["intermediates"]["synthesis"])
  n0 = noise["b8"]["conv0"]["noise"][0]
  n1 = noise["b8"]["conv1"]["noise"][0]
  assert n0.shape == n1.shape == (2, 8, 8, 1)
  assert not np.allclose(n0, n1)
  assert not np.allclose(n0[0], n0[1])
  layers = [noise[f"b{r}"][c]["noise"][0] for r in arch.block_resolutions
            for c in ("conv0", "conv1") if c in noise[f"b{r}"]]
  assert len(layers) == arch.num_ws - 1
  big = np.concatenate([x.ravel() for x in layers])
  assert abs(big.mean()) < 0.05 and abs(big.std() - 1) < 0.05
  # Same key and position in every layer would give equal leading values.
  firsts = {float(x.ravel()[0]) for x in layers}
  assert len(firsts) == len(layers)


def test_registry_rejects_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="convert_stylegan2"):
    generator_registry.get("stylegan2", path=str(tmp_path))


def test_paper256_feature_shapes():
  # ADA 'paper256' (channel_base 16384): 512@4..32, 256@64, 128@128, 64@256.
  arch = sg.Arch(resolution=256, channel_base=16384, channel_max=512,
                 mapping_layers=8)
  assert arch.num_ws == 14
  abstract = jax.eval_shape(lambda: sg.init_params(arch, jax.random.PRNGKey(0)))
  gen = sg.make_generator(abstract, arch, truncation_cutoff=8)
  assert gen.resolution == 256 and gen.z_dim == 512
  assert gen.feature_shapes == ((4, 4, 512), (8, 8, 512), (16, 16, 512),
                                (32, 32, 512), (64, 64, 256), (128, 128, 128),
                                (256, 256, 64))
  sd_shapes = sg.expected_state_dict_shapes(arch)
  n_state = sum(int(np.prod(s)) for k, s in sd_shapes.items()
                if not k.endswith("resample_filter"))
  assert n_state == sum(x.size for x in jax.tree.leaves(abstract))
