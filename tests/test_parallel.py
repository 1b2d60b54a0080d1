"""gmseg.parallel: 4 fake CPU devices give the parameters of 1 device.

The device comparison runs this file as a script in a subprocess, with
XLA_FLAGS set before JAX starts (4 host-platform devices). It uses a small
segmenter (two convolutions) so both pmapped programs compile in seconds;
the full UNet path is covered by tests/test_annotate.py.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ITERATIONS = 3
GLOBAL_BATCH = 8
# Measured max |4 devices - 1 device| / max|leaf| over all state leaves after
# 3 iterations, in float64: 1.8e-15. The run is in float64 because the
# paper's cosine (each row norm clamped at 1e-6, gmseg.matching) gives full
# weight to rows whose gradient is small, so float32 reduction-order noise of
# the pmeans grows to ~6e-4 over 3 iterations (1.1e-6 with the earlier
# eps-in-the-denominator cosine, which damped those rows).
REL_TOL = 1e-12


def _float64(tree):
  """Floating leaves as float64 (parameters are created in float32)."""
  import jax
  import jax.numpy as jnp
  return jax.tree.map(
      lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      tree)


def _run_on(devices, method_for, gen, labelled):
  """ITERATIONS annotator+segmenter iterations pmapped over `devices`."""
  import jax
  from gmseg import parallel, state as state_lib
  method = method_for(len(devices))
  state = _float64(state_lib.init_state(method, gen.params, seed=3))
  p_ann, p_seg, _ = parallel.pmap_steps(method, devices=devices)
  r_state = parallel.replicate(state, devices)
  r_gen = parallel.replicate(_float64(gen.params), devices)
  history = []
  for i in range(ITERATIONS):
    batch = parallel.shard_batch(
        {k: v[i * GLOBAL_BATCH:(i + 1) * GLOBAL_BATCH] for k, v in labelled.items()},
        len(devices))
    r_state, m_ann = p_ann(r_state, batch, r_gen)
    r_state, m_seg = p_seg(r_state, r_gen)
    history.append({k: float(np.asarray(v)[0]) for k, v in {**m_ann, **m_seg}.items()})
  # Every device holds the same state after the pmeans.
  spread = max(float(np.max(np.abs(np.asarray(x) - np.asarray(x)[:1])))
               for x in jax.tree.leaves(r_state))
  return jax.device_get(parallel.unreplicate(r_state)), history, spread


def _worker() -> dict:
  import flax.linen as nn
  import jax
  import dataclasses
  import optax
  from gmseg import state as state_lib
  from gmseg.models import annotator, generators

  assert jax.local_device_count() == 4, jax.devices()
  gen = generators.random_conv(resolution=8, width=16, z_dim=8)

  class SmallSeg(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train=False):
      x = nn.relu(nn.Conv(8, (3, 3), name="conv0")(x))
      return nn.Conv(self.num_classes, (1, 1), name="conv1")(x)

  def method_for(n):
    m = state_lib.Method(
        gen_fn=gen.apply_fn, z_dim=gen.z_dim,
        annotator=annotator.Annotator(3, tmp_channels=8, num_layers=2),
        segmenter=SmallSeg(), ann_tx=optax.sgd(0.05, momentum=0.9),
        seg_tx=optax.sgd(0.05, momentum=0.9), matched=(),
        syn_batch=GLOBAL_BATCH // n, seg_batch=GLOBAL_BATCH // n)
    shapes = jax.eval_shape(lambda p: state_lib.init_state(m, p, 3), gen.params)
    return dataclasses.replace(m, matched=state_lib.matched_paths(shapes.seg_params, "re:."))

  rng = np.random.default_rng(0)
  n = ITERATIONS * GLOBAL_BATCH
  labels = rng.integers(0, 3, (n, 8, 8)).astype(np.int32)
  labels[:, :2, :2] = 255  # ignored pixels
  labelled = {"image": rng.uniform(-1, 1, (n, 8, 8, 3)),
              "label": labels}
  s4, h4, spread4 = _run_on(jax.local_devices(), method_for, gen, labelled)
  s1, h1, _ = _run_on(jax.local_devices()[:1], method_for, gen, labelled)
  rel = [float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
         for a, b in zip(jax.tree.leaves(s4), jax.tree.leaves(s1))]
  moved = float(max(np.max(np.abs(a - b)) for a, b in zip(
      jax.tree.leaves(s1.seg_params), jax.tree.leaves(
          state_lib.init_state(method_for(1), gen.params, 3).seg_params))))
  return {"max_rel": max(rel), "num_leaves": len(rel), "step": int(s4.step),
          "spread4": spread4, "moved": moved, "history4": h4, "history1": h1}


@pytest.fixture(scope="module")
def four_vs_one():
  # Cheaper XLA CPU passes: same numerics for both device counts, half the compile.
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=4 "
                       "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
  proc = subprocess.run([sys.executable, __file__], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_four_devices_match_one(four_vs_one):
  r = four_vs_one
  assert r["step"] == ITERATIONS
  assert r["num_leaves"] > 10
  assert r["moved"] > 1e-3  # the updates are not trivially zero
  assert r["spread4"] == 0.0  # replicas stay bit-identical
  assert r["max_rel"] < REL_TOL, r
  for m4, m1 in zip(r["history4"], r["history1"]):
    assert m4.keys() == m1.keys()
    for k in m4:
      assert np.isclose(m4[k], m1[k], rtol=1e-10, atol=1e-12), (k, m4[k], m1[k])


def test_shard_batch_shapes_and_error():
  from gmseg import parallel
  batch = {"image": np.zeros((8, 4, 4, 3)), "label": np.zeros((8, 4, 4))}
  out = parallel.shard_batch(batch, num_devices=4)
  assert out["image"].shape == (4, 2, 4, 4, 3) and out["label"].shape == (4, 2, 4, 4)
  with pytest.raises(ValueError, match="Batch of 6 does not divide over 4 local devices"):
    parallel.shard_batch({"image": np.zeros((6, 4, 4, 3))}, num_devices=4)


def test_replicate_round_trip():
  import jax
  from gmseg import parallel
  tree = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.int32(7)}
  rep = parallel.replicate(tree)
  assert rep["w"].shape == (jax.local_device_count(), 2, 3)
  back = parallel.unreplicate(rep)
  np.testing.assert_array_equal(back["w"], tree["w"])
  assert back["step"].shape == () and int(back["step"]) == 7


def test_init_distributed_needs_multihost():
  from gmseg import parallel
  parallel.init_distributed(False)  # a no-op
  with pytest.raises(ValueError, match="multihost is off"):
    parallel.init_distributed(False, num_processes=2)


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  print(json.dumps(_worker()))
