"""A run directory: up-front checks, exclusive use, and the config's history.

Exclusive use. `hold(workdir)` takes an OS lock (`fcntl.flock`) on
`<workdir>/run.lock` for the duration of a run. The kernel drops the lock
when the process ends in any way (kill -9 included), so nothing stale is left;
the file's text (host, pid, start time, command) only names the holder for the
message a second run gets, which stops at once. Inside one process the lock
is re-entrant (phase one then phase two on the same workdir). With several
processes (multi-host) the run shares its workdir on purpose: process 0 holds
the lock and tells the others whether it got it, so all stop together.
flock is per host on local disks; on NFS, Linux maps it to a POSIX lock that
the server arbitrates.

Config history. `config.json` is the config the run started with. A resume
compares the config in the latest checkpoint with the one given now, before
anything is restored (`resume_changes`): changes that alter the trained state
or what it means stop the run with one message listing them; harmless ones
(durations, cadences, learning rates, evaluation sets, paths) are warned about
and appended to `config_history.jsonl` as
`{"step": s, "time": ..., "changes": {"key": [old, new], ...}}`.
"""
import contextlib
import datetime
import json
import os
import pathlib
import socket
import sys
from typing import Iterable, Optional

from absl import logging

from gmseg import errors

LOCK_NAME = "run.lock"
CONFIG_NAME = "config.json"
HISTORY_NAME = "config_history.jsonl"

# Phase one: keys a resume may change (prefixes end with '.'); any other change stops it.
ANNOTATE_HARMLESS = (
    "train.steps", "train.log_every", "train.eval_every", "train.ckpt_every",
    "train.grid_every", "train.keep", "train.eval_batch", "ann_optim.lr", "seg_optim.lr",
    "data.num_val", "data.val_split", "data.test_split", "data.eval_dataset",
    "data.val_dataset", "data.eval_transform", "data.data_dir", "data.manual_dir",
    # Read by the baselines and phase two, and by phase one only with
    # matching.augment != 'none' (then it blocks: `annotate_harmless`).
    "data.augment_zoom",
    "segmenter.pretrained", "downstream.",
    # Both paths give the same mean gradient (to float32 noise; tests/test_steps.py).
    "matching.grad_path",
    # The same iterations, bitwise (tests/test_iteration_dispatch.py).
    "train.steps_per_dispatch")


def annotate_harmless(config) -> tuple[str, ...]:
  """ANNOTATE_HARMLESS for `config`: without 'data.augment_zoom' when phase
  one's Siamese views (matching.augment != 'none') use the zoom range."""
  if config.get("matching", {}).get("augment", "none") != "none":
    return tuple(k for k in ANNOTATE_HARMLESS if k != "data.augment_zoom")
  return ANNOTATE_HARMLESS


# Phase two: keys that define the downstream segmenter's state or its epochs.
DOWNSTREAM_BLOCKING = ("class_names", "seed", "downstream.segmenter", "downstream.optim.name",
                       "downstream.optim.momentum", "downstream.batch")


class WorkdirError(errors.UserError, OSError):
  """The workdir is unusable (a file, not writable) or held by another run."""


class ConfigChangeError(errors.UserError, ValueError):
  """A resume asks for a config the checkpoint's state cannot continue."""


# ------------------------------------------------------------ up-front checks


def check(workdir) -> pathlib.Path:
  """Creates `workdir` if needed and checks that it is a writable directory.

  Cheap, so launchers call it before any heavy setup.

  Raises:
    WorkdirError naming the path and the fix.
  """
  path = pathlib.Path(workdir).expanduser()
  for parent in [path, *path.parents]:
    if parent.exists() and not parent.is_dir():
      what = f"--workdir {path}" if parent == path else f"{parent} (inside --workdir {path})"
      raise WorkdirError(f"{what} is a file, not a directory: pass a directory path "
                         "(it is created when missing).")
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"Cannot create the workdir {path} ({e.strerror or e}): choose a "
                       "writable --workdir.") from None
  probe = path / f".write_test.{os.getpid()}"
  try:
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise WorkdirError(f"The workdir {path} is not writable ({e.strerror or e}): choose a "
                       "writable --workdir or fix its permissions.") from None
  return path


# ---------------------------------------------------------------- the lock

_held: dict[str, list] = {}  # real path -> [fd, depth]


def _holder_text() -> str:
  return json.dumps({
      "host": socket.gethostname(), "pid": os.getpid(),
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join(sys.argv)[:500]})


def describe_holder(workdir) -> str:
  """'pid P on host H since T (command C)' from the lock file, as well as it can."""
  try:
    info = json.loads((pathlib.Path(workdir) / LOCK_NAME).read_text())
    return (f"pid {info['pid']} on host {info['host']} since {info['started']} "
            f"(command: {info.get('command') or '?'})")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process (its details are not written yet)"


def acquire(workdir) -> pathlib.Path:
  """Takes the workdir's lock for this process (re-entrant); see `hold`.

  Raises:
    WorkdirError when another process holds it, naming that process.
  """
  import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
  path = check(workdir)
  key = os.path.realpath(path)
  if key in _held:
    _held[key][1] += 1
    return path
  fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise WorkdirError(f"The workdir {path} is in use by {describe_holder(path)}. Wait for "
                       "that run to finish (or stop it), or pass another --workdir.") from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
  _held[key] = [fd, 1]
  return path


