r"""How far compute_dtype='bfloat16' moves the method from float32: one
annotator step and N loop iterations from the same start; one JSON object.

  .venv/bin/python launch/precision_report.py                      # configs/tiny.py, 100 iterations
  .venv/bin/python launch/precision_report.py --config=configs/faces.py --arg=num=2

Reports the cosine of the matched gradients (g_real, g_syn) and of the
annotator's gradient, the matching losses, and the annotator's soft labels
(mean / max |difference|, argmax agreement), after one step and after the
iterations. See gmseg/experiments/precision.py.
"""
import json
import pathlib

from absl import app, flags

from gmseg import build
from gmseg import cli
from gmseg.experiments import config_files
from gmseg.experiments import precision
from gmseg.experiments import step_timing

CONFIG = flags.DEFINE_string(
    "config", str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny.py"),
    "Config file.")
ARG = flags.DEFINE_string("arg", "", "The config file's argument string (k=v,...).")
ITERATIONS = flags.DEFINE_integer("iterations", 100, "Loop iterations of each run.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  config = config_files.load_config(CONFIG.value, ARG.value)
  config.lock()
  result = precision.compare(config, build.generator(config), step_timing.random_batch(config),
                             ITERATIONS.value)
  print(json.dumps({"config": CONFIG.value, "arg": ARG.value, **result}))


if __name__ == "__main__":
  cli.run(main)  # also turns on the persistent compilation cache
