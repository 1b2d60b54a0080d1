"""Checkpoints: orbax save / restore / automatic resume, behind one small class.

Each step directory holds three items:
  state:     the train-state pytree (StandardSave), restored against an
             abstract target so flax.struct dataclasses and optax namedtuples
             come back with their exact structure (without a target orbax
             returns dicts and lists).
  meta:      anything JSON (config dict, metrics, data-set sizes).
  checksums: {leaf path: [crc32 of its bytes, dtype]} of the state's arrays.

Damage. orbax's atomic rename guards against crashes, not against files
truncated, deleted or corrupted afterwards. `restore` checks that the saved
tree has the target's structure and shapes (a mismatch is a config change,
`CheckpointMismatchError`), that every file reads, that the checksums match
and that every float is finite; anything else is `CheckpointDamagedError`.
`maybe_restore` (training resume) then falls back to the newest step that
passes, logging which steps it skipped and why, and moves the skipped ones to
`<directory>_damaged/` so the resumed run can save those steps again.
Evaluation (`restore_subtree`) never falls back: a damaged step is an error.

orbax writes each step into a temporary directory and renames it when it is
complete, so a crash or kill mid-save leaves the previous step restorable;
leftover temporaries are ignored by `all_steps` and removed on the next start.
Every process calls `save` (orbax saves collectively on multi-host); do not
gate it on process 0.

Typical use in a training loop:

  ckpt = Checkpointer(workdir / "checkpoints", keep=3, best_key="fg_miou")
  state, meta = ckpt.maybe_restore(state)       # resumes when a step exists
  ...
  ckpt.save(step, state, meta={"config": config.to_dict()},
            metrics={"fg_miou": val_fg_miou})   # metrics optional
  ckpt.wait()                                   # before exit
"""
import math
import pathlib
import shutil
import zlib
from typing import Any, Optional, Sequence

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from gmseg import errors
from gmseg.metric_writers import to_jsonable

PyTree = Any
_policies = ocp.checkpoint_managers


class CheckpointDamagedError(errors.UserError, RuntimeError):
  """A saved step does not read completely, fails its checksums or holds NaN/Inf."""


class CheckpointMismatchError(errors.UserError, ValueError):
  """The saved state has another structure or shapes than the one asked for."""


def _item_handlers() -> dict:
  return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
          "checksums": ocp.JsonCheckpointHandler()}


def _path_str(key_path) -> str:
  """'seg_params/conv/kernel' for any pytree key path (dataclass, dict, tuple)."""
  names = []
  for k in key_path:
    for attr in ("name", "key", "idx"):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return "/".join(names)


def _leaf_bytes(x) -> Optional[np.ndarray]:
  """The leaf's bytes as uint8, or None for leaves not checksummed (Python scalars)."""
  if not isinstance(x, (np.ndarray, jax.Array)):
    return None
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return None
  try:
    arr = np.ascontiguousarray(np.asarray(x))
  except (TypeError, ValueError):  # e.g. typed PRNG keys
    return None
  return arr.reshape(-1).view(np.uint8)


def checksums(tree: PyTree) -> dict[str, list]:
  """{leaf path: [crc32, dtype]} of a (host or device) state's arrays."""
  out = {}
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    data = _leaf_bytes(leaf)
    if data is not None:
      out[_path_str(key_path)] = [zlib.crc32(data), str(np.asarray(leaf).dtype)]
  return out


def find_damage(tree: PyTree, expected: Optional[dict] = None, prefix: str = "") -> Optional[str]:
  """Why `tree` (a restored state or subtree) is damaged, or None when it is sound.

  Args:
    expected: `checksums` saved with the step (None: only finiteness is checked).
    prefix: the subtree's path inside the saved state ('seg_params').
  """
  bad_sum, nonfinite = [], []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    path = "/".join(p for p in (prefix, _path_str(key_path)) if p)
    arr = np.asarray(leaf)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
      nonfinite.append(f"{path} ({int(np.size(arr) - np.isfinite(arr).sum())} of {arr.size})")
    saved = (expected or {}).get(path)
    data = _leaf_bytes(leaf)
    if saved is not None and data is not None and saved[1] == str(arr.dtype):
      if zlib.crc32(data) != saved[0]:
        bad_sum.append(path)
  problems = []
  if bad_sum:
    problems.append(f"checksum mismatch in {len(bad_sum)} array(s): {', '.join(bad_sum[:3])}"
                    + (", ..." if len(bad_sum) > 3 else ""))
  if nonfinite:
    problems.append(f"non-finite values in {', '.join(nonfinite[:3])}"
                    + (", ..." if len(nonfinite) > 3 else ""))
  return "; ".join(problems) or None


