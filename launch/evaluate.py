r"""Scores a run's segmenter on a labelled split; prints a table, writes JSON.

  .venv/bin/python launch/evaluate.py --workdir=/tmp/gmseg_tiny --which=annotate --step=best
  .venv/bin/python launch/evaluate.py --workdir=runs/car --which=downstream --protocol=cv5

--protocol=single scores one checkpoint (`--step` best = the step with the
best validation FG-mIoU, then test: the paper's real-image protocol);
--protocol=cv5 runs DatasetGAN's 5-fold cross-validation over the last
`--last` snapshots and reports mean +- std of `--key`. The JSON goes to
`<workdir>/eval/<out>` (default name from the arguments); an `--out` with a
folder in it is used as given.
"""
import json
import os

from absl import app, flags

from gmseg import cli
from gmseg import evaluate
from gmseg import restore

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory.")
_SPLIT = flags.DEFINE_string("split", "test", "Split of the config's labelled dataset.")
_WHICH = flags.DEFINE_enum("which", "annotate", list(restore.WHICH),
                           "Which phase's segmenter.")
_STEP = flags.DEFINE_string("step", "best", "best, latest or a saved step (single protocol).")
_PROTOCOL = flags.DEFINE_enum("protocol", "single", ["single", "cv5"], "Evaluation protocol.")
_LAST = flags.DEFINE_integer("last", 20, "cv5: number of latest snapshots.")
_KEY = flags.DEFINE_enum("key", "miou", ["miou", "fg_miou", "pacc"], "cv5: the score.")
_LIMIT = flags.DEFINE_integer("limit", 0, "First N images of the split (0 = all).")
_OUT = flags.DEFINE_string("out", None, "JSON file name (default: from the arguments).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  workdir, step = _WORKDIR.value, _STEP.value
  step = int(step) if step.isdigit() else step
  if _PROTOCOL.value == "single":
    result = restore.evaluate_checkpoint(workdir, split=_SPLIT.value, which=_WHICH.value,
                                         step=step, limit=_LIMIT.value)
    print(f"{result['which']} step {result['step']} on {result['split']} "
          f"({result['num_images']} images):")
    print(evaluate.format_table(result, result["class_names"]))
    name = _OUT.value or f"{_WHICH.value}_{_SPLIT.value}_{_STEP.value}.json"
  else:
    result = restore.cross_validate(workdir, split=_SPLIT.value, which=_WHICH.value,
                                    last=_LAST.value, key=_KEY.value, limit=_LIMIT.value)
    print(f"{result['which']} 5-fold CV on {result['split']} over snapshots "
          f"{result['snapshots']}: {_KEY.value} {100 * result['mean']:.2f} +- "
          f"{100 * result['std']:.2f} (folds: "
          f"{', '.join(f'{100 * v:.2f}' for v in result['per_fold'])})")
    name = _OUT.value or f"{_WHICH.value}_{_SPLIT.value}_cv5.json"
  if os.path.dirname(name):
    os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
    with open(name, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
    path = name
  else:
    path = restore.save_result(workdir, name, result)
  print(f"Wrote {path}")


if __name__ == "__main__":
  cli.run(main)
