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


# ------------------------------------------------------------ damaged steps


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The OCDBT data files of a step's state, largest first.

  After a save, orbax merges each process's files into `state/d/` and reads
  only those (measured: truncating `state/ocdbt.process_0/d/*` changes nothing).
  """
  files = [p for p in (step_dir / "state" / "d").iterdir() if p.is_file()]
  assert files, sorted(step_dir.rglob("*"))
  return sorted(files, key=lambda p: -p.stat().st_size)


def _three_steps(directory):
  ckpt = checkpoint.Checkpointer(directory, keep=3)
  states = {s: make_state(seed=s) for s in (1, 2, 3)}
  for s, st in states.items():
    ckpt.save(s, st, meta={"step": s})
  ckpt.wait()
  ckpt.close()
  return states


def _fallback(directory, log_check):
  """Resumes over a damaged step 3: step 2 comes back, step 3 is moved aside."""
  states = {s: make_state(seed=s) for s in (1, 2, 3)}
  ckpt = checkpoint.Checkpointer(directory, keep=3)
  with log_check() as records:
    state, meta = ckpt.maybe_restore(make_state(seed=9))
  assert meta == {"step": 2}
  assert_same(state, states[2])
  assert [s for s, _ in ckpt.skipped] == [3]
  text = "\n".join(records)
  assert "Skipping checkpoint step 3" in text and "instead of 3" in text, text
  # Moved out of orbax's sight, so the resumed run saves step 3 again.
  assert ckpt.all_steps() == [1, 2]
  assert (directory.parent / f"{directory.name}_damaged" / "3").is_dir()
  assert ckpt.save(3, states[3], meta={"step": 3})
  ckpt.wait()
  again, _ = ckpt.restore(make_state(seed=9))
  assert_same(again, states[3])
  ckpt.close()
  return ckpt.skipped[0][1]


@pytest.fixture
def warnings_seen(monkeypatch):
  import contextlib
  from absl import logging as absl_logging

  @contextlib.contextmanager
  def capture():
    seen = []
    monkeypatch.setattr(absl_logging, "warning", lambda msg, *a: seen.append(msg % a))
    yield seen
  return capture


def test_truncated_latest_falls_back(tmp_path, warnings_seen):
  directory = tmp_path / "ckpt"
  _three_steps(directory)
  victim = _data_files(directory / "3")[0]
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  why = _fallback(directory, warnings_seen)
  assert "does not read completely" in why or "checksum" in why, why
  # Evaluation of an explicitly requested damaged step fails loudly.
  victim2 = _data_files(directory / "2")[0]
  victim2.write_bytes(victim2.read_bytes()[:10])
  with pytest.raises(checkpoint.CheckpointDamagedError, match="step 2 .*evaluate another step"):
    for sub in (("seg_params",), ("ann_params",), ("opt_state",), ("ann_opt_state",)):
      checkpoint.restore_subtree(directory, sub, step=2)


def test_deleted_file_in_latest_falls_back(tmp_path, warnings_seen):
  directory = tmp_path / "ckpt"
  _three_steps(directory)
  for f in _data_files(directory / "3"):
    f.unlink()
  why = _fallback(directory, warnings_seen)
  assert "does not read completely" in why, why


def test_bit_flipped_latest_falls_back(tmp_path, warnings_seen):
  directory = tmp_path / "ckpt"
  _three_steps(directory)
  rng = np.random.default_rng(0)
  for f in _data_files(directory / "3"):
    data = bytearray(f.read_bytes())
    # Flip bits in the middle of each file (array bytes, not the file header).
    for i in rng.integers(len(data) // 4, 3 * len(data) // 4, size=40):
      data[i] ^= 0xFF
    f.write_bytes(bytes(data))
  why = _fallback(directory, warnings_seen)
  assert "checksum mismatch" in why or "does not read completely" in why, why


def test_nonfinite_step_is_damaged_and_subtree_read_fails(tmp_path):
  # A NaN written by the run itself: checksums match, finiteness does not.
  state = make_state()
  bad = state.replace(opt_state=jax.tree.map(lambda x: x * jnp.nan if x.dtype.kind == "f"
                                             else x, state.opt_state))
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, state)
  ckpt.save(2, bad)
  ckpt.wait()
  restored, _ = ckpt.maybe_restore(make_state(seed=1), quarantine=False)
  assert_same(restored, state)
  assert ckpt.skipped[0][0] == 2 and "non-finite values in opt_state" in ckpt.skipped[0][1]
  with pytest.raises(checkpoint.CheckpointDamagedError, match="non-finite values in opt_state"):
    checkpoint.restore_subtree(tmp_path, ("opt_state",), step=2)
  seg = checkpoint.restore_subtree(tmp_path, ("seg_params",), step=2)  # this part is sound
  assert_same(seg, state.seg_params)
  ckpt.close()


def test_structure_change_is_not_damage(tmp_path):
  state = make_state()
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, state)
  ckpt.wait()
  wider = state.replace(seg_params={"conv": {"kernel": jnp.zeros((3, 3, 2, 8)),
                                             "bias": jnp.zeros((8,))}})
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"seg_params/conv/bias saved \(4,\) vs requested \(8,\)"):
    ckpt.maybe_restore(wider)
  assert ckpt.all_steps() == [1]  # nothing moved
  ckpt.close()


def test_an_empty_node_the_checkpoint_lacks_is_a_structure_change(tmp_path):
  # An empty dict holds no arrays, so only orbax's own read notices it.
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, {"w": jnp.ones(3)})
  ckpt.wait()
  with pytest.raises(checkpoint.CheckpointMismatchError, match="another structure"):
    ckpt.maybe_restore({"w": jnp.zeros(3), "extra": {}})
  assert ckpt.all_steps() == [1] and not ckpt.skipped  # not skipped as damage, nothing moved
  ckpt.close()
