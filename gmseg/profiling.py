"""`--profile_steps=a:b`: a jax.profiler trace of training steps a..b-1.

The launchers parse the flag with `parse_window` and the training loops drive
a `StepProfiler`, which starts `jax.profiler.start_trace(logdir)` before the
first step of the window and stops it once that window's last step has
finished on the device (the loop's outputs are waited for first: dispatch is
asynchronous, and a trace stopped at dispatch time would miss the device work).
The trace lands in `<logdir>/plugins/profile/<time>/<host>.xplane.pb` (and a
`.trace.json.gz`), the layout TensorBoard's profile tab reads:
`tensorboard --logdir <workdir>/profile` (with the profile plugin installed).

Step numbering is the loop's own: in phase one iteration i runs with i
finished iterations (`state.step == i`), so `a:b` traces iterations a..b-1;
in phase two step s is the s-th segmenter update, so `a:b` traces updates
a+1..b. Only process 0 traces (one trace per run; on a pod it shows that
host's devices).
"""
import pathlib
import re
from typing import Any, Optional

from absl import logging
import jax

from gmseg import errors

Window = tuple[int, int]


class ProfileStepsError(errors.UserError, ValueError):
  """A `--profile_steps` value that is not `START:STOP` with 0 <= START < STOP."""


def parse_window(text: Optional[str]) -> Optional[Window]:
  """`'a:b'` -> `(a, b)`; empty or None -> None (no profiling).

  Raises:
    ProfileStepsError: anything but two integers 0 <= a < b joined by ':'.
  """
  if text is None or not text.strip():
    return None
  match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
  if not match or int(match.group(1)) >= int(match.group(2)):
    raise ProfileStepsError(
        f"--profile_steps={text!r} is not START:STOP with 0 <= START < STOP; e.g. "
        "--profile_steps=10:15 traces steps 10..14 (skip the first steps, which compile).")
  return int(match.group(1)), int(match.group(2))


def check_window(window: Optional[Window], total_steps: int) -> None:
  """Raises ProfileStepsError when the window starts at or after `total_steps`."""
  if window is not None and window[0] >= total_steps:
    raise ProfileStepsError(
        f"--profile_steps={window[0]}:{window[1]} starts at or after the run's last step "
        f"({total_steps}); choose START below {total_steps}.")


class StepProfiler:
  """Starts and stops one jax.profiler trace around a window of loop steps.

  Call `at(step, outputs)` with the number of finished steps before each
  dispatch (with `outputs=None`) and after it (with what it returned). A
  dispatch of several steps is traced whole when it starts inside the window.
  A resumed run traces what is left of the window. Call `close(outputs)` when
  the loop ends (also on errors): it stops a trace still running.
  """

  def __init__(self, window: Optional[Window], logdir, enabled: bool = True):
    self.window = window if enabled else None
    self.logdir = pathlib.Path(logdir)
    self.active = False
    self.done = False

  def at(self, step: int, outputs: Any = None) -> None:
    """Starts or stops the trace as `step` (finished steps) enters or leaves the window."""
    if self.window is None or self.done:
      return
    start, stop = self.window
    if not self.active and start <= step < stop:
      self.logdir.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.logdir))
      self.active = True
      logging.info("Profiling steps %d..%d into %s.", step, stop - 1, self.logdir)
    elif self.active and step >= stop:
      self.close(outputs)

  def close(self, outputs: Any = None) -> None:
    """Stops a running trace after `outputs` (any pytree of arrays) are computed."""
    if not self.active:
      return
    jax.block_until_ready(outputs)
    jax.profiler.stop_trace()
    self.active, self.done = False, True
    logging.info("Profile written to %s (tensorboard --logdir %s, profile tab).",
                 self.logdir, self.logdir)
