"""Checkpoints: orbax save / restore / automatic resume, behind one small class.

Each step directory holds two items:
  state: the train-state pytree (StandardSave), restored against an abstract
         target so flax.struct dataclasses and optax namedtuples come back
         with their exact structure (without a target orbax returns dicts and
         lists).
  meta:  anything JSON (config dict, metrics, data-set sizes).

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
from typing import Any, Optional, Sequence

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from gmseg.metric_writers import to_jsonable

PyTree = Any
_policies = ocp.checkpoint_managers


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
    self._mgr = ocp.CheckpointManager(self.directory, options=options)

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
        meta=ocp.args.JsonSave(to_jsonable(dict(meta or {}))))
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

  def restore(self, target: PyTree, step: Optional[int] = None
              ) -> tuple[PyTree, dict]:
    """Restores (state, meta) at `step` (default: latest).

    Args:
      target: the state, or its abstract version (`jax.eval_shape` /
        ShapeDtypeStructs); it fixes tree structure, dtypes and shardings.
    """
    step = self._resolve(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    out = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def maybe_restore(self, target: PyTree) -> tuple[PyTree, Optional[dict]]:
    """Automatic resume: the latest checkpoint if any, else (target, None)."""
    if self.latest_step() is None:
      return target, None
    state, meta = self.restore(target)
    logging.info("Resumed from %s step %d.", self.directory, self.latest_step())
    return state, meta

  def restore_meta(self, step: Optional[int] = None) -> dict:
    """Restores only the JSON `meta` item at `step` (default: latest)."""
    step = self._resolve(step)
    return self._mgr.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta


def restore_subtree(directory, path: Sequence[Any] = ("seg_params",),
                    step: Optional[int] = None,
                    device: Optional[jax.Device] = None) -> PyTree:
  """Restores one sub-pytree of a saved state onto one device, without a target.

  For notebooks: `restore_subtree(ckpt_dir, ("seg_params",))` gives the
  segmenter parameters as a nested dict of arrays; nothing else is read.

  Args:
    directory: the Checkpointer's directory.
    path: keys from the state root: dataclass field / dict key names, and
      integer positions inside tuples (optax states), e.g. ("opt_state", 0).
    step: default latest.
    device: default `jax.devices()[0]`.
  """
  directory = pathlib.Path(directory).absolute()
  mgr = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(create=False),
      item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()})
  steps = sorted(mgr.all_steps())
  if not steps:
    raise FileNotFoundError(f"No complete checkpoint in {directory}.")
  step = steps[-1] if step is None else int(step)
  if step not in steps:
    raise FileNotFoundError(f"Step {step} is not in {directory}; available: {steps}.")
  tree = mgr.metadata(step).item_metadata["state"].tree
  sub = tree
  for i, key in enumerate(path):
    try:
      sub = sub[key]
    except (KeyError, IndexError, TypeError):
      keys = list(sub.keys()) if isinstance(sub, dict) else f"{len(sub)} entries"
      raise KeyError(f"Path {tuple(path[:i + 1])} is not in the saved state; "
                     f"at {tuple(path[:i])} there are: {keys}.") from None
  sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
  path = tuple(path)

  def leaf_target(key_path, meta):
    keys = tuple(getattr(k, "key", getattr(k, "idx", None)) for k in key_path)
    if keys[:len(path)] != path:
      return ocp.PLACEHOLDER  # not read from disk
    return jax.ShapeDtypeStruct(meta.shape, np.dtype(meta.dtype), sharding=sharding)

  item = jax.tree_util.tree_map_with_path(leaf_target, tree)
  restored = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item))))
  mgr.close()
  out = restored.state
  for key in path:
    out = out[key]
  return out
