"""gmseg.annotate end to end on configs/tiny.py: outputs, kill-and-resume, NaN guard.

Every run is a subprocess of launch/annotate.py (or of a short script) on CPU,
sharing one persistent JAX compilation cache. To keep the wall time down on two
cores, the uninterrupted run goes first (it compiles and fills the cache);
then the NaN run goes beside the kill/restart pair.

The uninterrupted run also traces iterations 2..3 (--profile_steps=2:4):
the trace files appear in <workdir>/profile/ and hold two step dispatches.

Multi-host: `launch/multihost.sh local 2 -- launch/annotate.py ...` starts two
processes on this machine joined by
`jax.distributed.initialize(coordinator_address='localhost:PORT', ...)` over
JAX's CPU backend (gloo collectives) with the same tiny config; both finish,
only process 0 writes metrics/grids/config, and the first logged metrics match
a single-process run to float32 noise. It adds 140-370 s on the shared 2-core
machine under load (both processes compile), so it runs only with
GMSEG_MULTIHOST_TEST=1. Its first window is compared per metric (see the test:
the annotator's early Adam steps amplify the reduction-order noise).
"""
import collections
import gzip
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

from conftest import FAST_COMPILE
from gmseg import checkpoint, metric_writers

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "annotate.py"
PROFILE_STEPS = (2, 4)  # the uninterrupted run's traced iterations
STEPS = 20  # configs/tiny.py: log every 5, checkpoints every 5, eval/grids every 10
CLASSES = ("background", "hair", "skin", "eyes", "nose", "mouth")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("annotate")
  e = dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(root / "tfds"),
           JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
           JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  # One CPU device per process; XLA's cheaper CPU backend passes halve the
  # compile time (every run here uses the same flags, so bitwise checks hold).
  e["XLA_FLAGS"] = FAST_COMPILE
  return root, e


def _command(workdir, *extra):
  # S restarts at the checkpoint steps 5, 10, 15, so the kill/resume pair
  # resumes at a restart (train.seg_restart_every; a function of the step).
  return [sys.executable, str(LAUNCH), "--config=configs/tiny.py",
          "--config.train.seg_restart_every=5", f"--workdir={workdir}", *extra]


def _popen(cmd, env, log):
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)


def _finish(proc, log_path, timeout=600):
  proc.wait(timeout=timeout)
  return proc.returncode, pathlib.Path(log_path).read_text()


def _final_state(workdir, step=STEPS):
  tree = checkpoint.restore_subtree(pathlib.Path(workdir) / "checkpoints", (), step=step)
  return jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]


@pytest.fixture(scope="module")
def runs(env):
  """All subprocess runs of this file; returns {name: (returncode, log, workdir)}."""
  root, e = env
  work = {k: root / k for k in ("uninterrupted", "killed", "nan")}
  logs = {k: root / f"{k}.log" for k in ("uninterrupted", "killed", "restart", "nan")}
  out = {}
  # First alone: it builds the dataset and fills the compilation cache.
  with open(logs["uninterrupted"], "w") as la:
    cmd = _command(work["uninterrupted"], "--profile_steps=%d:%d" % PROFILE_STEPS)
    out["uninterrupted"] = _finish(_popen(cmd, e, la),
                                   logs["uninterrupted"]) + (work["uninterrupted"],)
  # Then the kill/restart pair and, beside it on the second core, the NaN run.
  with open(logs["killed"], "w") as lk, open(logs["nan"], "w") as ln:
    nan = _popen([sys.executable, "-c", _NAN_SCRIPT, str(work["nan"])], e, ln)
    killed = _popen(_command(work["killed"]), e, lk)
    first_ckpt = work["killed"] / "checkpoints" / "5"
    deadline = time.monotonic() + 600
    while not first_ckpt.is_dir() and killed.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    out["killed"] = _finish(killed, logs["killed"]) + (work["killed"],)
    out["killed_steps"] = sorted(int(p.name) for p in (work["killed"] / "checkpoints").iterdir()
                                 if p.name.isdigit())
    with open(logs["restart"], "w") as lr:
      out["restart"] = _finish(_popen(_command(work["killed"]), e, lr),
                               logs["restart"]) + (work["killed"],)
    out["nan"] = _finish(nan, logs["nan"]) + (work["nan"],)
  return out