def _short(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _saved_checksums(mgr, step: int) -> Optional[dict]:
  """The step's checksums item, or None for checkpoints written before it existed."""
  if not (pathlib.Path(mgr.directory) / str(step) / "checksums").is_dir():
    return None
  return mgr.restore(step, args=ocp.args.Composite(
      checksums=ocp.args.JsonRestore())).checksums


class Checkpointer:
  """Keeps the latest `keep` steps (plus chosen and best ones) of a run.

  Args:
    directory: where step directories go (created when missing).
    keep: number of most recent steps kept.
    keep_steps: steps never deleted (e.g. milestones), in addition.
    best_key: when set, `save(..., metrics={best_key: value})` records the
      value and the best step so far is never deleted; saves without that
      metric rank last.
    best_mode: 'max' (default; for mIoU) or 'min' (for losses).
    async_save: write in a background thread; `save` returns once arrays are
      copied off the device, so the caller may donate or overwrite them.
  """

  def __init__(self, directory, keep: int = 3,
               keep_steps: Optional[Sequence[int]] = None,
               best_key: Optional[str] = None, best_mode: str = "max",
               async_save: bool = True):
    if keep < 1:
      raise ValueError(f"keep={keep}: keep at least the latest checkpoint (>= 1).")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode={best_mode!r}: use 'max' or 'min'.")
    self.directory = pathlib.Path(directory).absolute()
    self.best_key = best_key
    self._best_fn = None
    policies = [_policies.LatestN(keep)]
    if keep_steps:
      policies.append(_policies.CustomSteps(list(keep_steps)))
    best_fn = None
    if best_key is not None:
      sign = 1.0 if best_mode == "max" else -1.0
      # Always 'max' on a signed value; steps saved without the metric get -inf.
      best_fn = lambda m: sign * float(m[best_key]) if best_key in m else -math.inf
      self._best_fn = best_fn
      policies.append(_policies.BestN(get_metric_fn=best_fn, n=1,
                                      keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        create=True, save_interval_steps=1,
        preservation_policy=_policies.AnyPreservationPolicy(policies),
        # best_fn makes orbax write and reload per-step metrics; deletion
        # follows the preservation policy above.
        best_fn=best_fn, best_mode="max",
        cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self._mgr = ocp.CheckpointManager(self.directory, options=options,
                                      item_handlers=_item_handlers())
    self.skipped: list[tuple[int, str]] = []  # (step, why) passed over by maybe_restore

  def save(self, step: int, state: PyTree, meta: Optional[dict] = None,
           metrics: Optional[dict] = None, force: bool = False) -> bool:
    """Saves `state` (and JSON `meta`) as `step`; returns whether it saved.

    A step that already exists is skipped (False), e.g. a final save at a step
    the loop just saved. `metrics` ({best_key: value}) ranks the step for
    `best_step`; it is ignored when the Checkpointer has no `best_key`.
    orbax declines a step below the latest one (warned, False) unless `force`.
    """
    step = int(step)
    if step in self._mgr.all_steps():
      logging.info("Checkpoint step %d already exists in %s; not saving.",
                   step, self.directory)
      return False
    ckpt_metrics = None
    if self.best_key is not None:
      ckpt_metrics = to_jsonable(dict(metrics or {}))
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave(to_jsonable(dict(meta or {}))),
        checksums=ocp.args.JsonSave(checksums(state)))
    saved = bool(self._mgr.save(step, args=args, metrics=ckpt_metrics, force=force))
    if not saved:
      logging.warning("orbax declined to save step %d (latest is %s); pass "
                      "force=True to save an earlier step.", step, self.latest_step())
    return saved

  def wait(self) -> None:
    """Blocks until a background save has finished (call before exit)."""
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mgr.all_steps())

  def best_step(self) -> Optional[int]:
    """The kept step with the best `best_key` metric (None if none has one)."""
    if self.best_key is None:
      raise ValueError("best_step needs Checkpointer(..., best_key='<metric>').")
    ranked = [(self._mgr.metrics(s) or {}, s) for s in self.all_steps()]
    ranked = [(m, s) for m, s in ranked if self.best_key in m]
    if not ranked:
      return None
    return max(ranked, key=lambda ms: self._best_fn(ms[0]))[1]

  def _resolve(self, step: Optional[int]) -> int:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(
            f"No complete checkpoint in {self.directory}; train first or "
            "point at the run's checkpoint directory.")
      return steps[-1]
    if int(step) not in steps:
      raise FileNotFoundError(
          f"Checkpoint step {step} is not in {self.directory}; "
          f"available steps: {steps}.")
    return int(step)

  def restore(self, target: PyTree, step: Optional[int] = None, verify: bool = True
              ) -> tuple[PyTree, dict]:
    """Restores (state, meta) at `step` (default: latest).

    Args:
      target: the state, or its abstract version (`jax.eval_shape` /
        ShapeDtypeStructs); it fixes tree structure, dtypes and shardings.
      verify: check checksums and finiteness of what was read.
    Raises:
      CheckpointMismatchError: the saved tree differs from `target`.
      CheckpointDamagedError: the step does not read or fails the checks.
    """
    step = self._resolve(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    self._check_structure(abstract, step)
    try:
      out = self._mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
      expected = _saved_checksums(self._mgr, step) if verify else None
    except Exception as e:  # orbax/tensorstore raise many types for broken files
      # A tree node that holds no arrays (an empty dict) is invisible to
      # _check_structure's leaf comparison; orbax finds it missing here. That
      # is another structure, not damage: skipping the step would report every
      # sound checkpoint as damaged.
      if isinstance(e, ValueError) and "tree structures do not match" in str(e):
        raise self._mismatch(step, _short(e)) from e
      raise CheckpointDamagedError(f"Checkpoint step {step} in {self.directory} does not "
                                   f"read completely ({_short(e)}).") from e
    if verify:
      problem = find_damage(out.state, expected)
      if problem:
        raise CheckpointDamagedError(f"Checkpoint step {step} in {self.directory} is "
                                     f"damaged: {problem}.")
    return out.state, out.meta

  def _check_structure(self, abstract: PyTree, step: int) -> None:
    """Compares leaf paths and shapes with the step's metadata before reading arrays."""
    try:
      saved = self._mgr.item_metadata(step)["state"]
      saved_leaves = jax.tree_util.tree_flatten_with_path(saved)[0]
    except Exception as e:  # a missing or truncated metadata file
      raise CheckpointDamagedError(f"Checkpoint step {step} in {self.directory} does not "
                                   f"read completely (metadata: {_short(e)}).") from e
    have = {_path_str(p): tuple(getattr(m, "shape", ()) or ()) for p, m in saved_leaves}
    want = {_path_str(p): tuple(getattr(x, "shape", ()) or ())
            for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    diffs = [f"{k} missing in the checkpoint" for k in want if k not in have]
    diffs += [f"{k} only in the checkpoint" for k in have if k not in want]
    diffs += [f"{k} saved {have[k]} vs requested {want[k]}" for k in want
              if k in have and have[k] != want[k]]
    if diffs:
      raise self._mismatch(step, f"{len(diffs)} differences: {'; '.join(diffs[:4])}"
                                 f"{'; ...' if len(diffs) > 4 else ''}")

  def _mismatch(self, step: int, detail: str) -> CheckpointMismatchError:
    """The error for a saved state of another structure than the one asked for."""
    return CheckpointMismatchError(
        f"Checkpoint step {step} in {self.directory} holds a state of another structure "
        f"than this config builds ({detail}): the config changed model, optimiser (or its "
        "weight average) or classes; use a new workdir.")

  def maybe_restore(self, target: PyTree, quarantine: bool = True
                    ) -> tuple[PyTree, Optional[dict]]:
    """Automatic resume: the newest sound checkpoint if any, else (target, None).

    Damaged steps are skipped with a warning (recorded in `self.skipped`) and,
    with `quarantine`, moved to `<directory>_damaged/<step>` so the run can
    save them again. A structure mismatch is raised, not skipped.

    Raises:
      CheckpointDamagedError when every saved step is damaged.
    """
    self.skipped = []
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        state, meta = self.restore(target, step)
      except CheckpointDamagedError as e:
        why = str(e).split(f"{self.directory} ", 1)[-1]
        logging.warning("Skipping checkpoint step %d of %s: %s", step, self.directory, why)
        self.skipped.append((step, why))
        continue
      if self.skipped:
        logging.warning("Resuming from checkpoint step %d instead of %s (damaged).",
                        step, ", ".join(str(s) for s, _ in self.skipped))
        if quarantine:
          self._quarantine([s for s, _ in self.skipped])
      logging.info("Resumed from %s step %d.", self.directory, step)
      return state, meta
    if steps:
      raise CheckpointDamagedError(
          f"Every checkpoint in {self.directory} is damaged (steps {steps}; latest: "
          f"{self.skipped[0][1]}). Move the folder away to start over.")
    return target, None

  def _quarantine(self, steps: Sequence[int]) -> None:
    """Moves damaged step folders out of orbax's sight (process 0; others wait)."""
    dest = self.directory.parent / f"{self.directory.name}_damaged"
    if jax.process_index() == 0:
      dest.mkdir(parents=True, exist_ok=True)
      for step in steps:
        target = dest / str(step)
        n = 1
        while target.exists():
          target, n = dest / f"{step}.{n}", n + 1
        shutil.move(str(self.directory / str(step)), str(target))
        logging.warning("Moved the damaged checkpoint step %d to %s.", step, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("gmseg_checkpoint_quarantine")
    self._mgr.reload()

  def restore_meta(self, step: Optional[int] = None) -> dict:
    """Restores only the JSON `meta` item at `step` (default: latest)."""
    step = self._resolve(step)
    return self._mgr.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

  def saved_config(self) -> tuple[Optional[int], Optional[dict]]:
    """(newest step whose meta reads, its config), or (None, None) when none.

    Reads the JSON meta alone, so a resume compares configs before any heavy
    setup; a damaged step's state is left to `maybe_restore`, which reports it.
    """
    for step in reversed(self.all_steps()):
      try:
        return step, self.restore_meta(step).get("config")
      except Exception:  # pylint: disable=broad-except  (damaged: maybe_restore reports it)
        continue
    return None, None


def restore_subtree(directory, path: Sequence[Any] = ("seg_params",),
                    step: Optional[int] = None,
                    device: Optional[jax.Device] = None, verify: bool = True) -> PyTree:
  """Restores one sub-pytree of a saved state onto one device, without a target.

  For notebooks: `restore_subtree(ckpt_dir, ("seg_params",))` gives the
  segmenter parameters as a nested dict of arrays; nothing else is read.

  Args:
    directory: the Checkpointer's directory.
    path: keys from the state root: dataclass field / dict key names, and
      integer positions inside tuples (optax states), e.g. ("opt_state", 0).
    step: default latest.
    device: default `jax.local_devices()[0]` (this process's first device: in a
      multi-process job `jax.devices()[0]` belongs to process 0).
    verify: check the subtree's checksums and finiteness.
  Raises:
    CheckpointDamagedError when the step does not read or fails the checks
    (no fallback: the caller asked for this step).
  """
  directory = pathlib.Path(directory).absolute()
  mgr = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler(),
                     "checksums": ocp.JsonCheckpointHandler()})
  steps = sorted(mgr.all_steps())
  if not steps:
    raise FileNotFoundError(f"No complete checkpoint in {directory}.")
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise FileNotFoundError(f"Step {step} is not in {directory}; available: {steps}.")
  try:
    tree = mgr.metadata(step).item_metadata["state"].tree
  except Exception as e:  # a missing or truncated metadata file
    raise CheckpointDamagedError(f"Checkpoint step {step} in {directory} does not read "
                                 f"completely (metadata: {_short(e)}); evaluate another "
                                 f"step (saved: {steps}).") from e
  sub = tree
  for i, key in enumerate(path):
    try:
      sub = sub[key]
    except (KeyError, IndexError, TypeError):
      keys = list(sub.keys()) if isinstance(sub, dict) else f"{len(sub)} entries"
      raise KeyError(f"Path {tuple(path[:i + 1])} is not in the saved state; "
                     f"at {tuple(path[:i])} there are: {keys}.") from None
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  path = tuple(path)

  def leaf_target(key_path, meta):
    keys = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in key_path)
    if keys[:len(path)] != path:
      return ocp.PLACEHOLDER  # not read from disk
    return jax.ShapeDtypeStruct(meta.shape, np.dtype(meta.dtype), sharding=sharding)

  item = jax.tree_util.tree_map_with_path(leaf_target, tree)
  try:
    restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item))))
    expected = _saved_checksums(mgr, step) if verify else None
  except Exception as e:  # orbax/tensorstore raise many types for broken files
    raise CheckpointDamagedError(f"Checkpoint step {step} in {directory} does not read "
                                 f"completely ({_short(e)}); evaluate another step "
                                 f"(saved: {steps}).") from e
  finally:
    mgr.close()
  out = restored.state
  for key in path:
    out = out[key]
  if verify:
    problem = find_damage(out, expected, prefix="/".join(str(k) for k in path))
    if problem:
      raise CheckpointDamagedError(f"Checkpoint step {step} in {directory} is damaged: "
                                   f"{problem}; evaluate another step (saved: {steps}).")
  return out
