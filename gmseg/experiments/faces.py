"""The main job on real data: few-shot face parts from the pretrained DCGAN.

`run(config, workdir)` runs, in one call, on `configs/faces.py`:
  1. LAGM: annotator learning (gmseg.annotate) on the k labelled faces, then
     phase two (gmseg.downstream: synthetic set from G + A, fresh segmenter;
     with `downstream.finetune_steps` > 0 also "LAGM + labelled", that
     segmenter fine-tuned on the k faces);
  2. baselines in the same harness (same segmenter, input size, evaluation):
     'supervised' (the segmenter on the k labelled faces alone, augmented,
     for the phase-one number of segmenter updates), 'rendered' (LAGM with
     k analytically rendered faces as the labelled set instead of photos),
     and two controls that replace only where phase two's labels come from
     (gmseg.label_sources; same latents, count, filters, phase-two training,
     fine-tuning and evaluation as LAGM's phase two): 'self_training' (the
     supervised baseline labels the generated faces) and 'label_free' (the
     untrained annotator LAGM starts from labels them). With `warm_start.*`
     (beyond the paper) LAGM's annotator first distils the supervised
     baseline's labels (gmseg.warm_start);
  3. evaluation of every segmenter on the frontal test faces (`data.
     test_split` of `data.eval_dataset`) and on the validation faces
     (`data.val_split` of `data.val_dataset`: in configs/faces.py the 182
     multipose V3 faces, other people in 13 head poses): pACC, mIoU, FG-mIoU,
     per-class IoU, plus a grid of test faces with predictions each;
  4. the curve of phase one: every saved phase-one segmenter scored on both
     sets (`curve.json`), so a reader sees whether more steps would help.

Every evaluation set is prepared the same way for every row (`build.
eval_transform`), whatever a row's labelled set needs. Every model is scored
at its last step; defaults are chosen on the validation faces, never on the
frontal test faces.
"""
import json
import pathlib
from typing import Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from gmseg import annotate, build, downstream, evaluate, label_sources, restore, supervised, viz
from gmseg import warm_start

BASELINES = ("supervised", "rendered", "self_training", "label_free")
# Row names of the label-source controls (rows "<name> (downstream S)" and
# "<name> + labelled").
CONTROLS = {"self_training": "self-training", "label_free": "label-free"}
GRID_FACES = 8


