"""The main job on real data: few-shot face parts from the pretrained DCGAN.

`run(config, workdir)` runs, in one call, on `configs/faces.py`:
  1. LAGM: annotator learning (gmseg.annotate) on the k labelled faces, then
     phase two (gmseg.downstream: synthetic set from G + A, fresh segmenter);
  2. baselines in the same harness (same segmenter, input size, evaluation):
     'supervised' (the segmenter on the k labelled faces alone, augmented,
     for the phase-one number of segmenter updates) and 'rendered' (LAGM with
     k analytically rendered faces as the labelled set instead of photos);
  3. evaluation of every segmenter on the test faces: pACC, mIoU, FG-mIoU,
     per-class IoU, plus a grid of test faces with predictions each.

Every model is scored at its last step: FASSEG has no validation split, and
choosing snapshots on the test faces would flatter every row.
"""
import json
import pathlib
from typing import Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from gmseg import annotate, build, downstream, evaluate, restore, supervised, viz

BASELINES = ("supervised", "rendered")
GRID_FACES = 8


def rendered_config(config) -> ml_collections.ConfigDict:
  """`config` with k rendered faces as the labelled set, still evaluated on
  the configured evaluation dataset."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.data.eval_dataset = build.eval_dataset(config)
  c.data.dataset = "rendered_faces"
  c.data.transform = "resize"  # rendered faces are square already
  return c


def score(workdir, which: str, config, test: dict, grid_path) -> dict:
  """Scores a run's latest segmenter on `test` and writes a prediction grid.

  Args:
    which: 'annotate' (phase-one or baseline S) or 'downstream'.
    test: {'image': `[N, R, R, 3]` in [-1, 1], 'label': `[N, R, R]`}.
  Returns:
    pacc, miou, fg_miou, iou (list) and the step scored.
  """
  module, params, stats = restore.restore_segmenter(workdir, which, "latest", config)
  fn = restore.predict_fn(module)
  predict = lambda x: fn(params, stats, x)
  result = evaluate.evaluate_segmenter(predict, test["image"], test["label"],
                                       build.num_classes(config),
                                       batch_size=config.train.eval_batch)
  faces = test["image"][:GRID_FACES]
  pred = np.asarray(jax.device_get(predict(faces))).argmax(-1)
  # Rows: test face / ground truth / prediction.
  pal = viz.palette_for(config.class_names)
  viz.save_png(grid_path, viz.grid([viz.to_uint8(faces),
                                    viz.colorize(test["label"][:GRID_FACES], pal),
                                    viz.colorize(pred, pal)]))
  return {k: (v.tolist() if isinstance(v, np.ndarray) else float(v))
          for k, v in result.items() if k in ("pacc", "miou", "fg_miou", "iou")}


def table(rows: dict, class_names: Sequence[str]) -> str:
  """Markdown table: method, pACC, mIoU, FG-mIoU and per-class IoU (x100)."""
  head = ["method", "pACC", "mIoU", "FG-mIoU", *class_names[1:]]
  out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, r in rows.items():
    vals = [r["pacc"], r["miou"], r["fg_miou"], *r["iou"][1:]]
    out.append(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
  return "\n".join(out)


def run(config, workdir, baselines: Sequence[str] = BASELINES) -> dict:
  """Runs LAGM and the baselines; returns {'rows', 'table', 'grids'}.

  Each stage resumes from its checkpoints, so rerunning after a kill
  continues where it stopped. Writes `results.md` and `results.json`.
  """
  unknown = set(baselines) - set(BASELINES)
  if unknown:
    raise ValueError(f"Unknown baselines {sorted(unknown)}; choose from {BASELINES}.")
  workdir = pathlib.Path(workdir)
  test = build.eval_arrays(config, config.data.test_split)
  grid_dir = workdir / "grids"
  rows, grids = {}, {}

  def add(name, run_dir, which, cfg):
    path = grid_dir / f"test_{name.replace(' ', '_').replace('(', '').replace(')', '')}.png"
    rows[name] = score(run_dir, which, cfg, test, path)
    grids[name] = str(path)
    logging.info("%s: FG-mIoU %.4f", name, rows[name]["fg_miou"])

  def lagm(name, cfg, run_dir):
    annotate.train_and_evaluate(cfg, run_dir)
    downstream.run(cfg, run_dir, annotator_step="latest")
    add(f"{name} (downstream S)", run_dir, "downstream", cfg)
    add(f"{name} (phase-one S)", run_dir, "annotate", cfg)

  lagm("LAGM", config, workdir / "lagm")
  if "supervised" in baselines:
    supervised.train(config, workdir / "supervised")
    add("supervised", workdir / "supervised", "annotate", config)
  if "rendered" in baselines:
    lagm("rendered labels", rendered_config(config), workdir / "rendered")

  text = table(rows, config.class_names)
  (workdir / "results.md").write_text(text + "\n")
  (workdir / "results.json").write_text(json.dumps(
      {"rows": rows, "grids": grids, "num_labelled": config.data.num_labelled,
       "class_names": list(config.class_names)}, indent=1))
  return {"rows": rows, "table": text, "grids": grids}