def release(workdir) -> None:
  """Gives back one `acquire`; the lock goes at the outermost one."""
  import fcntl  # pylint: disable=g-import-not-at-top
  key = os.path.realpath(pathlib.Path(workdir).expanduser())
  entry = _held.get(key)
  if entry is None:
    return
  entry[1] -= 1
  if entry[1] == 0:
    del _held[key]
    fcntl.flock(entry[0], fcntl.LOCK_UN)
    os.close(entry[0])


@contextlib.contextmanager
def hold(workdir, multihost: Optional[bool] = None):
  """`with hold(workdir):` the run owns `workdir`; yields its pathlib.Path.

  Args:
    multihost: share the workdir among the processes of one jax.distributed
      run (process 0 locks, the others follow its outcome). Default: when
      jax.process_count() > 1.
  """
  if multihost is None:
    import jax  # pylint: disable=g-import-not-at-top
    multihost = jax.process_count() > 1
  if not multihost:
    path = acquire(workdir)
    try:
      yield path
    finally:
      release(workdir)
    return
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  failure, locked = None, False
  if jax.process_index() == 0:
    try:
      acquire(workdir)
      locked = True
    except WorkdirError as e:
      failure = e
  ok = int(multihost_utils.broadcast_one_to_all(np.int32(failure is None)))
  if failure is not None:
    raise failure
  if not ok:
    raise WorkdirError(f"Process 0 could not take the workdir {workdir} (see its log); "
                       "stopping with it.")
  try:
    yield check(workdir)
  finally:
    if locked:
      release(workdir)


# ------------------------------------------------------------ config history


def flatten(config) -> dict:
  """{'a.b.c': value} with JSON values (tuples as lists) of a ConfigDict or dict."""
  from gmseg.metric_writers import to_jsonable  # pylint: disable=g-import-not-at-top
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(to_jsonable(config), "")
  return out


def config_changes(saved, config) -> dict[str, tuple]:
  """{key: (saved, now)} for every leaf that differs; keys missing on one side are None."""
  if saved is None:
    return {}
  a, b = flatten(saved), flatten(config)
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _matches(key: str, patterns: Iterable[str]) -> bool:
  return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".")
             for p in patterns)


def split_changes(changes: dict, harmless: Iterable[str] = (),
                  blocking: Optional[Iterable[str]] = None) -> tuple[dict, dict]:
  """(harmless, blocking) parts of `config_changes`.

  With `blocking=None`, every change not matched by `harmless` blocks; with a
  `blocking` list, only the changes it matches do. A key the saved config does
  not have (added to gmseg since) or the new one lacks is never blocking.
  """
  ok, bad = {}, {}
  for key, (old, new) in changes.items():
    if old is None or new is None:
      ok[key] = (old, new)
    elif blocking is None:
      (ok if _matches(key, harmless) else bad)[key] = (old, new)
    else:
      (bad if _matches(key, blocking) else ok)[key] = (old, new)
  return ok, bad


def format_changes(changes: dict) -> str:
  return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def check_resume(workdir, saved_config: Optional[dict], config, step: int, *,
                 harmless: Iterable[str] = (), blocking: Optional[Iterable[str]] = None,
                 what: str = "run", warn: bool = True) -> dict:
  """Compares the checkpoint's config with `config` before anything is restored.

  Returns:
    the harmless changes {key: (saved, now)} (warned about when `warn`).
  Raises:
    ConfigChangeError listing the blocking changes, with the fix.
  """
  ok, bad = split_changes(config_changes(saved_config, config), harmless, blocking)
  if bad:
    raise ConfigChangeError(
        f"Cannot resume the {what} in {workdir} (checkpoint step {step}) with this config: "
        f"{format_changes(bad)} (saved -> now) change the trained state or what it means. "
        "Use a new --workdir for the new config, or rerun with the saved values.")
  if ok and warn:
    logging.warning("Resuming with a config that differs from the checkpoint's "
                    "(saved -> now): %s", format_changes(ok))
  return ok


def record_config(directory, config, *, resumed_step: Optional[int] = None,
                  changes: Optional[dict] = None, saved_config: Optional[dict] = None
                  ) -> pathlib.Path:
  """Writes `config.json` at a fresh start; on a resume appends the changes.

  Args:
    directory: where config.json lives (the workdir, or workdir/downstream).
    resumed_step: None for a fresh start (config.json is (re)written);
      else the step resumed from: config.json stays as the run began (or is
      written from `saved_config` when missing), and `changes` (if any) go
      to config_history.jsonl.
  """
  from gmseg import metric_writers  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  path = directory / CONFIG_NAME
  if resumed_step is None or not path.is_file():
    source = config if resumed_step is None or saved_config is None else saved_config
    metric_writers.write_config(directory, source)
  if resumed_step is not None and changes:
    record = {"step": int(resumed_step),
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "changes": {k: [old, new] for k, (old, new) in changes.items()}}
    with open(directory / HISTORY_NAME, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
  return path


def read_history(directory) -> list[dict]:
  """The records of `config_history.jsonl` (empty when no resume changed anything)."""
  path = pathlib.Path(directory) / HISTORY_NAME
  if not path.is_file():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def config_at(directory, step: int, start_config: dict) -> dict:
  """The config in force at `step`: config.json with the history up to `step` applied."""
  flat = flatten(start_config)
  for record in read_history(directory):
    if record["step"] <= step:
      for key, (_, new) in record["changes"].items():
        flat[key] = new
  out: dict = {}
  for key, value in flat.items():
    if value is None:
      continue
    node = out
    *parents, leaf = key.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return out
