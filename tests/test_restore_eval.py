"""restore: config/segmenter restore, evaluate_checkpoint and 5-fold CV equal the
evaluate module on the same parameters; best/latest/N step resolution; the
launch/evaluate.py CLI writes JSON.

One tiny annotate-phase workdir (a Checkpointer holding 6 snapshots whose
segmenter parameters differ, on conftest's `tiny_annotate`) serves every
test; the labelled set is the offline rendered faces, resized to 16x16.
"""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from gmseg import build
from gmseg import checkpoint
from gmseg import evaluate
from gmseg import restore
from gmseg import steps

from conftest import perturbed

REPO = pathlib.Path(__file__).resolve().parents[1]
SNAPSHOTS = (2, 4, 6, 8, 10, 12)
VAL_FG_MIOU = {2: 0.1, 4: 0.5, 6: 0.2, 8: 0.3, 10: 0.4, 12: 0.05}  # best: step 4
N_TEST = 10


@pytest.fixture(scope="module")
def run(tiny_annotate, tmp_path_factory):
  config, method, state = (tiny_annotate[k] for k in ("config", "method", "state"))
  # Distinct segmenters: each snapshot's weights are the init plus noise.
  params = {step: perturbed(state.seg_params, step, 0.3) for step in SNAPSHOTS}
  workdir = tiny_annotate["write_run"](tmp_path_factory.mktemp("annotate_run"), {
      step: (state.replace(seg_params=params[step]), VAL_FG_MIOU[step]) for step in SNAPSHOTS})
  test = build.split_arrays(config, "test", limit=N_TEST)
  # One jitted apply with params as an argument: one compile for every snapshot.
  apply = jax.jit(lambda p, x: steps.predict(method, p, {}, x))
  return dict(config=config, workdir=workdir, method=method, params=params, test=test,
              apply=apply)


def _direct_predict(run, step):
  return lambda x: run["apply"](run["params"][step], x)


def test_load_config_round_trips(run):
  loaded = restore.load_config(run["workdir"])
  assert loaded.segmenter.widths == [4, 4, 8, 8, 8]
  assert tuple(loaded.class_names) == run["config"].class_names
  assert loaded.data.resolution == 16
  with pytest.raises(FileNotFoundError, match="config.json"):
    restore.load_config(run["workdir"] / "checkpoints")


def test_resolve_step(run):
  d = restore.checkpoint_dir(run["workdir"], "annotate")
  assert restore.resolve_step(d, "best") == 4
  assert restore.resolve_step(d, "latest") == 12
  assert restore.resolve_step(d, 6) == 6
  assert restore.resolve_step(d, "8") == 8
  with pytest.raises(FileNotFoundError, match="available"):
    restore.resolve_step(d, 7)
  with pytest.raises(ValueError, match="best"):
    restore.resolve_step(d, "newest")
  with pytest.raises(FileNotFoundError, match="downstream"):
    restore.resolve_step(restore.checkpoint_dir(run["workdir"], "downstream"))


def test_restore_segmenter_gives_the_saved_params(run):
  module, params, stats = restore.restore_segmenter(run["workdir"], "annotate", step="best")
  assert stats == {}
  assert module.widths == (4, 4, 8, 8, 8) and module.num_classes == 6
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(run["params"][4])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluate_checkpoint_equals_direct_evaluation(run):
  result = restore.evaluate_checkpoint(run["workdir"], split="test", which="annotate",
                                       step="best", limit=N_TEST)
  direct = evaluate.evaluate_segmenter(_direct_predict(run, 4), run["test"]["image"],
                                       run["test"]["label"], 6, batch_size=4)
  assert result["step"] == 4 and result["num_images"] == N_TEST
  np.testing.assert_array_equal(np.array(result["confusion"]), direct["confusion"])
  assert np.array(result["confusion"]).sum() == N_TEST * 16 * 16
  for k in ("pacc", "miou", "fg_miou"):
    assert result[k] == pytest.approx(direct[k], abs=1e-12)
  np.testing.assert_allclose(result["iou"], direct["iou"])
  json.dumps(result)  # JSON-serialisable as returned
  # A different snapshot scores differently (the restore really picks the step).
  other = restore.evaluate_checkpoint(run["workdir"], which="annotate", step=12, limit=N_TEST)
  assert other["confusion"] != result["confusion"]


