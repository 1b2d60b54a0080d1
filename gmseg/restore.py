"""Restore a run's segmenter and evaluate it: for programs and notebooks.

A run's workdir (see gmseg.annotate) holds `config.json`, the annotation
phase's checkpoints in `checkpoints/` and, after phase two, the downstream
segmenter's in `downstream/checkpoints/`. Everything here reads those and
nothing else, so a notebook needs only the workdir:

  result = restore.evaluate_checkpoint(workdir, split="test", which="downstream")
  print(evaluate.format_table(result, result["class_names"]))

Evaluation is `gmseg.evaluate` (the same code the training loops call), on
the labelled split the config names, loaded by `build.split_arrays`.
Protocols: best-validation snapshot then test (`evaluate_checkpoint` with
step='best'; the best step is the one the training loop ranked by validation
FG-mIoU), and DatasetGAN's 5-fold cross-validation over the last 20
snapshots (`cross_validate`).
"""
import json
import pathlib
from typing import Callable, Optional, Union

from absl import logging
import jax
import ml_collections
import numpy as np

from gmseg import build
from gmseg import checkpoint
from gmseg import errors
from gmseg import evaluate
from gmseg import steps
from gmseg import workdir as workdir_lib
from gmseg.metric_writers import to_jsonable

WHICH = ("annotate", "downstream")


class MissingRunError(errors.UserError, FileNotFoundError):
  """The workdir has no checkpoints of the phase asked for."""
Step = Union[str, int]


def load_config(workdir, which: str = "annotate",
                step: Optional[int] = None) -> ml_collections.ConfigDict:
  """The run's config from `<workdir>/config.json` (lists come back as lists).

  With which='downstream', `<workdir>/downstream/config.json` (the config the
  downstream segmenter was trained with) when it exists. config.json is the
  config a run started with; with `step`, the changes resumes made up to that
  step (config_history.jsonl, gmseg.workdir) are applied.
  """
  path = pathlib.Path(workdir) / "config.json"
  if which == "downstream" and (pathlib.Path(workdir) / "downstream" / "config.json").is_file():
    path = pathlib.Path(workdir) / "downstream" / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing: {workdir} is not a gmseg run directory "
                            "(the training programs write config.json there first).")
  config = json.loads(path.read_text())
  if step is not None:
    config = workdir_lib.config_at(path.parent, int(step), config)
  return ml_collections.ConfigDict(config)


def checkpoint_dir(workdir, which: str = "annotate") -> pathlib.Path:
  """`<workdir>/checkpoints` (annotate) or `<workdir>/downstream/checkpoints`."""
  if which not in WHICH:
    raise ValueError(f"which={which!r}: use 'annotate' or 'downstream'.")
  root = pathlib.Path(workdir)
  return root / "checkpoints" if which == "annotate" else root / "downstream" / "checkpoints"


def resolve_step(directory, step: Step = "best", best_key: str = "fg_miou") -> int:
  """Turns 'best' | 'latest' | N into a saved step of the checkpoints in `directory`.

  'best' is the kept step with the highest validation `best_key`; a run that
  never evaluated has none, and then the latest step is used (with a warning).
  """
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    phase = ("phase two (launch/downstream.py)" if directory.parent.name == "downstream"
             else "phase one (launch/annotate.py)")
    raise MissingRunError(f"No checkpoint directory {directory}: run {phase} with this "
                          "--workdir first, or check the --workdir path.")
  ckpt = checkpoint.Checkpointer(directory, best_key=best_key, async_save=False)
  try:
    steps_saved = ckpt.all_steps()
    if not steps_saved:
      raise FileNotFoundError(f"No complete checkpoint in {directory}; train first.")
    if isinstance(step, str) and step.lstrip("-").isdigit():
      step = int(step)
    if step == "latest":
      return steps_saved[-1]
    if step == "best":
      best = ckpt.best_step()
      if best is None:
        logging.warning("No checkpoint in %s has a %r metric; using the latest step %d.",
                        directory, best_key, steps_saved[-1])
        return steps_saved[-1]
      return best
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
      if int(step) not in steps_saved:
        raise FileNotFoundError(f"Step {step} is not saved in {directory}; available: {steps_saved}.")
      return int(step)
    raise ValueError(f"step={step!r}: use 'best', 'latest' or a saved step number.")
  finally:
    ckpt.close()


def segmenter_config(config, which: str = "annotate") -> ml_collections.ConfigDict:
  """The segmenter config of a phase.

  The downstream segmenter is `config.downstream.segmenter` when that is a
  ConfigDict, `config.segmenter` with `arch` replaced when it is an arch name
  ('unet' / 'deeplab'), and `config.segmenter` when it is ''.
  """
  if which not in WHICH:
    raise ValueError(f"which={which!r}: use 'annotate' or 'downstream'.")
  if which == "annotate":
    return config.segmenter
  choice = config.downstream.segmenter
  if isinstance(choice, (ml_collections.ConfigDict, dict)):
    return ml_collections.ConfigDict(dict(choice))
  if not choice:
    return config.segmenter
  if choice not in ("unet", "deeplab"):
    raise ValueError(f"downstream.segmenter={choice!r}: use '' (same as segmenter), 'unet', "
                     "'deeplab' or a ConfigDict shaped like config.segmenter.")
  seg = ml_collections.ConfigDict(config.segmenter.to_dict())
  seg.arch = choice
  return seg


def segmenter_module(config, which: str = "annotate"):
  """The (untrained) Flax segmenter of a phase."""
  return build.segmenter(segmenter_config(config, which), build.num_classes(config))