@pytest.fixture(scope="module")
def full_run(runs):
  code, log, workdir = runs["uninterrupted"]
  assert code == 0, log[-5000:]
  return workdir, log


def test_outputs(full_run):
  workdir, log = full_run
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=2, best_key="fg_miou")
  assert ckpt.latest_step() == STEPS
  meta = ckpt.restore_meta()
  assert meta["step"] == STEPS and meta["config"]["train"]["steps"] == STEPS
  assert meta["best"]["step"] in (10, 20)
  # The best-by-validation step is preserved beside the latest two.
  assert meta["best"]["step"] in ckpt.all_steps()
  assert ckpt.best_step() == meta["best"]["step"]
  ckpt.close()

  train = metric_writers.read_jsonl(workdir, prefix="train")
  assert [r["step"] for r in train] == [5, 10, 15, 20]
  for r in train:
    values = [v for k, v in r.items() if k not in ("step", "time", "prefix")]
    assert {"ann/match_loss", "seg/loss", "ann/grad_norm"} <= r.keys()
    assert all(np.isfinite(values)), r
    assert r["ann/nonfinite"] == 0 and r["seg/nonfinite"] == 0
    assert 0.0 < r["ann/match_loss"] <= 2.0  # a cosine distance
  val = metric_writers.read_jsonl(workdir, prefix="val")
  assert [r["step"] for r in val] == [10, 20]
  for r in val:
    assert 0.0 < r["pacc"] <= 1.0 and 0.0 <= r["fg_miou"] <= r["best_fg_miou"] <= 1.0
    ious = [r[f"iou/{c}"] for c in CLASSES]
    assert np.isclose(np.mean(ious), r["miou"]) and np.isclose(np.mean(ious[1:]), r["fg_miou"])
  assert max(r["fg_miou"] for r in val) == meta["best"]["fg_miou"]

  events = list(workdir.glob("events.out.tfevents.*"))
  assert len(events) == 1 and events[0].stat().st_size > 0
  config = json.loads((workdir / "config.json").read_text())
  assert config["data"]["dataset"] == "rendered_faces" and config["batch"]["labelled"] == 4

  # Grids at the start and every 10 steps. labelled: 4 examples x 3 rows of
  # 32 px; generated: 8 samples x 4 rows (image, label, overlay, low confidence).
  for step in (0, 10, 20):
    labelled = np.asarray(Image.open(workdir / "grids" / f"{step:07d}_labelled.png"))
    generated = np.asarray(Image.open(workdir / "grids" / f"{step:07d}_generated.png"))
    assert labelled.shape == (3 * 34 + 2, 4 * 34 + 2, 3)
    assert generated.shape == (4 * 34 + 2, 8 * 34 + 2, 3)
    assert labelled.std() > 10 and generated.std() > 10

  assert "FG-mIoU" in log and f"final (step {STEPS})" in log
  assert f"step {STEPS}/{STEPS}" in log and "it/s" in log and "ETA" in log


