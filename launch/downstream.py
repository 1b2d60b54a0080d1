r"""Phase two: generate a labelled set with G + the trained annotator, train a fresh segmenter.

  .venv/bin/python launch/downstream.py --config=configs/tiny.py --workdir=/tmp/gmseg_tiny
  .venv/bin/python launch/downstream.py --config=configs/faces.py --workdir=runs/faces \
      --annotator_step=latest

`--workdir` is the annotation run's directory (its `checkpoints/` hold the
annotator); everything of this phase goes to `<workdir>/downstream/`
(dataset/, checkpoints/, metrics.jsonl, grids/). A rerun reuses the generated
set and resumes training from the latest epoch. --profile_steps=10:15 writes a
jax.profiler trace of updates 11..15 to <workdir>/downstream/profile/.
Several processes (one per host): add --multihost, as for launch/annotate.py
(launch/multihost.sh starts such a job); every process generates and trains
its share, process 0 writes the set's index, metrics and grids.
"""
from absl import app, flags, logging
import jax
from ml_collections import config_flags

from gmseg import cli
from gmseg import downstream
from gmseg import profiling

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The annotation run's directory.")
_ANNOTATOR_STEP = flags.DEFINE_string("annotator_step", "best",
                                      "Annotator checkpoint: best, latest or a step number.")
_PROFILE_STEPS = flags.DEFINE_string(
    "profile_steps", "", "START:STOP: trace the updates that start with START..STOP-1 done "
    "with jax.profiler into <workdir>/downstream/profile/; empty: no trace.")
MULTIHOST = cli.MultihostFlags()  # "multihost": launch/multihost.sh can start it
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  profile_steps = profiling.parse_window(_PROFILE_STEPS.value)
  MULTIHOST.initialize()
  step = _ANNOTATOR_STEP.value
  result = downstream.run(_CONFIG.value, _WORKDIR.value,
                          annotator_step=int(step) if step.isdigit() else step,
                          profile_steps=profile_steps)
  logging.info("Downstream done: %s", result)
  if jax.process_index() == 0:
    print({k: v for k, v in result.items()})


if __name__ == "__main__":
  cli.run(main)
