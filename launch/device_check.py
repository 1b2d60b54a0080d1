r"""Device check: N devices == 1 device, step times and device memory at the
paper256 config (StyleGAN2 256 + UNet), float32 and bfloat16; one JSON line.

  python launch/device_check.py            # on the GPU/TPU host; < 8 min on one GPU
  python launch/device_check.py --small    # tiny setup, seconds to minutes on CPU
  XLA_FLAGS=--xla_force_host_platform_device_count=2 \
      python launch/device_check.py --small  # 2 fake CPU devices

Prints {"backend", "device_kind", "devices", "equivalence": {"phase_one_iteration",
"phase_two_step": {"update_rel_err", "metrics_rel_err", "ok"}, "tolerance"},
"timing": [{"batch", "compute_dtype", "annotator": {"s", "compile_s",
"xla_peak_mb", "finite"}, ..., "device_peak_mb"}], "ok", "wall_s"}; exits 1
when the equivalence check fails. See gmseg/experiments/device_check.py.
"""
import json
import sys

from absl import app, flags

from gmseg import cli
from gmseg.experiments import device_check

SMALL = flags.DEFINE_bool("small", False, "Tiny setup (CPU, tests) instead of paper256.")
BATCHES = flags.DEFINE_list("batches", ["2", "8"], "Global batch sizes to time.")
DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "compute_dtype values to time.")
PROGRAMS = flags.DEFINE_list("programs", list(device_check.PROGRAMS), "Steps to time.")
REPS = flags.DEFINE_integer("reps", 3, "Timed runs per step (after one warm-up run).")
CHECKS = flags.DEFINE_list("checks", list(device_check.CHECKS),
                           "Steps compared between N devices and one.")
BUDGET = flags.DEFINE_float("budget_s", 420.0,
                            "Timing setups starting after this many seconds are skipped.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  result = device_check.run(SMALL.value, [int(b) for b in BATCHES.value], DTYPES.value,
                            PROGRAMS.value, REPS.value, BUDGET.value, CHECKS.value)
  print(json.dumps(result))
  if not result["ok"]:
    sys.exit(1)


if __name__ == "__main__":
  cli.run(main)  # also turns on the persistent compilation cache
