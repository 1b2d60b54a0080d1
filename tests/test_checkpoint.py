"""Checkpointer: exact round trip, retention, resume, partial restore, crash safety."""
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmseg import checkpoint

REPO = pathlib.Path(__file__).resolve().parents[1]


@flax.struct.dataclass
class State:
  step: int
  seg_params: dict
  seg_stats: dict  # {} for GroupNorm models: an empty subtree must survive
  ann_params: dict
  opt_state: optax.OptState
  ann_opt_state: optax.OptState
  rng: jax.Array


def make_state(seed=0):
  rng = np.random.default_rng(seed)
  seg = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32),
                  "bias": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}}
  ann = {"head": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}}
  sgd = optax.sgd(0.1, momentum=0.9)
  adam = optax.adam(1e-3)
  grads = jax.tree.map(jnp.ones_like, seg)
  # One update each so momentum/mu/nu/count are not trivially zero.
  opt_state = sgd.update(grads, sgd.init(seg), seg)[1]
  ann_opt_state = adam.update(jax.tree.map(jnp.ones_like, ann), adam.init(ann), ann)[1]
  return State(step=7 + seed, seg_params=seg, seg_stats={}, ann_params=ann, opt_state=opt_state,
               ann_opt_state=ann_opt_state, rng=jax.random.PRNGKey(seed))


def assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_exact_structure_and_meta(tmp_path):
  state = make_state()
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  assert ckpt.latest_step() is None
  meta = {"config": {"lr": 0.1, "sizes": (2, 3)}, "loss": np.float32(0.25),
          "count": np.int64(4)}
  assert ckpt.save(7, state, meta=meta)
  ckpt.wait()
  # Restore against a different state of the same shapes (the usual resume).
  restored, rmeta = ckpt.restore(make_state(seed=1))
  assert_same(restored, state)
  assert isinstance(restored, State)
  assert type(restored.opt_state[0]).__name__ == "TraceState"
  assert restored.rng.dtype == jnp.uint32 and restored.seg_stats == {}
  assert rmeta == {"config": {"lr": 0.1, "sizes": [2, 3]}, "loss": 0.25, "count": 4}
  assert ckpt.restore_meta() == rmeta
  # The abstract target works too (a Python int leaf comes back as int32).
  restored2, _ = ckpt.restore(jax.eval_shape(lambda: state))
  assert int(restored2.step) == 7
  assert_same(restored2.replace(step=7), state)
  assert not ckpt.save(7, state)  # an existing step is skipped
  assert not ckpt.save(5, state)  # below the latest: declined ...
  assert ckpt.save(5, state, force=True)  # ... unless forced
  ckpt.wait()
  assert ckpt.all_steps() == [5, 7]


def test_retention_keep_steps_best_and_resume(tmp_path):
  state = make_state()
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2, keep_steps=[1], best_key="fg_miou")
  vals = {1: 0.1, 2: 0.9, 3: 0.3, 4: None, 5: 0.5, 6: None}
  for step, val in vals.items():
    metrics = None if val is None else {"fg_miou": val}
    ckpt.save(step, state.replace(step=step), meta={"step": step}, metrics=metrics)
  ckpt.wait()
  # Latest 2 (5, 6), the chosen step 1, and the best-validation step 2.
  assert ckpt.all_steps() == [1, 2, 5, 6]
  assert ckpt.best_step() == 2
  ckpt.close()
  # A fresh Checkpointer (a resumed run) sees the same steps and metrics.
  again = checkpoint.Checkpointer(tmp_path, keep=2, keep_steps=[1], best_key="fg_miou")
  assert again.latest_step() == 6 and again.best_step() == 2
  resumed, meta = again.maybe_restore(make_state(seed=3))
  assert resumed.step == 6 and meta == {"step": 6}
  older, meta = again.restore(state, step=2)
  assert older.step == 2 and meta == {"step": 2}
  again.save(7, state.replace(step=7), metrics={"fg_miou": 0.2})
  again.wait()
  assert again.all_steps() == [1, 2, 6, 7]
  with pytest.raises(FileNotFoundError, match="available steps"):
    again.restore(state, step=3)


