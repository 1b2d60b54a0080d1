"""How long to fine-tune: "+ labelled" rows scored along the fine-tuning.

`run(config, cell, lengths)` fine-tunes the downstream segmenter of each of
a faces cell's phase-two runs (LAGM and the label-source controls: the
folders `faces.run` wrote) on the k labelled faces, with
`downstream.finetune` itself, in a folder of its own
(`<run>/downstream/finetune_curve`), stopping at every length in `lengths`
to score the segmenter on the cell's evaluation sets (`faces.eval_sets`:
frontal test, V3, held-out frontal faces). Each stop resumes the previous
one (`supervised.train` continues from its checkpoint with the same batches
and augmentation), so the scores are those of one run read along the way,
and its score at `downstream.finetune_steps` is the cell's "+ labelled" row.

Writes `<cell>/finetune_curve.json`: {row: {length: {set: scores}}}.
"""
import json
import pathlib
from typing import Sequence

from absl import logging

from gmseg import downstream, restore
from gmseg.experiments import benchmark, faces

# Phase-two folders of a faces cell and their "+ labelled" row names.
RUNS = {"lagm": "LAGM + labelled", "self_training": "self-training + labelled",
        "label_free": "label-free + labelled"}
FOLDER = "finetune_curve"


def run(config, cell, lengths: Sequence[int]) -> dict:
  """Scores every "+ labelled" row of `cell` after each of `lengths` updates.

  Args:
    config: the cell's config (as `benchmark.faces_config` builds it).
    cell: a faces cell folder (`faces.run`'s workdir).
    lengths: increasing numbers of fine-tuning updates.
  Returns:
    {row name: {length: {set name: {pacc, miou, fg_miou, iou}}}} for the
    phase-two runs the cell has.
  """
  lengths = sorted(int(n) for n in lengths)
  if not lengths or lengths[0] <= 0:
    raise ValueError(f"lengths={lengths}: give positive numbers of updates.")
  cell = pathlib.Path(cell)
  sets = faces.eval_sets(config)
  module = restore.segmenter_module(config, "annotate")
  out = {}
  for folder, row in RUNS.items():
    run_dir = cell / folder
    if not (downstream.directory(run_dir) / "checkpoints").is_dir():
      continue
    work = downstream.directory(run_dir) / FOLDER
    out[row] = {}
    for n in lengths:
      downstream.finetune(config, run_dir, num_steps=n, out_dir=work)
      _, p, s = restore.restore_segmenter(work, "annotate", "latest", config)
      out[row][n] = faces.score_params(module, p, s, config, sets)
      logging.info("%s after %d updates: FG-mIoU %s", row, n,
                   {k: round(v["fg_miou"], 4) for k, v in out[row][n].items()})
  (cell / "finetune_curve.json").write_text(json.dumps(out, indent=1))
  return out


def markdown(curves: dict, set_name: str = "val") -> str:
  """Rows = (cell, row), columns = lengths; FG-mIoU x100 on `set_name`.

  Args:
    curves: {cell name: `run`'s output}.
  """
  curves = {cell: {row: {int(n): v for n, v in per_n.items()} for row, per_n in rows.items()}
            for cell, rows in curves.items()}  # json keys are strings
  lengths = sorted({n for c in curves.values() for r in c.values() for n in r})
  lines = ["| cell | row | " + " | ".join(f"{n}" for n in lengths) + " |",
           "|---|---|" + "---|" * len(lengths)]
  for cell, rows in curves.items():
    for row, per_n in rows.items():
      cells = [f"{100 * per_n[n][set_name]['fg_miou']:.1f}"
               if set_name in per_n.get(n, {}) else "–"
               for n in lengths]
      lines.append(f"| {cell} | {row} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def sweep(workdir, configs: dict, lengths: Sequence[int]) -> str:
  """`run` on every finished cell of a benchmark folder; writes and returns
  `<workdir>/finetune_curve.md` (FG-mIoU tables on V3, held-out frontal and
  frontal test faces).

  Args:
    configs: {(k, seed): config} of the cells (`benchmark.faces_config`).
  """
  workdir = pathlib.Path(workdir)
  curves = {}
  for (k, seed), config in configs.items():
    cell = benchmark.run_dir(workdir, k, seed)
    if (cell / "results.json").is_file():
      curves[cell.name] = run(config, cell, lengths)
  text = ""
  for set_name, title in (("val", "V3 validation"), ("holdout", "held-out frontal02 train"),
                          ("test", "frontal02 test")):
    text += (f"## FG-mIoU (x100) of the '+ labelled' rows on the {title} faces against "
             f"fine-tuning updates\n\n{markdown(curves, set_name)}\n\n")
  (workdir / "finetune_curve.md").write_text(text)
  return text
