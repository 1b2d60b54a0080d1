"""The gan-face-generate DCGAN port against the torch reference outputs."""
import importlib.util
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_path

from gmseg.convert import torch_zip
from gmseg import generator_registry
from gmseg.models import dcgan

FEATURES = ("relu2", "relu5", "relu8", "relu11")


@pytest.fixture(scope="module")
def gen():
  return generator_registry.get("dcgan_faces")


@pytest.fixture(scope="module")
def reference():
  with np.load(shared_path("fixtures", "dcgan_faces", "reference.npz")) as ref:
    return {k: ref[k] for k in ref.files}


def test_metadata(gen):
  assert gen.name == "dcgan_faces" and gen.z_dim == 100 and gen.resolution == 64
  assert gen.feature_shapes == ((4, 4, 512), (8, 8, 256), (16, 16, 128), (32, 32, 64))
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(gen.params))
  # 4x4 kernels 100*512 + 512*256 + 256*128 + 128*64 + 64*3, and 4 stats per BN channel.
  assert n_params == 16 * (51200 + 131072 + 32768 + 8192 + 192) + 4 * (512 + 256 + 128 + 64)


def test_matches_torch_reference(gen, reference, capsys):
  z = reference["input/z"].reshape(8, 100)  # torch feeds [8, 100, 1, 1]
  images, feats = gen(jnp.asarray(z))
  got = {"img": images, **dict(zip(FEATURES, feats))}
  errors = {}
  for name, value in got.items():
    key = "output/img" if name == "img" else f"output/feat/{name}"
    want = reference[key].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    assert value.shape == want.shape, name
    errors[name] = float(np.abs(np.asarray(value) - want).max())
  with capsys.disabled():
    print("\nDCGAN max abs error vs torch:", {k: f"{v:.2e}" for k, v in errors.items()})
  assert all(e < 1e-4 for e in errors.values()), errors
  # The outputs are non-trivial: saturated tanh pixels and large activations.
  assert float(images.min()) < -0.99 and float(images.max()) > 0.9
  assert all(float(f.max()) > 1.0 for f in feats)


def test_compiles_once_and_batches(gen):
  fn = gen.apply_fn
  rng = jax.random.PRNGKey(0)
  z = gen.sample_z(jax.random.PRNGKey(1), 3)
  img_a, _ = fn(gen.params, z, rng)
  size = fn._cache_size()
  img_b, _ = fn(gen.params, z + 0.5, jax.random.PRNGKey(5))
  assert fn._cache_size() == size
  assert float(jnp.abs(img_a - img_b).max()) > 0.1
  # Examples are independent of their batch mates (eval BatchNorm).
  single, _ = fn(gen.params, z[1:2], rng)
  np.testing.assert_allclose(single[0], img_a[1], atol=1e-5)


def test_bad_latent_shape(gen):
  with pytest.raises(ValueError, match=r"reshape torch-style"):
    gen.apply_fn(gen.params, jnp.zeros((2, 100, 1, 1)), jax.random.PRNGKey(0))


def test_convert_is_strict():
  sd = dict(torch_zip.load(dcgan.find_weights())["netG_state_dict"])
  params = dcgan.convert_state_dict(sd)
  np.testing.assert_array_equal(params["main_3"]["kernel"][1, 2, 5, 7], sd["main.3.weight"][7, 5, 1, 2])
  np.testing.assert_array_equal(params["main_10"]["var"], sd["main.10.running_var"])
  broken = dict(sd)
  del broken["main.4.running_mean"]
  broken["main.99.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match=r"missing \['main.4.running_mean'\], unexpected \['main.99.weight'\]"):
    dcgan.convert_state_dict(broken)
  wrong = dict(sd, **{"main.7.bias": np.zeros(64, np.float32)})
  with pytest.raises(ValueError, match=r"main.7.bias"):
    dcgan.convert_state_dict(wrong)


def test_explicit_weights_path(gen, tmp_path):
  params = dcgan.load_params(dcgan.find_weights())
  jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(gen.params))
  path = tmp_path / "other.pt"  # a valid torch zip holding an empty dict
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("other/data.pkl", b"\x80\x02}q\x00.")
  with pytest.raises(ValueError, match="netG_state_dict"):
    dcgan.load_params(path)


def test_missing_package_message(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "gan_face_generate" else real(name, *a))
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps gan-face-generate==1\.1\.1"):
    dcgan.load_pretrained()
