"""Where on V3 a faces row wins: FG-mIoU per head pose of the multipose faces.

V3's ids are '<pose>/<name>' (fasseg/multipose01: 13 poses from -90 to +90
degrees, 14 faces each), so a model's V3 score splits by pose. `cell_scores`
scores the "+ labelled" rows and the supervised baseline of a faces cell
(`faces.run`'s folder) pose by pose; `markdown` averages cells into a table.
"""
import pathlib
from typing import Sequence

import numpy as np

from gmseg import build, downstream, evaluate, restore
from gmseg.experiments import finetune_curve

# Folders of a faces cell and their row names: the fine-tuned phase-two runs
# (their models in `downstream.finetune_dir`) and the supervised baseline.
ROWS = {**finetune_curve.RUNS, "supervised": "supervised"}


def pose_of(ids: Sequence) -> np.ndarray:
  """The pose folder of each V3 id ('+30/personne...' -> '+30'), `[N]` str."""
  out = []
  for i in ids:
    i = i.decode() if isinstance(i, bytes) else str(i)
    if "/" not in i:
      raise ValueError(f"id {i!r} has no '<pose>/' folder: not a fasseg/multipose01 face.")
    out.append(i.split("/")[0])
  return np.array(out)


def _order(pose: str) -> int:
  return int(pose.replace("+", ""))


def scores_by_pose(predict, data: dict, num_classes: int, batch_size: int = 25) -> dict:
  """{pose: FG-mIoU} of `predict` (`[B, H, W, 3]` -> logits) on `data`
  ({'image', 'label', 'id'}), each pose's confusion matrix pooled over its faces."""
  poses = pose_of(data["id"])
  out = {}
  for pose in sorted(set(poses), key=_order):
    sel = poses == pose
    r = evaluate.evaluate_segmenter(predict, data["image"][sel], data["label"][sel],
                                    num_classes, batch_size=batch_size)
    out[pose] = float(r["fg_miou"])
  return out


def cell_scores(config, cell) -> dict:
  """{row name: {pose: FG-mIoU}} of a faces cell's fine-tuned rows and its
  supervised baseline on the config's validation faces (V3)."""
  cell = pathlib.Path(cell)
  data = build.val_arrays(config)
  fn = restore.predict_fn(restore.segmenter_module(config, "annotate"))
  out = {}
  for folder, row in ROWS.items():
    run = cell / folder
    run = run if folder == "supervised" else downstream.finetune_dir(run)
    if not (run / "checkpoints").is_dir():
      continue
    _, params, stats = restore.restore_segmenter(run, "annotate", "latest", config)
    out[row] = scores_by_pose(lambda x: fn(params, stats, x), data, build.num_classes(config),
                              config.train.eval_batch)
  return out


def sweep(workdir, configs: dict) -> str:
  """`cell_scores` of every finished cell of a benchmark folder, averaged
  over its seeds per k; writes and returns `<workdir>/pose_scores.md`.

  Args:
    configs: {(k, seed): config} of the cells (`benchmark.faces_config`).
  """
  from gmseg.experiments import benchmark  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  cells = {}
  for (k, seed), config in sorted(configs.items()):
    cell = benchmark.run_dir(workdir, k, seed)
    if (cell / "results.json").is_file():
      cells.setdefault(f"{workdir.name} k={k}", []).append(cell_scores(config, cell))
  seeds = sorted({s for _, s in configs})
  text = (f"## FG-mIoU (x100) on the V3 faces by head pose, mean over seeds {seeds}\n\n"
          + markdown(cells) + "\n")
  (workdir / "pose_scores.md").write_text(text)
  return text


def markdown(cells: dict) -> str:
  """Rows = (folder, row), columns = poses: FG-mIoU (x100), mean over the cells.

  Args:
    cells: {label: [cell_scores output, ...]} (e.g. one label per benchmark
      folder, one output per seed).
  """
  poses = sorted({p for outs in cells.values() for o in outs for r in o.values() for p in r},
                 key=_order)
  lines = ["| run | row | " + " | ".join(poses) + " | mean of poses |",
           "|---|---|" + "---|" * (len(poses) + 1)]
  for label, outs in cells.items():
    for row in ROWS.values():
      per = [o[row] for o in outs if row in o]
      if not per:
        continue
      means = [100 * np.mean([r[p] for r in per]) for p in poses]
      lines.append(f"| {label} | {row} | " + " | ".join(f"{m:.0f}" for m in means)
                   + f" | {np.mean(means):.1f} |")
  return "\n".join(lines)
