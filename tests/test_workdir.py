"""gmseg.workdir: the exclusive lock (across real processes, kill -9), up-front
checks, resume classification, config history; metrics truncation on resume;
one-line errors of the launchers (gmseg.cli)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from gmseg import metric_writers
from gmseg import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
_HOLD = """
import sys, time
from gmseg import workdir
workdir.acquire(sys.argv[1])
print("held", flush=True)
time.sleep(600)
"""


def _holder(path):
  proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held", proc.stderr.read()
  return proc


def test_second_process_stops_at_once_naming_the_holder(tmp_path):
  holder = _holder(tmp_path / "run")
  try:
    with pytest.raises(workdir_lib.WorkdirError,
                       match=rf"in use by pid {holder.pid} on host .* since 20"):
      workdir_lib.acquire(tmp_path / "run")
    # kill -9: the kernel drops the lock; the stale text does not block.
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert workdir_lib.acquire(tmp_path / "run") == tmp_path / "run"
    # Re-entrant inside one process (phase one then phase two).
    with workdir_lib.hold(tmp_path / "run", multihost=False):
      pass
    info = json.loads((tmp_path / "run" / workdir_lib.LOCK_NAME).read_text())
    assert info["pid"] == os.getpid()
    workdir_lib.release(tmp_path / "run")
  finally:
    holder.kill()
    holder.wait()


def test_launcher_on_a_locked_workdir_exits_in_one_line(tmp_path):
  holder = _holder(tmp_path / "run")
  try:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "launch/annotate.py", "--config=configs/tiny.py",
         f"--workdir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
        timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    elapsed = time.monotonic() - start
  finally:
    holder.kill()
    holder.wait()
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and f"in use by pid {holder.pid}" in errors[0], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any setup
  assert elapsed < 60, elapsed  # imports only; no dataset or compile


def test_workdir_checks(tmp_path):
  a_file = tmp_path / "f"
  a_file.write_text("x")
  with pytest.raises(workdir_lib.WorkdirError, match="is a file, not a directory"):
    workdir_lib.check(a_file)
  with pytest.raises(workdir_lib.WorkdirError, match="inside --workdir"):
    workdir_lib.check(a_file / "sub")
  if os.geteuid() != 0:  # root writes anywhere
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(workdir_lib.WorkdirError, match="not writable|Cannot create"):
      workdir_lib.check(ro / "run")
  # Not creatable, even for root (procfs refuses new directories).
  with pytest.raises(workdir_lib.WorkdirError, match="Cannot create the workdir /proc/gmseg_"):
    workdir_lib.check("/proc/gmseg_test_run")
  assert workdir_lib.check(tmp_path / "new" / "run").is_dir()


def test_resume_classification():
  saved = {"seed": 0, "train": {"steps": 20, "eval_every": 10},
           "segmenter": {"widths": [8, 16]}, "ann_optim": {"name": "sgd", "lr": 1e-3},
           "downstream": {"epochs": 2}}
  now = {"seed": 0, "train": {"steps": 30, "eval_every": 5, "new_key": 1},
         "segmenter": {"widths": [16, 16]}, "ann_optim": {"name": "adam", "lr": 2e-3},
         "downstream": {"epochs": 3}}
  changes = workdir_lib.config_changes(saved, now)
  ok, bad = workdir_lib.split_changes(changes, workdir_lib.ANNOTATE_HARMLESS)
  assert sorted(ok) == ["ann_optim.lr", "downstream.epochs", "train.eval_every",
                        "train.new_key", "train.steps"]
  assert sorted(bad) == ["ann_optim.name", "segmenter.widths"]
  with pytest.raises(workdir_lib.ConfigChangeError,
                     match=r"ann_optim.name: 'sgd' -> 'adam'; segmenter.widths: \[8, 16\] -> "
                           r"\[16, 16\] .* new --workdir"):
    workdir_lib.check_resume("w", saved, now, 20, harmless=workdir_lib.ANNOTATE_HARMLESS)
  ok, bad = workdir_lib.split_changes(changes, blocking=workdir_lib.DOWNSTREAM_BLOCKING)
  assert bad == {} and "segmenter.widths" in ok


def test_config_history(tmp_path):
  start = {"train": {"steps": 20}, "ann_optim": {"lr": 0.001}}
  workdir_lib.record_config(tmp_path, start)
  later = {"train": {"steps": 40}, "ann_optim": {"lr": 0.002}}
  changes = workdir_lib.config_changes(start, later)
  workdir_lib.record_config(tmp_path, later, resumed_step=20, changes=changes,
                            saved_config=start)
  # config.json stays the start; the history holds step, keys, old -> new.
  assert json.loads((tmp_path / "config.json").read_text()) == start
  assert workdir_lib.read_history(tmp_path) == [
      {"step": 20, "time": workdir_lib.read_history(tmp_path)[0]["time"],
       "changes": {"ann_optim.lr": [0.001, 0.002], "train.steps": [20, 40]}}]
  assert workdir_lib.config_at(tmp_path, 10, start) == start
  assert workdir_lib.config_at(tmp_path, 30, start) == later


def test_metrics_truncated_on_resume(tmp_path):
  with metric_writers.MetricWriter(tmp_path, tensorboard=False) as w:
    for step in (5, 10, 15):
      w.write_scalars(step, {"loss": float(step)}, prefix="train")
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 20, "pre')  # torn by a kill
  with metric_writers.MetricWriter(tmp_path, tensorboard=False, resume_step=10) as w:
    w.write_scalars(15, {"loss": 1.5}, prefix="train")
  rows = metric_writers.read_jsonl(tmp_path)
  assert [(r["step"], r["loss"]) for r in rows] == [(5, 5.0), (10, 10.0), (15, 1.5)]
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3


def test_unknown_config_key_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch/annotate.py", "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'w'}", "--config.train.stpes=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("error: cannot apply --config.train.stpes=3")
  assert 'Did you mean "steps"' in lines[0]


def test_workdir_that_is_a_file_is_one_line(tmp_path):
  a_file = tmp_path / "f"
  a_file.write_text("x")
  proc = subprocess.run(
      [sys.executable, "launch/annotate.py", "--config=configs/tiny.py",
       f"--workdir={a_file}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: --workdir {a_file} is a file, not a directory: pass a directory path "
                    "(it is created when missing)."], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr


def test_bad_config_argument_is_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch/annotate.py", "--config=configs/tiny.py:stpes=3",
       f"--workdir={tmp_path / 'w'}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and "Unknown config argument 'stpes'" in lines[0], proc.stderr


def test_default_output_keeps_ours_and_library_warnings():
  import logging as std_logging
  from gmseg import cli
  keep = cli._OursOrWarnings().filter

  def record(path, level, msg):
    return std_logging.LogRecord("absl", level, path, 1, msg, None, None)
  lib = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not keep(record(lib, std_logging.INFO, "Saving checkpoint"))
  assert keep(record(lib, std_logging.WARNING, "a real warning"))
  assert not keep(record("/venv/site-packages/tensorflow_datasets/core/features/image_feature.py",
                         std_logging.WARNING, "OpenCV is not installed. We recommend ..."))
  assert keep(record(str(REPO / "gmseg" / "progress.py"), std_logging.INFO, "step 10/20"))