def test_maybe_restore_without_checkpoint(tmp_path):
  state = make_state()
  same, meta = checkpoint.Checkpointer(tmp_path / "empty").maybe_restore(state)
  assert same is state and meta is None


def test_donating_after_async_save(tmp_path):
  state = make_state()
  expected = jax.tree.map(np.array, state)
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, state)
  # A training loop donates the state right after save returns.
  for leaf in jax.tree.leaves(state):
    if isinstance(leaf, jax.Array):
      leaf.delete()
  ckpt.wait()
  restored, _ = ckpt.restore(make_state(seed=1))
  assert_same(restored, expected)


def test_restore_subtree(tmp_path):
  state = make_state()
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(3, state)
  ckpt.save(4, state.replace(seg_params=jax.tree.map(lambda x: x + 1, state.seg_params)))
  ckpt.wait()
  seg = checkpoint.restore_subtree(tmp_path, ("seg_params",))
  assert_same(seg, jax.tree.map(lambda x: x + 1, state.seg_params))
  assert seg["conv"]["kernel"].sharding.device_set == {jax.devices()[0]}
  seg3 = checkpoint.restore_subtree(tmp_path, ("seg_params",), step=3)
  assert_same(seg3, state.seg_params)
  # Into an optax namedtuple (saved as a list) by position.
  mu = checkpoint.restore_subtree(tmp_path, ("ann_opt_state", 0, "mu"))
  np.testing.assert_array_equal(mu["head"]["kernel"], state.ann_opt_state[0].mu["head"]["kernel"])
  assert int(checkpoint.restore_subtree(tmp_path, ("step",))) == 7
  with pytest.raises(KeyError, match="seg_params"):
    checkpoint.restore_subtree(tmp_path, ("segparams",))


_KILL_SCRIPT = """
import sys, time, asyncio
import jax.numpy as jnp
from orbax.checkpoint._src.path import atomicity
from gmseg import checkpoint
directory, signal_file = sys.argv[1], sys.argv[2]
ckpt = checkpoint.Checkpointer(directory)
ckpt.save(1, {"w": jnp.full((64, 64), 1.0), "step": 1})
ckpt.wait()

async def hang(self, *args, **kwargs):
  # Everything of step 2 is written; the commit (rename) never happens.
  open(signal_file, "w").close()
  while True:
    await asyncio.sleep(1)

atomicity.AtomicRenameTemporaryPath.finalize = hang
ckpt.save(2, {"w": jnp.full((64, 64), 2.0), "step": 2})
ckpt.wait()
"""


def test_kill_during_save_keeps_latest_complete(tmp_path):
  directory, signal_file = tmp_path / "ckpt", tmp_path / "writing"
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILL_SCRIPT),
                           str(directory), str(signal_file)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 120
  while not signal_file.exists():
    if proc.poll() is not None:
      pytest.fail("save subprocess exited early:\n" + proc.stdout.read().decode()[-3000:])
    if time.monotonic() > deadline:
      proc.kill()
      pytest.fail("save subprocess never reached the commit of step 2")
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  leftovers = [p.name for p in directory.iterdir() if "tmp" in p.name]
  assert leftovers, sorted(p.name for p in directory.iterdir())  # step 2 half-done
  target = {"w": jnp.zeros((64, 64)), "step": 0}
  ckpt = checkpoint.Checkpointer(directory)
  assert ckpt.all_steps() == [1]
  state, _ = ckpt.restore(target)
  assert state["step"] == 1 and float(state["w"].sum()) == 64 * 64
  # The leftover is cleaned up and step 2 can be saved again.
  assert ckpt.save(2, {"w": jnp.full((64, 64), 2.0), "step": 2})
  ckpt.wait()
  assert ckpt.all_steps() == [1, 2]
  assert not [p for p in directory.iterdir() if "tmp" in p.name]
