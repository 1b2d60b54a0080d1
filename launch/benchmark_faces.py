r"""Benchmark of the faces job: scores vs k over seeds, and step timing.

Every model of every row (LAGM phase-one and downstream S, "LAGM + labelled"
when downstream.finetune_steps > 0, supervised, the self-training and
label-free controls (LAGM's phase two with the supervised model's or the
untrained annotator's labels), rendered labels) is scored on the 50 FASSEG
frontal02 test faces and on the 182 multipose V3 validation faces (square
crop, 64x64, prepared alike for every row), with per-part IoU; benchmark.md
states issue 18's goals (gaps to the controls) per k and seed. Choose
settings on V3 (validation), never on the frontal test faces.

The README's sweep (resumes: finished runs are skipped, unfinished ones
continue from their checkpoints; add k and seeds later):

  .venv/bin/python launch/benchmark_faces.py --workdir=runs/sweep --ks=2 --seeds=0,1,2 \
      --steps=600 --downstream_images=2000 --downstream_epochs=3 \
      --baselines=supervised,self_training,label_free \
      --override=downstream.finetune_steps=600 --override=train.eval_every=100 \
      --override=train.ckpt_every=100 --override=train.grid_every=300 \
      --manual_dir=../shared/data/fasseg

Smoke test:

  .venv/bin/python launch/benchmark_faces.py --workdir=/tmp/bench --ks=1 --seeds=0 \
      --steps=4 --downstream_images=16 --override=downstream.epochs=1 \
      --override=train.eval_every=4 --timing --timing_reps=3 \
      --manual_dir=../shared/data/fasseg

Writes <workdir>/benchmark.md (command, machine, date, FG-mIoU tables for the
frontal test and V3 faces, eyes / nose / mouth IoU, timing), benchmark.json,
fg_miou_vs_k.png, timing.md/json and one k{k}_s{seed}/ run folder per
(k, seed) (results.md with both sets' per-class tables, curve.json/png: the
phase-one segmenter at every saved step). `--ks=` (empty) with --timing
times only.
"""
import pathlib

from absl import app, flags

from gmseg import cli
from gmseg import workdir
from gmseg.experiments import benchmark, config_files, faces, finetune_curve, pose_scores

WORKDIR = flags.DEFINE_string("workdir", None, "Benchmark folder (runs and reports).")
CONFIG_FILE = flags.DEFINE_string("config_file", str(config_files.DEFAULT_CONFIG),
                                  "Config file whose get_config(num,seed,steps,...) is run.")
KS = flags.DEFINE_list("ks", [str(k) for k in benchmark.KS], "Labelled-face counts k.")
SEEDS = flags.DEFINE_list("seeds", [str(s) for s in benchmark.SEEDS], "Seeds per k.")
STEPS = flags.DEFINE_integer("steps", 1_000, "Annotator-learning iterations (A+S).")
DOWNSTREAM_IMAGES = flags.DEFINE_integer("downstream_images", 1_000,
                                         "Synthetic images for phase two.")
DOWNSTREAM_EPOCHS = flags.DEFINE_integer("downstream_epochs", None,
                                         "Phase-two epochs (default: the config's).")
OVERRIDE = flags.DEFINE_multi_string(
    "override", [], "Config override key=value (repeatable), e.g. ann_optim.name=adam.")
MANUAL_DIR = flags.DEFINE_string("manual_dir", "",
                                 "Folder holding FASSEG's V2/ and V3/ (offline).")
DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir ('' = $TFDS_DATA_DIR or "
                               "~/tensorflow_datasets).")
BASELINES = flags.DEFINE_list("baselines", list(faces.BASELINES),
                              f"Baselines to run, from {faces.BASELINES}.")
RESCORE = flags.DEFINE_bool("rescore", False,
                            "Also pass finished runs through the harness again: their stages "
                            "resume at the end, so only the evaluation reruns (new sets).")
ROWS_FROM = flags.DEFINE_string(
    "rows_from", None, "A benchmark folder whose cells supply the rows this one's lack (same "
    "k and seed): a lever run of LAGM only, reported beside the sweep's controls.")
FINETUNE_CURVE = flags.DEFINE_list(
    "finetune_curve", [], "After the sweep, score every '+ labelled' row after these numbers "
    "of fine-tuning updates (gmseg.experiments.finetune_curve), e.g. 100,200,300,600.")
POSE_SCORES = flags.DEFINE_bool(
    "pose_scores", False, "After the sweep, score the '+ labelled' rows and the supervised "
    "baseline of every cell on V3 pose by pose (gmseg.experiments.pose_scores).")
TIMING = flags.DEFINE_bool("timing", False, "First time the A, S and supervised steps.")
TIMING_REPS = flags.DEFINE_integer("timing_reps", 10, "Timed rounds per step.")
TIMING_K = flags.DEFINE_integer("timing_k", 5, "Labelled faces loaded for the timing run.")
flags.mark_flags_as_required(["workdir"])


def _ints(name, values):
  try:
    return [int(v) for v in values]
  except ValueError:
    raise app.UsageError(f"--{name}={','.join(values)}: expected integers.") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  workdir.check(WORKDIR.value)  # before the datasets and models load
  ks, seeds = _ints("ks", KS.value), _ints("seeds", SEEDS.value)
  common = dict(steps=STEPS.value, downstream_images=DOWNSTREAM_IMAGES.value,
                downstream_epochs=DOWNSTREAM_EPOCHS.value, overrides=OVERRIDE.value,
                manual_dir=MANUAL_DIR.value, data_dir=DATA_DIR.value,
                config_file=CONFIG_FILE.value)
  if TIMING.value:
    config = benchmark.faces_config(TIMING_K.value, seeds[0] if seeds else 0, **common)
    result = benchmark.timing(config, WORKDIR.value, reps=TIMING_REPS.value)
    if ks and seeds:  # the sweep takes long: show the timing now
      print(benchmark.timing_markdown(result), "\n", flush=True)
  if ks and seeds:
    benchmark.sweep(WORKDIR.value, ks, seeds, baselines=BASELINES.value,
                    rescore=RESCORE.value, rows_from=ROWS_FROM.value, **common)
  else:  # timing only: the report holds the header and the timing table
    benchmark.write_report(WORKDIR.value, None, benchmark.header())
  print((pathlib.Path(WORKDIR.value) / "benchmark.md").read_text())
  if FINETUNE_CURVE.value or POSE_SCORES.value:
    configs = {(k, s): benchmark.faces_config(k, s, **common) for k in ks for s in seeds}
  if FINETUNE_CURVE.value:
    print(finetune_curve.sweep(WORKDIR.value, configs, _ints("finetune_curve",
                                                             FINETUNE_CURVE.value)))
  if POSE_SCORES.value:
    print(pose_scores.sweep(WORKDIR.value, configs))


if __name__ == "__main__":
  cli.run(main)