def test_profile_steps_trace(full_run):
  workdir, log = full_run
  traces = list((workdir / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0, traces
  events = json.load(gzip.open(next(traces[0].parent.glob("*.trace.json.gz"))))["traceEvents"]
  names = collections.Counter(e.get("name", "") for e in events if e.get("ph") == "X")
  # One pmapped iteration program dispatched per traced iteration (2 and 3),
  # nothing of the steps before or after (jax's Python-level pmap entry).
  dispatches = sum(n for k, n in names.items() if k.startswith("$pmap.py") and
                   k.endswith(" wrapped"))
  assert dispatches == PROFILE_STEPS[1] - PROFILE_STEPS[0], names.most_common(20)
  assert "Profiling steps 2..3 into" in log and "Profile written to" in log


def test_kill_and_resume_is_bitwise(full_run, runs):
  code, log, workdir = runs["killed"]
  assert code == -signal.SIGKILL, log[-3000:]
  assert 5 in runs["killed_steps"], runs["killed_steps"]
  assert STEPS not in runs["killed_steps"], "killed too late"

  code, log, _ = runs["restart"]
  assert code == 0, log[-5000:]
  assert "Resuming at step" in log
  assert "step 15: S restarted" in log and "step 15: S restarted" in full_run[1]
  # metrics.jsonl holds one history (rows after the restored step were dropped).
  assert [r["step"] for r in metric_writers.read_jsonl(workdir, prefix="train")] == [5, 10, 15, 20]
  assert [r["step"] for r in metric_writers.read_jsonl(workdir, prefix="val")] == [10, 20]

  expected = _final_state(full_run[0])
  resumed = _final_state(workdir)
  assert [p for p, _ in resumed] == [p for p, _ in expected]
  assert len(expected) > 50
  for (path, a), (_, b) in zip(resumed, expected):
    assert a.dtype == b.dtype and a.shape == b.shape, path
    assert np.array_equal(a, b), path  # bitwise (no tolerance)
  steps = [a for p, a in resumed if jax.tree_util.keystr(p) == "['step']"]
  assert [int(a) for a in steps] == [STEPS]


_NAN_SCRIPT = """
import importlib.util, sys
import numpy as np
from gmseg import annotate
from gmseg.data import pipeline

spec = importlib.util.spec_from_file_location("tiny", "configs/tiny.py")
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)
config = tiny.get_config("num_labelled=16")
load = annotate.labelled_arrays

def poisoned(config):
  # One NaN pixel in an example first drawn at iteration 2 (16 examples,
  # batches of 4: iterations 0-3 are one epoch), i.e. in step 3's metrics.
  arrays = load(config)
  sampler = pipeline.Sampler(arrays, config.batch.labelled, config.seed)
  j = int(sampler.indices(2)[0])
  arrays["image"][j, 5, 5, 0] = np.nan
  return arrays

annotate.labelled_arrays = poisoned
annotate.train_and_evaluate(config, sys.argv[1])
"""


def test_nan_guard_names_the_step(runs):
  code, log, workdir = runs["nan"]
  assert code != 0
  assert "FloatingPointError: Non-finite metrics at step 3: " in log, log[-3000:]
  assert "ann/match_loss=nan" in log
  # Checked before anything is written or saved at step 5.
  assert metric_writers.read_jsonl(workdir, prefix="train") == []
  assert not (workdir / "checkpoints" / "5").exists()


def test_summarize_metrics_names_first_bad_step():
  from gmseg import annotate
  ok = {"loss": np.array([0.5, 0.5]), "norm": np.array([2.0, 2.0])}
  history = [(1, ok), (2, {"loss": np.array([1.5, 1.5])}), (3, ok)]
  assert annotate.summarize_metrics(history) == {"loss": 2.5 / 3, "norm": 2.0}
  bad = {"loss": np.array([np.inf, np.inf]), "norm": np.array([np.nan, np.nan])}
  with pytest.raises(FloatingPointError, match=r"at step 7: loss=inf, norm=nan"):
    annotate.summarize_metrics([(6, ok), (7, bad), (8, bad)])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.skipif(os.environ.get("GMSEG_MULTIHOST_TEST") != "1",
                    reason="2-process CPU run compiles in both processes (minutes on "
                           "2 cores); set GMSEG_MULTIHOST_TEST=1 to run it.")
def test_two_processes(full_run, env):
  root, e = env
  workdir = root / "multihost"
  logs = root / "multihost_logs"
  # The README's command: launch/multihost.sh adds --multihost and the
  # coordinator flags to each of the two processes.
  proc = subprocess.run(
      ["bash", str(REPO / "launch" / "multihost.sh"), "local", "2", "--", str(LAUNCH),
       "--config=configs/tiny.py", "--config.train.seg_restart_every=5",
       f"--workdir={workdir}"],
      cwd=REPO, env=dict(e, GMSEG_PYTHON=sys.executable, GMSEG_PORT=str(_free_port()),
                         GMSEG_LOG_DIR=str(logs)),
      capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  second = (logs / "process_1.log").read_text()
  assert "Process 0 of 2" in proc.stderr and "Process 1 of 2" in second
  # Only process 0 printed the table and wrote metrics (one line per log step).
  assert "FG-mIoU" in proc.stdout and "FG-mIoU" not in second
  train = metric_writers.read_jsonl(workdir, prefix="train")
  assert [r["step"] for r in train] == [5, 10, 15, 20]
  assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
  assert len(list((workdir / "grids").glob("*.png"))) == 6
  # 2 processes x 1 device run the global batch of 1 process x 1 device. The
  # pmeans sum in another order, and the annotator's Adam steps amplify that
  # float32 noise in the first iterations (from random networks, where the
  # matched gradients are nearly orthogonal and Adam scales any difference to
  # a step of the learning rate). Measured relative differences of the
  # first logged window (steps 1-5; session 7): the segmenter's loss 8e-7 and
  # label confidence 3e-7, the annotator's norms 2e-4 to 9e-3 (g_real 3.5e-4,
  # grad 8.9e-3), shrinking by step 20 (g_real 1e-7). So the segmenter's
  # metrics, which a wrong data split or reduction would move by far more,
  # are compared tightly, the annotator's norms loosely, the final state
  # structurally.
  single = metric_writers.read_jsonl(full_run[0], prefix="train")[0]
  assert train[0]["step"] == single["step"] == 5
  for key, value in single.items():
    if key not in ("step", "time", "prefix"):
      rtol = 1e-5 if key.startswith("seg/") and not key.endswith("norm") else 3e-2
      assert np.isclose(train[0][key], value, rtol=rtol, atol=1e-7), (key, train[0][key], value)
  multi, one = _final_state(workdir), _final_state(full_run[0])
  assert [p for p, _ in multi] == [p for p, _ in one]
  for (path, a), (_, b) in zip(multi, one):
    assert a.shape == b.shape and a.dtype == b.dtype and np.all(np.isfinite(a)), path


def test_resume_config_changes_are_listed():
  import importlib.util
  from gmseg import workdir as workdir_lib
  spec = importlib.util.spec_from_file_location("tiny", REPO / "configs" / "tiny.py")
  tiny = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny)
  saved = metric_writers.to_jsonable(tiny.get_config().to_dict())
  assert workdir_lib.config_changes(saved, tiny.get_config()) == {}
  assert workdir_lib.config_changes(None, tiny.get_config()) == {}
  changes = workdir_lib.config_changes(saved, tiny.get_config("steps=30,seed=2"))
  assert workdir_lib.format_changes(changes) == "seed: 0 -> 2; train.steps: 20 -> 30"
  with pytest.raises(ValueError, match="Unknown config argument 'stpes'"):
    tiny.get_config("stpes=3")


# ------------------------------------------------- resuming a finished run's copy


def _copy_run(src, dst):
  import shutil
  shutil.copytree(src, dst, ignore=shutil.ignore_patterns("run.lock"))
  return dst


@pytest.fixture(scope="module")
def resumes(full_run, env):
  """Copies of the uninterrupted run resumed with other configs or damage.

  width:   segmenter widths changed -> stops before restoring, one message.
  past:    train.steps=10 below the checkpoint's 20 -> says the run is past it.
  history: harmless changes (learning rate, eval cadence) at the final step.
  damaged: checkpoint 20's largest data file truncated -> resumes from 15,
           reruns steps 16-20 and must end bitwise equal to the uninterrupted run.
  """
  root, e = env
  src = full_run[0]
  cases = {
      "width": ["--config.segmenter.widths=(16, 16, 16, 32, 32)"],
      "past": [],
      "history": ["--config.ann_optim.lr=0.002", "--config.train.eval_every=5"],
      "damaged": [],
  }
  work = {k: _copy_run(src, root / f"resume_{k}") for k in cases}
  data = sorted((work["damaged"] / "checkpoints" / str(STEPS) / "state" / "d").iterdir(),
                key=lambda p: -p.stat().st_size)[0]
  data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
  procs = {}
  for k, extra in cases.items():
    cmd = _command(work[k], *extra)
    if k == "past":
      cmd[2] = "--config=configs/tiny.py:steps=10"
    log = open(root / f"resume_{k}.log", "w")
    procs[k] = (_popen(cmd, e, log), log, time.monotonic())
  out = {}
  for k, (proc, log, start) in procs.items():
    code, text = _finish(proc, log.name)
    log.close()
    out[k] = (code, text, work[k], time.monotonic() - start)
  return out


def _error_lines(log):
  return [line for line in log.splitlines() if line.startswith("error:")]


def test_resume_with_changed_width_stops_before_restoring(full_run, resumes):
  code, log, workdir, _ = resumes["width"]
  assert code == 1, log[-3000:]
  errors = _error_lines(log)
  assert len(errors) == 1, log[-3000:]
  assert ("segmenter.widths: [8, 16, 16, 32, 32] -> [16, 16, 16, 32, 32]" in errors[0]
          and "new --workdir" in errors[0]), errors
  assert "Traceback" not in log and "Event loop" not in log
  assert (workdir / "config.json").read_text() == (full_run[0] / "config.json").read_text()
  assert not (workdir / "config_history.jsonl").exists()


def test_resume_below_the_checkpoint_step_says_so(resumes):
  code, log, _, _ = resumes["past"]
  assert code == 1, log[-3000:]
  errors = _error_lines(log)
  assert len(errors) == 1 and f"already at step {STEPS}, past train.steps=10" in errors[0], log
  assert "Resuming at step" not in log


def test_resume_history_is_recorded(full_run, resumes):
  from gmseg import restore
  code, log, workdir, _ = resumes["history"]
  assert code == 0, log[-3000:]
  assert "Resuming with a config that differs" in log and "ann_optim.lr: 0.001 -> 0.002" in log
  # config.json is the run's start; the history names step, keys, old -> new.
  assert (workdir / "config.json").read_text() == (full_run[0] / "config.json").read_text()
  history = [json.loads(line) for line in (workdir / "config_history.jsonl").open()]
  assert [(h["step"], h["changes"]) for h in history] == [
      (STEPS, {"ann_optim.lr": [0.001, 0.002], "train.eval_every": [10, 5]})]
  assert restore.load_config(workdir).ann_optim.lr == 0.001
  assert restore.load_config(workdir, step=STEPS).ann_optim.lr == 0.002
  assert restore.load_config(workdir, step=STEPS - 5).train.eval_every == 10


def test_damaged_latest_checkpoint_resumes_from_the_previous(full_run, resumes):
  code, log, workdir, _ = resumes["damaged"]
  assert code == 0, log[-5000:]
  assert f"Skipping checkpoint step {STEPS}" in log and "does not read completely" in log, log
  assert f"Resuming at step {STEPS - 5} of {STEPS}" in log
  assert (workdir / "checkpoints_damaged" / str(STEPS)).is_dir()
  # One history in metrics.jsonl: the copied rows after step 15 were dropped.
  train = metric_writers.read_jsonl(workdir, prefix="train")
  assert [r["step"] for r in train] == [5, 10, 15, 20]
  assert [r["step"] for r in metric_writers.read_jsonl(workdir, prefix="val")] == [10, 20]
  expected, resumed = _final_state(full_run[0]), _final_state(workdir)
  assert [p for p, _ in resumed] == [p for p, _ in expected]
  for (path, a), (_, b) in zip(resumed, expected):
    assert np.array_equal(a, b), path
