"""Install and launch on accelerators, as far as a CPU machine can check them.

launch/setup.sh's choice of JAX build (GMSEG_ACCEL, in its dry-run mode: no
GPU or TPU jax is installed here), pyproject.toml's extras, launch/multihost.sh's
commands (dry run) and its errors, and gmseg.profiling (--profile_steps) on a
small jitted loop. The two-process run through launch/multihost.sh and the
trace of a real annotate run are in tests/test_annotate.py.
"""
import gzip
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO
from gmseg import profiling


def _bash(script, *args, **env):
  return subprocess.run(["bash", str(REPO / "launch" / script), *args], cwd=REPO,
                        env=dict(os.environ, **env), capture_output=True, text=True,
                        timeout=60)


# ------------------------------------------------------------------ setup.sh


def _setup_lines(accel=None):
  env = {"GMSEG_SETUP_DRY_RUN": "1"}
  if accel is not None:
    env["GMSEG_ACCEL"] = accel
  proc = _bash("setup.sh", **env)
  assert proc.returncode == 0, proc.stderr
  return proc.stdout.splitlines()


def test_setup_default_is_cpu_as_before():
  # CI's install: requirements, gmseg without dependencies, the DCGAN weights.
  lines = _setup_lines()
  assert lines == _setup_lines("cpu")
  assert [l for l in lines if "venv" not in l.split()[:3]] == [
      ".venv/bin/python -m pip install -q --upgrade pip",
      ".venv/bin/python -m pip install -q -r requirements.txt",
      ".venv/bin/python -m pip install -q --no-deps -e .",
      ".venv/bin/python -m pip install -q --no-deps gan-face-generate==1.1.1"]


@pytest.mark.parametrize("accel", ["cuda12", "cuda13", "tpu"])
def test_setup_installs_the_accelerator_extra(accel):
  lines = _setup_lines(accel)
  installs = [l for l in lines if " -e " in l]
  assert installs == [f".venv/bin/python -m pip install -q -e .[{accel}]"]
  # After requirements.txt (its jax pins the plugin's version), before the DCGAN.
  assert lines.index(installs[0]) == lines.index(
      ".venv/bin/python -m pip install -q -r requirements.txt") + 1


def test_setup_rejects_an_unknown_accelerator():
  proc = _bash("setup.sh", GMSEG_ACCEL="cuda11", GMSEG_SETUP_DRY_RUN="1")
  assert proc.returncode == 1 and proc.stdout == ""
  assert proc.stderr.splitlines() == [
      "error: GMSEG_ACCEL=cuda11 is not one of cpu, cuda12, cuda13, tpu (e.g. "
      "GMSEG_ACCEL=cuda12 bash launch/setup.sh; unset for CPU)."]


def test_pyproject_extras_match_setup():
  tomllib = pytest.importorskip("tomllib")  # Python 3.11+
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  extras = project["optional-dependencies"]
  assert extras == {"cpu": [], "cuda12": ["jax[cuda12]>=0.10.2"],
                    "cuda13": ["jax[cuda13]>=0.10.2"], "tpu": ["jax[tpu]>=0.10.2"]}
  # The extras' jax bound is requirements.txt's, which `pip install -e .[x]` reads.
  assert "jax>=0.10.2" in (REPO / "requirements.txt").read_text().splitlines()
  assert project["dynamic"] == ["dependencies"]


# ------------------------------------------------------------- multihost.sh


def _multihost(*args, **env):
  return _bash("multihost.sh", *args, GMSEG_LAUNCH_DRY_RUN="1", **env)


def test_multihost_tpu_runs_on_every_worker():
  proc = _multihost("tpu", "my-v4-32", "us-central2-b", "--", "launch/annotate.py",
                    "--config=configs/tiny.py", "--workdir=/mnt/shared/runs/a b",
                    GMSEG_GCLOUD_FLAGS="--project=p1")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
      "gcloud compute tpus tpu-vm ssh my-v4-32 --zone=us-central2-b --worker=all "
      "--project=p1 '--command=cd gmseg && .venv/bin/python launch/annotate.py "
      "--config=configs/tiny.py --workdir=/mnt/shared/runs/a\\ b --multihost'"]
  setup = _multihost("tpu-setup", "my-v4-32", "z", GMSEG_REMOTE_DIR="code/gmseg")
  assert setup.stdout.splitlines() == [
      "gcloud compute tpus tpu-vm ssh my-v4-32 --zone=z --worker=all "
      "'--command=cd code/gmseg && GMSEG_ACCEL=tpu bash launch/setup.sh'"]


def test_multihost_local_and_process_commands():
  proc = _multihost("local", "3", "--", "launch/annotate.py", "--workdir=w",
                    GMSEG_PORT="1234", GMSEG_ONE_GPU_EACH="1")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
      f"env JAX_LOCAL_DEVICE_IDS={i} .venv/bin/python launch/annotate.py --workdir=w "
      f"--multihost --coordinator_address=localhost:1234 --num_processes=3 --process_id={i}"
      for i in range(3)]
  proc = _multihost("process", "node0:8476", "4", "3", "--", "launch/annotate.py", "--workdir=w")
  assert proc.stdout.splitlines() == [
      ".venv/bin/python launch/annotate.py --workdir=w --multihost "
      "--coordinator_address=node0:8476 --num_processes=4 --process_id=3"]