def rendered_config(config) -> ml_collections.ConfigDict:
  """`config` with k rendered faces as the labelled set, still evaluated on
  the configured evaluation dataset."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.eval_dataset = build.eval_dataset(config)
  c.data.val_dataset = build.val_dataset(config)
  # The labelled rendered faces are square already ('resize'); the evaluation
  # faces stay prepared as every other row's.
  c.data.eval_transform = build.eval_transform(config)
  c.data.dataset = "rendered_faces"
  c.data.transform = "resize"
  # The teacher-based levers (warm start, anchor, label mixture) use the
  # segmenter trained on the k real faces: a rendered-labels run has none.
  c.matching.anchor = 0.0
  c.downstream.label_mix = 0.0
  if "warm_start" in c:
    c.warm_start.update(distill_steps=0, segmenter=False)
  return c


def holdout_arrays(config):
  """The labelled split's faces after the first `data.num_labelled` (which
  no row trains on), prepared as the evaluation faces; None when there are
  none or the labelled set is not from the evaluation dataset.

  In configs/faces.py: frontal02 train faces k+1..20, other people than the
  test faces' but photographed alike: a frontal validation set, so choices
  that must hold on frontal faces are made without the test faces.

  Returns:
    {'image': `[N, R, R, 3]` in [-1, 1], 'label': `[N, R, R]`, 'id': `[N]`} or None.
  """
  d = config.data
  if d.num_labelled <= 0 or d.dataset != build.eval_dataset(config):
    return None
  arrays = build.split_arrays(config, d.labelled_split, transform=build.eval_transform(config))
  if len(arrays["image"]) <= d.num_labelled:
    return None
  return {k: v[d.num_labelled:] for k, v in arrays.items()}


def eval_sets(config) -> dict:
  """{'test': frontal test faces, 'val': validation faces (when another set),
  'holdout': the labelled split's unused faces (`holdout_arrays`, when
  any)}, each {'image': `[N, R, R, 3]` in [-1, 1], 'label': `[N, R, R]`}."""
  sets = {"test": build.eval_arrays(config, config.data.test_split)}
  if not build.test_is_val(config):
    sets["val"] = build.val_arrays(config)
  holdout = holdout_arrays(config)
  if holdout is not None:
    sets["holdout"] = holdout
  return sets


def _scores(result: dict) -> dict:
  return {k: (v.tolist() if isinstance(v, np.ndarray) else float(v))
          for k, v in result.items() if k in ("pacc", "miou", "fg_miou", "iou")}


def score_params(module, params, stats, config, sets: dict) -> dict:
  """{set name: pacc, miou, fg_miou, iou} of one segmenter on each set."""
  fn = restore.predict_fn(module)
  predict = lambda x: fn(params, stats, x)
  return {name: _scores(evaluate.evaluate_segmenter(
      predict, data["image"], data["label"], build.num_classes(config),
      batch_size=config.train.eval_batch)) for name, data in sets.items()}


def curve(run_dir, config, sets: dict) -> list:
  """Every saved phase-one segmenter of `run_dir` scored on `sets`.

  Returns:
    [{'step': s, <set name>: {pacc, miou, fg_miou, iou}}, ...] by step.
  """
  from gmseg import checkpoint  # pylint: disable=g-import-not-at-top
  directory = restore.checkpoint_dir(run_dir, "annotate")
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  saved = ckpt.all_steps()
  ckpt.close()
  module = restore.segmenter_module(config, "annotate")
  out = []
  for step in saved:
    _, params, stats = restore.restore_segmenter(run_dir, "annotate", step, config)
    out.append({"step": int(step), **score_params(module, params, stats, config, sets)})
  return out


def plot_curve(points: list, class_names: Sequence[str], path, title: str = "") -> None:
  """FG-mIoU and eyes / nose / mouth IoU (x100) against phase-one step, one
  panel per evaluation set (`curve`'s output)."""
  import matplotlib  # lazy: only the report needs it
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  set_names = [k for k in ("val", "test") if points and k in points[0]]
  labels = {"val": "multipose V3 (validation)", "test": "frontal02 test"}
  fig, axes = plt.subplots(1, len(set_names), figsize=(6 * len(set_names), 4), squeeze=False)
  steps = [p["step"] for p in points]
  for ax, name in zip(axes[0], set_names):
    ax.plot(steps, [100 * p[name]["fg_miou"] for p in points], "k-o", label="FG-mIoU")
    for part in ("eyes", "nose", "mouth"):
      if part in class_names:
        i = list(class_names).index(part)
        ax.plot(steps, [100 * p[name]["iou"][i] for p in points], "--o", label=part)
    ax.set_xlabel("phase-one iteration")
    ax.set_ylabel("IoU (x100)")
    ax.set_title(f"{title}{labels[name]}")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def score(workdir, which: str, config, sets: dict, grid_path) -> dict:
  """Scores a run's latest segmenter on `sets` and writes a prediction grid
  of the test faces.

  Args:
    which: 'annotate' (phase-one or baseline S) or 'downstream'.
    sets: see `eval_sets`.
  Returns:
    pacc, miou, fg_miou, iou (list) on sets['test'], and under each other
    set's name ('val', 'holdout') the same on that set.
  """
  module, params, stats = restore.restore_segmenter(workdir, which, "latest", config)
  scores = score_params(module, params, stats, config, sets)
  test = sets["test"]
  fn = restore.predict_fn(module)
  faces = test["image"][:GRID_FACES]
  pred = np.asarray(jax.device_get(fn(params, stats, faces))).argmax(-1)
  # Rows: test face / ground truth / prediction.
  pal = viz.palette_for(config.class_names)
  viz.save_png(grid_path, viz.grid([viz.to_uint8(faces),
                                    viz.colorize(test["label"][:GRID_FACES], pal),
                                    viz.colorize(pred, pal)]))
  row = dict(scores["test"])
  row.update({name: r for name, r in scores.items() if name != "test"})
  return row


def table(rows: dict, class_names: Sequence[str], which: str = "test") -> str:
  """Markdown table: method, pACC, mIoU, FG-mIoU and per-class IoU (x100) on
  the test faces (which='test') or another set ('val', 'holdout')."""
  head = ["method", "pACC", "mIoU", "FG-mIoU", *class_names[1:]]
  out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, row in rows.items():
    r = row if which == "test" else row.get(which)
    if r is None:
      continue
    vals = [r["pacc"], r["miou"], r["fg_miou"], *r["iou"][1:]]
    out.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
  return "\n".join(out)


def snapshot_mean(config, run_dir):
  """The 'annotator_mean' label source of the last `downstream.label_snapshots`
  saved annotators (beyond the paper), or None (the latest annotator) for 1."""
  n = int(config.downstream.get("label_snapshots", 1))
  if n <= 1:
    return None
  from gmseg import checkpoint  # pylint: disable=g-import-not-at-top
  ckpt = checkpoint.Checkpointer(restore.checkpoint_dir(run_dir, "annotate"), async_save=False)
  saved = ckpt.all_steps()
  ckpt.close()
  if len(saved) < n:
    raise ValueError(f"downstream.label_snapshots={n} but {run_dir} saved {len(saved)} "
                     "annotators; save more often (train.ckpt_every) or use fewer.")
  return label_sources.annotator_mean(restore.checkpoint_dir(run_dir, "annotate"), saved[-n:],
                                      label_sources.logit_offset(config))


def _label_mix(config) -> float:
  # .get: configs saved before the key existed used the annotator alone.
  return float(config.downstream.get("label_mix", 0.0))


def lagm_source(config, run_dir, supervised_dir):
  """Phase two's label source of a LAGM run: the latest annotator (None), the
  snapshot mean (`downstream.label_snapshots`), and with `downstream.
  label_mix` = w > 0 (beyond the paper) their (1 - w) : w mixture with the
  supervised k-shot segmenter's labels."""
  source = snapshot_mean(config, run_dir)
  w = _label_mix(config)
  if w <= 0:
    return source
  if source is None:
    ckpt_dir = restore.checkpoint_dir(run_dir, "annotate")
    source = label_sources.annotator(ckpt_dir, [restore.resolve_step(ckpt_dir, "latest")],
                                     label_sources.logit_offset(config))
  teacher = label_sources.segmenter(config, supervised_dir, "latest")
  return label_sources.mixture([source, teacher], [1.0 - w, w])


def run(config, workdir, baselines: Sequence[str] = BASELINES) -> dict:
  """Runs LAGM and the baselines; returns {'rows', 'table', 'grids'}.

  Each stage resumes from its checkpoints, so rerunning after a kill
  continues where it stopped. Writes `results.md` and `results.json`.
  """
  unknown = set(baselines) - set(BASELINES)
  if unknown:
    raise ValueError(f"Unknown baselines {sorted(unknown)}; choose from {BASELINES}.")
  workdir = pathlib.Path(workdir)
  sets = eval_sets(config)
  grid_dir = workdir / "grids"
  rows, grids, curves = {}, {}, {}

  def add(name, run_dir, which, cfg):
    slug = name.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
    path = grid_dir / f"test_{slug}.png"
    rows[name] = score(run_dir, which, cfg, sets, path)
    grids[name] = str(path)
    logging.info("%s: FG-mIoU test %.4f, val %s", name, rows[name]["fg_miou"],
                 rows[name].get("val", {}).get("fg_miou"))

  def lagm(name, cfg, run_dir, with_curve=False, teacher=None):
    annotate.train_and_evaluate(cfg, run_dir, teacher=teacher)
    downstream.run(cfg, run_dir, annotator_step="latest",
                   source=lagm_source(cfg, run_dir, workdir / "supervised"))
    mixed = int(cfg.downstream.get("mix_labelled", 0)) > 0
    add(f"{name} {'+ labelled mixed ' if mixed else ''}(downstream S)", run_dir, "downstream",
        cfg)
    add(f"{name} (phase-one S)", run_dir, "annotate", cfg)
    if int(cfg.downstream.get("finetune_steps", 0)) > 0:
      add(f"{name} + labelled", downstream.finetune_dir(run_dir), "annotate", cfg)
    if with_curve:
      curves[name] = curve(run_dir, cfg, sets)

  def control(baseline, make_source):
    # Phase two of LAGM with another label source, in its own folder.
    run_dir = workdir / baseline
    downstream.run(config, run_dir, source=make_source())
    name = CONTROLS[baseline]
    add(f"{name} (downstream S)", run_dir, "downstream", config)
    if int(config.downstream.get("finetune_steps", 0)) > 0:
      add(f"{name} + labelled", downstream.finetune_dir(run_dir), "annotate", config)

  # The supervised k-shot segmenter is the warm start's teacher, the matching
  # loss's anchor (matching.anchor) and part of the label mixture (label_mix).
  needs_teacher = warm_start.wanted(config) or annotate.anchor_weight(config) > 0
  if (needs_teacher or _label_mix(config) > 0 or "supervised" in baselines
      or "self_training" in baselines):
    supervised.train(config, workdir / "supervised")  # resumes: trained once
  lagm("LAGM", config, workdir / "lagm", with_curve=True, teacher=(
      label_sources.segmenter(config, workdir / "supervised", "latest")
      if needs_teacher else None))
  if "supervised" in baselines:
    add("supervised", workdir / "supervised", "annotate", config)
  if "self_training" in baselines:
    control("self_training",
            lambda: label_sources.segmenter(config, workdir / "supervised", "latest"))
  if "label_free" in baselines:
    control("label_free", lambda: label_sources.label_free(config, build.generator(config)))
  if "rendered" in baselines:
    lagm("rendered labels", rendered_config(config), workdir / "rendered")

  text = f"Test faces ({build.eval_dataset(config)} {config.data.test_split}):\n\n"
  text += table(rows, config.class_names)
  if "val" in sets:
    text += (f"\n\nValidation faces ({build.val_dataset(config)} {config.data.val_split}):"
             "\n\n" + table(rows, config.class_names, "val"))
  if "holdout" in sets:
    text += (f"\n\nHeld-out labelled-split faces ({config.data.dataset} "
             f"{config.data.labelled_split} after the first {config.data.num_labelled}; "
             "frontal validation):\n\n" + table(rows, config.class_names, "holdout"))
  (workdir / "results.md").write_text(text + "\n")
  (workdir / "curve.json").write_text(json.dumps(curves, indent=1))
  for name, points in curves.items():
    if points:
      plot_curve(points, config.class_names, workdir / "curve.png",
                 f"{name}, k={config.data.num_labelled}: phase-one S, ")
  (workdir / "results.json").write_text(json.dumps(
      {"rows": rows, "grids": grids, "num_labelled": config.data.num_labelled,
       "class_names": list(config.class_names),
       "sets": {name: len(data["image"]) for name, data in sets.items()}}, indent=1))
  return {"rows": rows, "table": text, "grids": grids, "curves": curves}
