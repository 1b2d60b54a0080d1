r"""Phase one: trains the annotator (and a segmenter) by gradient matching.

  .venv/bin/python launch/annotate.py --config=configs/tiny.py --workdir=/tmp/gmseg_tiny
  .venv/bin/python launch/annotate.py --config=configs/tiny.py:steps=100 \
      --config.train.eval_every=20 --workdir=/tmp/gmseg_tiny100

Rerunning the same command resumes from the workdir's latest checkpoint.
Several processes (one per host): add --multihost; on a managed cluster
(SLURM, Open MPI, TPU pods) the rest is detected, elsewhere also pass
--coordinator_address=host:port --num_processes=N --process_id=i
(launch/multihost.sh starts such a job on a TPU slice or on local GPUs).
--profile_steps=10:15 writes a jax.profiler trace of iterations 10..14 to
<workdir>/profile/ (TensorBoard's profile tab).
"""
from absl import app, flags
import jax
from ml_collections import config_flags

from gmseg import annotate
from gmseg import cli
from gmseg import profiling

CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (resumed when it has a checkpoint).")
MULTIHOST = cli.MultihostFlags()  # "multihost": launch/multihost.sh can start it
PROFILE_STEPS = flags.DEFINE_string(
    "profile_steps", "", "START:STOP: trace iterations START..STOP-1 with jax.profiler "
    "into <workdir>/profile/ (TensorBoard's profile tab); empty: no trace.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  profile_steps = profiling.parse_window(PROFILE_STEPS.value)
  MULTIHOST.initialize()
  result = annotate.train_and_evaluate(CONFIG.value, WORKDIR.value, profile_steps=profile_steps)
  if jax.process_index() == 0:
    print(result["table"], flush=True)


if __name__ == "__main__":
  cli.run(main)