@pytest.mark.parametrize("args, message", [
    (["local", "0", "--", "launch/annotate.py"], "process count 0 is not a positive integer"),
    (["local", "2", "--", "launch/nope.py"], "launcher launch/nope.py not found"),
    (["local", "2", "--", "launch/sample.py"], "launch/sample.py has no --multihost flag"),
    (["local", "2", "--", "launch/annotate.py", "--multihost"], "launch/multihost.sh adds them"),
    (["process", "node0", "2", "0", "--", "launch/annotate.py"], "is not HOST:PORT"),
    (["process", "node0:1", "2", "2", "--", "launch/annotate.py"], "process id 2 is not in 0..1"),
    (["tpu", "name", "zone", "launch/annotate.py"], "usage: launch/multihost.sh"),
])
def test_multihost_errors(args, message):
  proc = _multihost(*args)
  assert proc.returncode == 1 and proc.stdout == ""
  lines = proc.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_multihost_local_stops_the_others_when_one_fails(tmp_path):
  # A failing process 1 must not leave process 0 waiting for it: the script
  # stops it and exits with the failure's status. Both processes sleep unless
  # they are process 1, which exits 3 at once.
  launcher = tmp_path / "fake_launcher.py"
  launcher.write_text('import sys, time  # "multihost"\n'
                      'sys.exit(3) if "--process_id=1" in sys.argv else time.sleep(60)\n')
  proc = subprocess.run(["bash", str(REPO / "launch" / "multihost.sh"), "local", "2", "--",
                         str(launcher)], cwd=REPO, capture_output=True, text=True, timeout=30,
                        env=dict(os.environ, GMSEG_PYTHON=sys.executable, GMSEG_PORT="1",
                                 GMSEG_LOG_DIR=str(tmp_path / "logs")))
  assert proc.returncode == 3, proc.stderr
  assert "a process of the job failed (exit 3); stopping the others" in proc.stderr


# ------------------------------------------------------------ --profile_steps


def test_parse_window():
  assert profiling.parse_window("") is None and profiling.parse_window(None) is None
  assert profiling.parse_window("10:15") == (10, 15)
  assert profiling.parse_window(" 0:1 ") == (0, 1)
  for bad in ("5", "5:5", "6:5", "-1:3", "a:b", "1:2:3", "1.5:3", "1-3"):
    with pytest.raises(profiling.ProfileStepsError, match="is not START:STOP"):
      profiling.parse_window(bad)
  with pytest.raises(profiling.ProfileStepsError, match="choose START below 20"):
    profiling.check_window((20, 25), 20)
  profiling.check_window((19, 25), 20)  # a window past the end stops at the end


def test_launcher_rejects_a_bad_window(tmp_path):
  # One error line, before any work (the workdir is not created).
  proc = subprocess.run([sys.executable, "launch/annotate.py", "--config=configs/tiny.py",
                         f"--workdir={tmp_path / 'run'}", "--profile_steps=5:2"],
                        cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert errors == ["error: --profile_steps='5:2' is not START:STOP with 0 <= START < STOP; "
                    "e.g. --profile_steps=10:15 traces steps 10..14 (skip the first steps, "
                    "which compile)."], proc.stderr[-2000:]
  assert not (tmp_path / "run").exists()


def _loop(window, logdir, steps=6):
  """A loop of `steps` jitted updates driven as the training loops drive it;
  returns the traced step numbers (read back from the trace's annotations)."""
  update = jax.jit(lambda x: x * 0.5 + 1.0)
  x = jnp.ones((64, 64))
  profiler = profiling.StepProfiler(window, logdir)
  try:
    for step in range(steps):
      profiler.at(step)
      with jax.profiler.TraceAnnotation(f"gmseg_test_step_{step}"):
        x = update(x)
      profiler.at(step + 1, x)
    profiler.close(x)
  finally:
    profiler.close()
  traces = list(pathlib.Path(logdir).glob("plugins/profile/*/*.trace.json.gz"))
  if not traces:
    return None
  assert len(traces) == 1 and list(traces[0].parent.glob("*.xplane.pb"))
  names = {e.get("name", "") for e in json.load(gzip.open(traces[0]))["traceEvents"]}
  return sorted(int(n.rsplit("_", 1)[1]) for n in names if n.startswith("gmseg_test_step_"))


def test_step_profiler_traces_the_window(tmp_path):
  assert _loop((2, 4), tmp_path / "a") == [2, 3]
  # A window reaching past the loop's end is stopped by close().
  assert _loop((4, 100), tmp_path / "b") == [4, 5]
  assert _loop((7, 9), tmp_path / "c") is None  # never reached: no trace
  assert _loop(None, tmp_path / "d") is None and not (tmp_path / "d").exists()
