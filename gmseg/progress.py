"""Training progress (rate, ETA) and a NaN/Inf guard for metrics."""
import collections
import contextlib
import math
import time
from typing import Callable, Optional

from absl import logging
import numpy as np


def format_duration(seconds: float) -> str:
  """`hh:mm:ss` (hours may exceed 24)."""
  if not math.isfinite(seconds):
    return "--:--:--"
  seconds = int(round(max(seconds, 0.0)))
  return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """Reports `step i/N, x.xx it/s, ETA hh:mm:ss` every `every_s` s or `every_n` steps.

  The clock starts at the first `update` (after the first, compiling, step),
  so compile time does not enter the rate. The rate is measured over a window
  of the last `window` reports; time spent inside `with progress.paused():`
  (evaluation, checkpointing) is left out of it.

  Args:
    total_steps: the step the run ends at.
    start_step: the step a (resumed) run starts from.
    every_s: report interval in seconds (used when `every_n` is None).
    every_n: report interval in steps.
    window: number of past reports the rate is averaged over.
    clock: seconds, monotonic (tests pass a fake one).
    log: also write the message with absl logging.
  """

  def __init__(self, total_steps: int, start_step: int = 0, every_s: float = 10.0,
               every_n: Optional[int] = None, window: int = 5,
               clock: Callable[[], float] = time.monotonic, log: bool = True):
    if every_n is not None and every_n < 1:
      raise ValueError(f"every_n={every_n}: report at least every 1 step.")
    self.total_steps = int(total_steps)
    self.start_step = int(start_step)
    self.every_s, self.every_n = every_s, every_n
    self._clock, self._log = clock, log
    self._paused_total = 0.0
    self._points = collections.deque(maxlen=window + 1)  # (step, time) at reports
    self._last_report_step = None

  def _now(self) -> float:
    return self._clock() - self._paused_total

  @contextlib.contextmanager
  def paused(self):
    """Excludes the time spent in the block from rate and ETA."""
    start = self._clock()
    try:
      yield
    finally:
      self._paused_total += self._clock() - start

  @property
  def rate(self) -> Optional[float]:
    """Steps per second over the window, or None before two reports."""
    if len(self._points) < 2:
      return None
    (s0, t0), (s1, t1) = self._points[0], self._points[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 else None

  def update(self, step: int) -> Optional[str]:
    """Call after finishing `step`; returns (and logs) a message when one is due."""
    step, now = int(step), self._now()
    if not self._points:  # first step done: compile time is behind us
      self._points.append((step, now))
      self._last_report_step = step
      return None
    last_step, last_time = self._points[-1]
    if self.every_n is not None:
      due = step - self._last_report_step >= self.every_n
    else:
      due = now - last_time >= self.every_s
    if not due and step < self.total_steps:
      return None
    if step > last_step and now > last_time:
      self._points.append((step, now))
    self._last_report_step = step
    rate = self.rate
    if rate:
      eta = format_duration((self.total_steps - step) / rate)
      msg = f"step {step}/{self.total_steps}, {rate:.2f} it/s, ETA {eta}"
    else:
      msg = f"step {step}/{self.total_steps}, -- it/s, ETA --:--:--"
    if self._log:
      logging.info(msg)
    return msg


def check_finite(metrics: dict, step: int) -> None:
  """Raises FloatingPointError naming `step` and every NaN/Inf metric key.

  Fetches the values to the host (a device sync): call it where metrics are
  logged anyway, not every step.
  """
  bad = []
  for key, value in metrics.items():
    arr = np.asarray(value)
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
      kinds = sorted({"nan" if np.isnan(x) else "inf" for x in arr.ravel()
                      if not np.isfinite(x)})
      bad.append(f"{key}={'/'.join(kinds)}")
  if bad:
    raise FloatingPointError(
        f"Non-finite metrics at step {int(step)}: {', '.join(bad)}. Lower the "
        "learning rate or check the inputs; rerunning the command resumes from the newest "
        "checkpoint that reads completely and holds only finite values.")