def test_cross_validate_equals_five_fold_cv(run):
  result = restore.cross_validate(run["workdir"], which="annotate", last=len(SNAPSHOTS),
                                  limit=N_TEST)
  confusions = {s: evaluate.per_image_confusions(
      _direct_predict(run, s), run["test"]["image"], run["test"]["label"], 6, batch_size=4)
                for s in SNAPSHOTS}
  direct = evaluate.five_fold_cv(confusions, last=len(SNAPSHOTS))
  assert result["snapshots"] == list(SNAPSHOTS)
  assert result["steps"] == direct["steps"]
  np.testing.assert_allclose(result["per_fold"], direct["per_fold"])
  assert result["mean"] == pytest.approx(direct["mean"])
  assert result["std"] == pytest.approx(direct["std"])
  # last=N uses only the latest N snapshots.
  last3 = restore.cross_validate(run["workdir"], which="annotate", last=3, limit=N_TEST)
  assert last3["snapshots"] == [8, 10, 12]
  assert set(last3["steps"]) <= {8, 10, 12}


def test_evaluate_cli_writes_json(run):
  # A subprocess: absl flags are process-global and other launchers define some of the same names.
  proc = subprocess.run(
      [sys.executable, str(REPO / "launch" / "evaluate.py"), f"--workdir={run['workdir']}",
       "--which=annotate", "--step=latest", f"--limit={N_TEST}"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  path = run["workdir"] / "eval" / "annotate_test_latest.json"
  written = json.loads(path.read_text())
  assert written["step"] == 12
  assert "FG-mIoU" in proc.stdout and "skin" in proc.stdout and str(path) in proc.stdout
  direct = evaluate.evaluate_segmenter(_direct_predict(run, 12), run["test"]["image"],
                                       run["test"]["label"], 6, batch_size=4)
  assert written["miou"] == pytest.approx(direct["miou"])


def _damaged_copy(run, tmp_path, step, how):
  import shutil
  workdir = tmp_path / "copy"
  shutil.copytree(run["workdir"], workdir)
  data = sorted((workdir / "checkpoints" / str(step) / "state" / "d").iterdir(),
                key=lambda p: -p.stat().st_size)[0]
  raw = bytearray(data.read_bytes())
  if how == "truncate":
    raw = raw[: len(raw) // 2]
  else:  # flip bytes in the middle of the file (array data)
    for i in np.random.default_rng(0).integers(len(raw) // 4, 3 * len(raw) // 4, size=400):
      raw[i] ^= 0xFF
  data.write_bytes(bytes(raw))
  return workdir


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_evaluating_a_damaged_step_fails_loudly(run, tmp_path, how):
  workdir = _damaged_copy(run, tmp_path, 8, how)
  with pytest.raises(checkpoint.CheckpointDamagedError,
                     match=r"step 8 .*(does not read completely|checksum mismatch|non-finite)"):
    restore.evaluate_checkpoint(workdir, which="annotate", step=8, limit=N_TEST)
  # The other steps still evaluate.
  assert restore.evaluate_checkpoint(workdir, which="annotate", step=6, limit=2)["step"] == 6
  # The CLI: one line, exit 1, no traceback.
  proc = subprocess.run(
      [sys.executable, str(REPO / "launch" / "evaluate.py"), f"--workdir={workdir}",
       "--which=annotate", "--step=8", "--limit=2"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "Checkpoint step 8" in errors[0], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr


def test_downstream_without_a_run_names_the_missing_phase(run, tmp_path):
  proc = subprocess.run(
      [sys.executable, str(REPO / "launch" / "downstream.py"), "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'empty'}"], capture_output=True, text=True, timeout=300,
      cwd=REPO)
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "run phase one (launch/annotate.py)" in errors[0], proc.stderr
  assert "--which" not in proc.stderr and "Traceback" not in proc.stderr
