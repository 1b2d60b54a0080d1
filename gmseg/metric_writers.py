"""Metric writers: JSONL in the workdir (always) and TensorBoard (tensorboardX).

`metrics.jsonl` holds one JSON object per line:
  {"step": 100, "time": 1712345678.9, "prefix": "train", "loss": 0.41, ...}
so a run can be read back without TensorBoard (`read_jsonl`). A resumed run
passes `resume_step` (the restored checkpoint's step): rows of later steps,
written after that checkpoint by the run that died, are dropped from the file
before it appends, so the file holds one history; TensorBoard gets
`purge_step=resume_step + 1`, which hides the dead run's later events.
TensorBoard event files come from tensorboardX, imported lazily; without it
the writer warns once and keeps writing JSONL. Only process 0 should write:
pass `enabled=jax.process_index() == 0`.
"""
import json
import numbers
import pathlib
import time
from typing import Any, Optional

from absl import logging
import numpy as np

_warned_no_tensorboard = False


def to_jsonable(value: Any) -> Any:
  """Converts numpy / jax scalars and arrays (and nested containers) to JSON."""
  if isinstance(value, dict):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (str, bool)) or value is None:
    return value
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    return float(value)
  if hasattr(value, "__array__"):  # numpy and jax arrays, numpy scalars
    arr = np.asarray(value)
    if arr.dtype.kind in "iub":
      return arr.item() if arr.ndim == 0 else arr.tolist()
    if arr.dtype.kind == "f":
      return float(arr) if arr.ndim == 0 else arr.astype(np.float64).tolist()
  if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
    return to_jsonable(value.to_dict())
  raise TypeError(f"Cannot write {type(value).__name__} ({value!r:.80}) as JSON: "
                  "pass numbers, strings, arrays or dicts/lists of them.")


class MetricWriter:
  """Writes scalar metrics to `<workdir>/metrics.jsonl` and TensorBoard.

  Args:
    workdir: run directory (created when missing).
    enabled: False on non-zero processes: every call becomes a no-op.
    tensorboard: also write TensorBoard events into `workdir`.
    resume_step: the step the run (re)starts from: existing rows with a
      larger step are removed (`truncate_after`) and TensorBoard purges its
      events from `resume_step + 1` on. None: append to what is there.
  """

  def __init__(self, workdir, enabled: bool = True, tensorboard: bool = True,
               resume_step: Optional[int] = None):
    self.enabled = enabled
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / "metrics.jsonl"
    self._tb = None
    if not enabled:
      return
    self.workdir.mkdir(parents=True, exist_ok=True)
    if resume_step is not None:
      dropped = truncate_after(self.path, resume_step)
      if dropped:
        logging.info("Dropped %d rows after step %d from %s (written after the last "
                     "checkpoint by an interrupted run).", dropped, resume_step, self.path)
    self._file = open(self.path, "a", encoding="utf-8")
    if self.path.stat().st_size and not _ends_with_newline(self.path):
      self._file.write("\n")  # a run killed mid-line: start the next record cleanly
    if tensorboard:
      try:
        import tensorboardX  # pylint: disable=g-import-not-at-top
      except ImportError:
        global _warned_no_tensorboard
        if not _warned_no_tensorboard:
          logging.warning("tensorboardX is not installed: writing metrics.jsonl "
                          "only (pip install tensorboardX for TensorBoard).")
          _warned_no_tensorboard = True
      else:
        purge = None if resume_step is None else int(resume_step) + 1
        self._tb = tensorboardX.SummaryWriter(logdir=str(self.workdir), flush_secs=30,
                                              purge_step=purge)

  def write_scalars(self, step: int, metrics: dict, prefix: str = "") -> None:
    """Writes one JSONL line and one TB scalar per metric.

    Arrays of more than one element (e.g. per-class IoU) go to JSONL as lists
    and are not written to TensorBoard. TB tags are `prefix/key`.
    """
    if not self.enabled:
      return
    values = to_jsonable(dict(metrics))
    reserved = {"step", "time", "prefix"} & values.keys()
    if reserved:
      raise ValueError(f"Metric names {sorted(reserved)} are reserved in metrics.jsonl; rename them.")
    record = {"step": int(step), "time": time.time(), "prefix": prefix, **values}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for key, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
          self._tb.add_scalar(f"{prefix}/{key}" if prefix else key, value, int(step))

  def write_images(self, step: int, name: str, image) -> None:
    """Writes a uint8 image `[height, width, 3]` or `[height, width]` to TB."""
    if not self.enabled or self._tb is None:
      return
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
      raise ValueError(f"write_images wants uint8 [H, W] or [H, W, C]; got "
                       f"{image.dtype} {image.shape} (see gmseg.viz for conversions).")
    if image.ndim == 2:
      image = image[..., None]
    self._tb.add_image(name, image, int(step), dataformats="HWC")

  def flush(self) -> None:
    if self.enabled:
      self._file.flush()
      if self._tb is not None:
        self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      if self._tb is not None:
        self._tb.close()
      self.enabled = False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _ends_with_newline(path: pathlib.Path) -> bool:
  with open(path, "rb") as f:
    f.seek(-1, 2)
    return f.read(1) == b"\n"


def truncate_after(path, step: int) -> int:
  """Removes the rows of `metrics.jsonl` with a step above `step` (and torn lines).

  Rewrites the file through a temporary one, so a kill leaves either version.
  Returns the number of lines removed.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    return 0
  kept, dropped = [], 0
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      record = json.loads(line)
      keep = int(record.get("step", 0)) <= step
    except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
      keep = False
    if keep:
      kept.append(line)
    else:
      dropped += bool(line.strip())
  if dropped:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)
  return dropped


def read_jsonl(path, prefix: Optional[str] = None) -> list[dict]:
  """Reads `metrics.jsonl` (a file or a workdir), optionally one prefix only.

  A torn last line (a run killed mid-write) is skipped.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "metrics.jsonl"
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if prefix is None or record.get("prefix") == prefix:
        records.append(record)
  return records


def write_config(workdir, config) -> pathlib.Path:
  """Writes the config (ConfigDict or dict) to `<workdir>/config.json`."""
  path = pathlib.Path(workdir) / "config.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(to_jsonable(config), indent=2, sort_keys=True) + "\n")
  return path