def predict_fn(module) -> Callable:
  """A jitted `(params, stats, images [B, H, W, 3]) -> logits [B, H, W, C]` (eval mode).

  Params are arguments, not constants, so one compile serves every snapshot.
  """
  return jax.jit(lambda params, stats, images: steps.apply_model(
      module, params, stats, images, train=False)[0])


WEIGHTS = ("auto", "trained", "ema")


def restore_segmenter(workdir, which: str = "annotate", step: Step = "best",
                      config=None, device: Optional[jax.Device] = None,
                      weights: str = "auto"):
  """Restores a phase's segmenter onto one device.

  Args:
    workdir: the run directory.
    which: 'annotate' (the segmenter trained alongside the annotator) or
      'downstream' (the fresh segmenter of phase two).
    step: 'best' (validation FG-mIoU), 'latest' or a saved step.
    config: defaults to `load_config(workdir, which)`.
    weights: 'auto' (the moving average of the weights where the run kept
      one, `supervised.train(ema=...)`; else the trained weights), 'trained'
      or 'ema' (an error where there is none).
  Returns:
    (module, params, batch_stats or {}).
  """
  if weights not in WEIGHTS:
    raise ValueError(f"weights={weights!r}; use one of {WEIGHTS}.")
  directory = checkpoint_dir(workdir, which)
  step = resolve_step(directory, step)
  config = load_config(workdir, which, step) if config is None else config
  params = None
  if weights != "trained":
    params = restore_stats(directory, ("seg_opt_state", "average"), step, device) or None
    if params is None and weights == "ema":
      raise ValueError(f"{directory} step {step} keeps no moving average of the weights "
                       "(trained without ema); use weights='trained' or 'auto'.")
  if params is None:
    params = checkpoint.restore_subtree(directory, ("seg_params",), step=step, device=device)
  stats = restore_stats(directory, ("seg_stats",), step, device)
  return segmenter_module(config, which), params, stats


def restore_stats(directory, path=("seg_stats",), step=None, device=None):
  """Like `checkpoint.restore_subtree`, for a subtree that may be empty.

  Batch statistics of GroupNorm models are `{}`, which orbax saves as nothing.
  """
  try:
    return checkpoint.restore_subtree(directory, path, step=step, device=device)
  except (KeyError, ValueError, TypeError):
    return {}


def _labelled(config, split: str, limit: int):
  data = build.eval_arrays(config, split, limit=limit)
  return data["image"], data["label"]


def evaluate_checkpoint(workdir, split: str = "test", which: str = "annotate",
                        step: Step = "best", config=None, limit: int = 0,
                        batch_size: Optional[int] = None) -> dict:
  """Scores one checkpoint on a labelled split (best-validation protocol with step='best').

  Args:
    split: split of `config.data.dataset`.
    limit: first N images by id (0 = all).
    batch_size: default `config.train.eval_batch`.
  Returns:
    JSON-serialisable dict: pacc, miou, fg_miou, iou [C], confusion [C, C],
    class_names, which, step, split, num_images.
  """
  directory = checkpoint_dir(workdir, which)
  step = resolve_step(directory, step)
  config = load_config(workdir, which, step) if config is None else config
  module, params, stats = restore_segmenter(workdir, which, step, config)
  images, labels = _labelled(config, split, limit)
  fn = predict_fn(module)
  result = evaluate.evaluate_segmenter(
      lambda x: fn(params, stats, x), images, labels, build.num_classes(config),
      batch_size=batch_size or config.train.eval_batch)
  return to_jsonable(dict(result, class_names=list(config.class_names), which=which,
                          step=step, split=split, num_images=len(images)))


def cross_validate(workdir, split: str = "test", which: str = "downstream", last: int = 20,
                   folds: int = 5, key: str = "miou", config=None, limit: int = 0,
                   batch_size: Optional[int] = None) -> dict:
  """DatasetGAN's 5-fold CV over the last `last` saved snapshots (mean +- std of `key`).

  Per-image confusions of every snapshot on `split` (images in id order) go
  to `evaluate.five_fold_cv`: per fold, the snapshot best on the validation
  fold is scored on the rest.

  Returns:
    JSON-serialisable dict: mean, std, per_fold, steps (chosen per fold),
    snapshots (the steps used), key, which, split, num_images.
  """
  config = load_config(workdir, which) if config is None else config
  directory = checkpoint_dir(workdir, which)
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  saved = ckpt.all_steps()
  ckpt.close()
  if not saved:
    raise FileNotFoundError(f"No complete checkpoint in {directory}; train first.")
  snapshots = saved[-last:]
  if len(snapshots) < last:
    logging.warning("Cross-validation over %d snapshots (fewer than last=%d are saved in %s).",
                    len(snapshots), last, directory)
  images, labels = _labelled(config, split, limit)
  module = segmenter_module(config, which)
  fn = predict_fn(module)
  n_classes = build.num_classes(config)
  confusions = {}
  for step in snapshots:
    params = checkpoint.restore_subtree(directory, ("seg_params",), step=step)
    stats = restore_stats(directory, ("seg_stats",), step, None)
    confusions[step] = evaluate.per_image_confusions(
        lambda x, p=params, s=stats: fn(p, s, x), images, labels, n_classes,
        batch_size=batch_size or config.train.eval_batch)
  result = evaluate.five_fold_cv(confusions, last=last, folds=folds, key=key)
  return to_jsonable(dict(result, snapshots=snapshots, key=key, which=which, split=split,
                          num_images=len(images)))


def save_result(workdir, name: str, result: dict) -> pathlib.Path:
  """Writes `result` as `<workdir>/eval/<name>` (`.json` added when missing)."""
  name = name if name.endswith(".json") else name + ".json"
  path = pathlib.Path(workdir) / "eval" / name
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
  return path
