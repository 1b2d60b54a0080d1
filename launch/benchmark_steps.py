r"""Cost of the method's steps, side by side in one process (issue 10's table).

  nice -n 15 .venv/bin/python launch/benchmark_steps.py --preset=b
  nice -n 15 .venv/bin/python launch/benchmark_steps.py --preset=a --json
  .venv/bin/python launch/benchmark_steps.py --preset=c --reps=2 \
      --override=matching.grad_path=per_example

Compiles, then times the annotator step, segmenter step, supervised step (same
segmenter and batch), one whole iteration and the segmenter step's labelling
(generator + annotator forward); prints a markdown table row (or, with --json,
one JSON object: annotator_s, segmenter_s, supervised_s, iteration_s,
a_over_sup, s_over_sup, compile_s, peak_rss_mb, ...). peak_rss_mb is the
method's: the iteration program set up, compiled (or loaded from the compile
cache) and run in a fresh process (`memory` holds its breakdown; --nomemory
skips it); benchmark_peak_rss_mb is this process, which holds five programs.
Presets a, b, c, faces: see gmseg/experiments/step_timing.py.
"""
import json

from absl import app, flags

from gmseg import cli
from gmseg.experiments import step_timing

PRESET = flags.DEFINE_enum("preset", "b", list(step_timing.PRESETS), "Setup to time.")
REPS = flags.DEFINE_integer("reps", 5, "Timed interleaved rounds (medians reported).")
JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
MEMORY = flags.DEFINE_bool("memory", True,
                           "Measure the iteration program's memory in a fresh process.")
OVERRIDE = flags.DEFINE_multi_string(
    "override", [], "Config override key=value (repeatable), e.g. segmenter.norm=batch.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  result = step_timing.run_preset(PRESET.value, REPS.value, OVERRIDE.value,
                                   memory=MEMORY.value)
  if JSON.value:
    print(json.dumps(result))
  else:
    print(step_timing.TABLE_HEADER)
    print(step_timing.markdown_row(result))


if __name__ == "__main__":
  cli.run(main)  # also turns on the persistent compilation cache
