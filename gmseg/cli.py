"""What every launcher shares: one-line user errors and quiet output.

  from gmseg import cli
  ...
  if __name__ == "__main__":
    cli.run(main)           # instead of absl.app.run(main)

Errors. A mistake in a `--config.x.y=v` flag (unknown key, wrong type) and
any `gmseg.errors.UserError` (or an exception caused by one) print
`error: <message>` on one line and exit 1, without a traceback; other
exceptions keep theirs. `--verbose` shows tracebacks for all.

Output. By default the launchers show gmseg's own log lines (progress,
evaluations, resume and checkpoint notes) and warnings of every library,
without library INFO chatter (orbax, tfds, the XLA backend probe), tfds
progress bars, tfds' OpenCV notice, or asyncio's "Event loop is closed"
noise after a failed checkpoint read. `--verbose` shows everything.
"""
import logging as std_logging
import os
import sys
from typing import Callable, Optional

from absl import app, flags
from absl import logging

from gmseg import compile_cache
from gmseg import errors

VERBOSE = flags.DEFINE_bool(
    "verbose", False, "Show library logs (orbax, tfds, XLA), progress bars, and tracebacks "
    "of user errors.")

_OUR_DIRS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d)
                  + os.sep for d in ("gmseg", "launch", "configs"))
# Library warnings that say nothing a gmseg user can act on.
_QUIET_WARNINGS = ("OpenCV is not installed",  # tfds: PIL decodes our PNGs fine
                   "Variant folder")           # tfds probing a dataset folder being written


class _OursOrWarnings(std_logging.Filter):
  """Keeps gmseg's records and other libraries' warnings (minus known notices)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if os.path.abspath(record.pathname).startswith(_OUR_DIRS):
      return True
    if record.levelno < std_logging.WARNING:
      return False
    return not str(record.msg).startswith(_QUIET_WARNINGS)


def _unraisable_hook(default):
  def hook(unraisable):
    # orbax/tensorstore callbacks that fire after a failed read closed their loop.
    if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
        unraisable.exc_value):
      return
    default(unraisable)
  return hook


def quiet_output() -> None:
  """Installs the default (non-verbose) output filters; idempotent."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _OursOrWarnings) for f in handler.filters):
    handler.addFilter(_OursOrWarnings())
  sys.unraisablehook = _unraisable_hook(sys.unraisablehook)
  if "tensorflow_datasets" in sys.modules or _data_launcher():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    tfds.disable_progress_bar()


def _data_launcher() -> bool:
  # Launchers that read datasets import gmseg.build / gmseg.data (tfds is lazy there).
  return any(m in sys.modules for m in ("gmseg.build", "gmseg.data"))


def _user_error(e: BaseException) -> Optional[BaseException]:
  """The UserError behind `e` (itself or in its cause chain), else None."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, errors.UserError):
      return e
    e = e.__cause__ or e.__context__
  return None


def one_line(message: str) -> str:
  return " ".join(str(message).split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every mistake as one line (exit 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and any(line.startswith("Traceback") for line in lines):
      # A config file's get_config raised: its own message is the last line.
      text = f"{lines[0].rstrip(':')}: {lines[-1]}"
    else:
      text = one_line(e)
    print(f"error: {text} (--helpshort lists the flags).", file=sys.stderr)
    sys.exit(1)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith(("--config.", "-config."))]
    text = one_line(e.args[0] if e.args else e).replace("\\n", " ").strip("'\"")
    text = text.replace("\\'", "'")
    print(f"error: cannot apply {' '.join(overrides) or 'the config flags'}: {text} "
          "(every key and its meaning: gmseg/config_base.py).", file=sys.stderr)
    sys.exit(1)


class MultihostFlags:
  """`--multihost` and its off-cluster companions, for launchers that join a
  multi-process job (launch/multihost.sh starts them; it looks for the
  "multihost" flag name in a launcher's source)."""

  def __init__(self):
    self.multihost = flags.DEFINE_bool("multihost", False,
                                       "Call jax.distributed.initialize() first.")
    self.coordinator = flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 (with --multihost, off-cluster).")
    self.num_processes = flags.DEFINE_integer("num_processes", None,
                                              "Process count (with --multihost).")
    self.process_id = flags.DEFINE_integer("process_id", None,
                                           "This process's index (with --multihost).")

  def initialize(self) -> None:
    """Joins the job (with --multihost) and logs this process's devices."""
    from gmseg import parallel  # pylint: disable=g-import-not-at-top  (jax: lazy)
    import jax  # pylint: disable=g-import-not-at-top
    parallel.init_distributed(self.multihost.value, self.coordinator.value,
                              self.num_processes.value, self.process_id.value)
    logging.info("Process %d of %d, %d local of %d devices (%s).", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.devices()[0].platform)


def run(main: Callable[[list[str]], Optional[int]]) -> None:
  """`absl.app.run(main)` with gmseg's error and output handling (see module doc)."""

  def wrapped(argv):
    if not VERBOSE.value:
      quiet_output()
    # Reruns load compiled programs from disk ($GMSEG_JAX_CACHE; 'off' disables).
    compile_cache.enable()
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-except
      user = _user_error(e)
      if user is None or VERBOSE.value:
        raise
      print(f"error: {one_line(e)}", file=sys.stderr)
      sys.exit(1)

  app.run(wrapped, flags_parser=parse_flags)
