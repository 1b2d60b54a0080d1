"""Host memory of this process: current and peak resident size, and giving
freed heap pages back to the OS.

XLA's CPU compiler frees most of what it allocates while compiling, but
glibc keeps the pages, so without `release()` the resident size after a
compile stays near its peak (measured at preset a: ~960 MB after setup,
~400 MB after `release()`; gmseg/experiments/step_timing.py).
"""
import ctypes
import resource
import sys


def release() -> None:
  """Returns the C heap's free pages to the OS (glibc `malloc_trim`); a
  no-op where glibc is absent. Costs milliseconds: call it between phases
  (after setup, after compiling), not every step."""
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far, MiB.

  Linux: VmHWM of /proc/self/status, which starts afresh at exec; ru_maxrss
  does not (a child started from a 2 GB process reports 2 GB). Elsewhere
  ru_maxrss.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except (OSError, ValueError, IndexError):
    pass
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return (rss if sys.platform == "darwin" else rss * 1024) / 2**20


def rss_mb() -> float:
  """Resident memory of this process now, MiB (Linux /proc; nan elsewhere)."""
  try:
    with open("/proc/self/statm") as f:
      pages = int(f.read().split()[1])
  except (OSError, IndexError, ValueError):
    return float("nan")
  return pages * resource.getpagesize() / 2**20
