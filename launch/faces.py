r"""The main job: few-shot face parts (DCGAN + FASSEG), LAGM and baselines.

  .venv/bin/python launch/faces.py --config=configs/faces.py:num=2 --workdir=runs/faces_k2
  # offline: FASSEG from a local folder holding V2/ and V3/
  .venv/bin/python launch/faces.py --config=configs/faces.py:num=2 --workdir=runs/faces_k2 \
      --manual_dir=../shared/data/fasseg

Runs annotate -> downstream (-> "LAGM + labelled" with
--config.downstream.finetune_steps=N) -> evaluation on the 50 FASSEG
frontal02 test faces and the 182 multipose V3 validation faces, plus the
baselines (--baselines=supervised,rendered), prints both result tables and
where the grids are. Rerunning the same command resumes.
"""
from absl import app, flags
from ml_collections import config_flags

from gmseg import cli
from gmseg import workdir
from gmseg.experiments import faces

CONFIG = config_flags.DEFINE_config_file("config", "configs/faces.py:num=2",
                                         "Experiment config file.", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                 "Folder holding FASSEG's V2/ for offline runs.")
BASELINES = flags.DEFINE_list("baselines", list(faces.BASELINES),
                              f"Baselines to run, from {faces.BASELINES}.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  config = CONFIG.value
  if MANUAL_DIR.value:
    config.data.manual_dir = MANUAL_DIR.value
  # One run per workdir, checked before the datasets and models load.
  with workdir.hold(WORKDIR.value, multihost=False):
    result = faces.run(config, WORKDIR.value, baselines=BASELINES.value)
  print(f"\n{config.data.num_labelled} labelled faces, scores x100.\n")
  print(result["table"])
  print("\nGrids (test face / truth / prediction):")
  for name, path in result["grids"].items():
    print(f"  {name}: {path}")
  print(f"Training grids: {WORKDIR.value}/*/grids/, results: {WORKDIR.value}/results.md")


if __name__ == "__main__":
  cli.run(main)
