"""Phase two: generation (labels, confidence, filters), the tfds set, training and resume.

A tiny annotate-phase workdir (config.json + 3 annotator snapshots whose
parameters differ, best = step 10; conftest's `tiny_annotate`) is built once;
each test copies it, since phase two writes into `<workdir>/downstream`.
"""
import gzip
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmseg import checkpoint
from gmseg import downstream
from gmseg import metric_writers
from gmseg import restore
from gmseg import steps
from gmseg.data import synthetic

from conftest import perturbed
from conftest import tiny_annotate_config as tiny_config

SNAPSHOTS = {5: 0.1, 10: 0.3, 15: 0.2}  # step -> validation FG-mIoU; best: 10
N = 10  # tiny_config's downstream.num_images


@pytest.fixture(scope="module")
def setup(tiny_annotate, tmp_path_factory):
  run = tiny_annotate
  ann = {step: perturbed(run["state"].ann_params, step, 0.5) for step in SNAPSHOTS}
  base = run["write_run"](tmp_path_factory.mktemp("annotate_run"), {
      step: (run["state"].replace(ann_params=ann[step]), fg) for step, fg in SNAPSHOTS.items()})
  counter = iter(range(100))

  def workdir():
    path = tmp_path_factory.getbasetemp() / f"run{next(counter)}"
    shutil.copytree(base, path)
    return path

  return dict(data_dir=run["data_dir"], gen=run["gen"], method=run["method"],
              state=run["state"], ann=ann, workdir=workdir)


@pytest.fixture(scope="module")
def plain(setup):
  """filter='none': every generated image, read back sorted by id."""
  workdir = setup["workdir"]()
  config = tiny_config(setup["data_dir"])
  path = downstream.generate(config, workdir)
  return dict(workdir=workdir, config=config, path=path, data=synthetic.read(path))


def test_generate_writes_every_image_with_the_annotators_labels(setup, plain):
  data = plain["data"]
  assert plain["path"] == plain["workdir"] / "downstream" / "dataset"
  assert list(data["id"]) == [f"{i:08d}" for i in range(N)]
  assert data["image"].shape == (N, 16, 16, 3) and data["image"].dtype == np.uint8
  assert data["label"].shape == (N, 16, 16) and data["label"].max() < 6
  # Max of 6 probabilities is at least 1/6.
  assert data["confidence"].min() >= np.floor(255 / 6)
  # Recompute batch 1 (ids 4..7) with the steps API and the best annotator (step 10).
  key = jax.random.fold_in(jax.random.PRNGKey(0), downstream._LATENT_TAG)
  k_z, k_noise = jax.random.split(jax.random.fold_in(key, 1))
  z = jax.random.normal(k_z, (4, setup["gen"].z_dim))
  state = setup["state"].replace(ann_params=setup["ann"][10])
  images, probs = jax.jit(lambda s, g, z, r: steps.annotate_samples(setup["method"], s, g, z, r))(
      state, setup["gen"].params, z, k_noise)
  images, probs = np.asarray(images), np.asarray(probs)
  assert np.mean(data["label"][4:8] == probs.argmax(-1)) > 0.99
  np.testing.assert_allclose(data["confidence"][4:8], probs.max(-1) * 255, atol=1.01)
  np.testing.assert_allclose(data["image"][4:8], (images + 1) * 127.5, atol=1.01)
  # Score = mean confidence; the labels are not constant (the annotator is not trivial).
  np.testing.assert_allclose(data["score"], data["confidence"].mean((1, 2)) / 255, atol=3e-3)
  assert len(np.unique(data["label"])) > 1
  info = json.loads((plain["workdir"] / "downstream" / "generation.json").read_text())
  assert info["num_kept"] == N and info["annotator_steps"] == [10]
  assert (plain["workdir"] / "downstream" / "grids" / "dataset.png").is_file()
  assert not (plain["workdir"] / "downstream" / "grids" / "dropped.png").exists()


def test_generate_reuses_and_refuses_other_settings(plain):
  stamp = (plain["path"] / "gmseg_synthetic" / "1.0.0" / "dataset_info.json").stat().st_mtime_ns
  assert downstream.generate(plain["config"], plain["workdir"]) == plain["path"]
  assert (plain["path"] / "gmseg_synthetic" / "1.0.0" /
          "dataset_info.json").stat().st_mtime_ns == stamp
  other = tiny_config(plain["config"].data.data_dir, num_images=12)
  with pytest.raises(ValueError, match="delete"):
    downstream.generate(other, plain["workdir"])


def test_confidence_filter_drops_unconfident_images(setup, plain):
  scores = np.sort(plain["data"]["score"])
  threshold = float((scores[4] + scores[5]) / 2)  # between two scores: 5 kept
  workdir = setup["workdir"]()
  config = tiny_config(setup["data_dir"], filter="confidence", min_confidence=threshold)
  data = synthetic.read(downstream.generate(config, workdir))
  expected = [f"{i:08d}" for i in range(N) if plain["data"]["score"][i] > threshold]
  assert list(data["id"]) == expected and len(expected) == 5
  assert data["score"].min() >= threshold
  assert (workdir / "downstream" / "grids" / "dropped.png").is_file()
  strict = tiny_config(setup["data_dir"], filter="confidence", min_confidence=0.9999)
  with pytest.raises(ValueError, match="dropped all"):
    downstream.generate(strict, setup["workdir"]())


def test_ensemble_filter_keeps_the_least_uncertain_fraction(setup, plain):
  workdir = setup["workdir"]()
  config = tiny_config(setup["data_dir"], filter="ensemble", keep_fraction=0.6)
  data = synthetic.read(downstream.generate(config, workdir))
  info = json.loads((workdir / "downstream" / "generation.json").read_text())
  assert info["annotator_steps"] == [10, 15, 5]  # the chosen one, then the latest others
  assert len(data["id"]) == 6 and info["num_kept"] == 6
  assert info["mean_uncertainty"] > 0  # the members disagree somewhere
  assert data["score"].max() == pytest.approx(info["kept_max_uncertainty"], rel=1e-6)
  assert data["score"].min() >= -1e-6  # JS divergence is non-negative
  # Labels still come from the chosen annotator: equal to the unfiltered run's.
  ids = [int(i) for i in data["id"]]
  np.testing.assert_array_equal(data["label"], plain["data"]["label"][ids])
  # Kept = least uncertain: dropping fewer images keeps a superset.
  more = tiny_config(setup["data_dir"], filter="ensemble", keep_fraction=0.8)
  kept_more = synthetic.read(downstream.generate(more, setup["workdir"]()))["id"]
  assert set(data["id"]) < set(kept_more) and len(kept_more) == 8


def test_js_divergence():
  p = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(0), (3, 2, 4, 4, 5)), -1))
  ent = lambda q: -(q * np.log(q)).sum(-1)
  np.testing.assert_allclose(downstream._js_divergence(p), ent(p.mean(0)) - ent(p).mean(0),
                             rtol=1e-5, atol=1e-6)
  agree = np.broadcast_to(p[:1], p.shape)
  np.testing.assert_allclose(downstream._js_divergence(agree), 0.0, atol=1e-6)
  one_hot = np.zeros_like(p)  # member 0 says class 0, members 1 and 2 class 1
  one_hot[0, ..., 0] = one_hot[1:, ..., 1] = 1.0
  np.testing.assert_allclose(downstream._js_divergence(one_hot),
                             -(np.log(1 / 3) / 3 + 2 * np.log(2 / 3) / 3), rtol=1e-6)


def test_ensemble_needs_two_snapshots(setup):
  workdir = setup["workdir"]()
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=1, best_key="fg_miou")
  ckpt.save(20, setup["state"].replace(step=jnp.int32(20)), metrics={"fg_miou": 0.9})
  ckpt.wait()
  ckpt.close()  # keep=1 (+ best, the same step): only step 20 is left
  with pytest.raises(ValueError, match="at least 2"):
    downstream.generate(tiny_config(setup["data_dir"], filter="ensemble"), workdir)


def _copy_dataset(plain, workdir):
  shutil.copytree(plain["workdir"] / "downstream" / "dataset", workdir / "downstream" / "dataset")
  shutil.copy(plain["workdir"] / "downstream" / "generation.json", workdir / "downstream")


def test_train_resumes_to_the_uninterrupted_result(setup, plain):
  straight, resumed = setup["workdir"](), setup["workdir"]()
  _copy_dataset(plain, straight)
  _copy_dataset(plain, resumed)
  result = downstream.train(tiny_config(setup["data_dir"], epochs=2), straight)
  first = downstream.train(tiny_config(setup["data_dir"], epochs=1), resumed)
  assert first["dataset_size"] == N and first["steps"] == 2
  # The resumed run also traces its updates 3 and 4 (--profile_steps=2:4).
  again = downstream.train(tiny_config(setup["data_dir"], epochs=2), resumed, profile_steps=(2, 4))
  traces = list((resumed / "downstream" / "profile").glob("plugins/profile/*/*.trace.json.gz"))
  assert len(traces) == 1 and list(traces[0].parent.glob("*.xplane.pb")), traces
  # One call of the jitted step per traced update (jax nests two events per call).
  calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in json.load(gzip.open(traces[0]))[
      "traceEvents"] if e.get("ph") == "X" and e.get("name") == "PjitFunction(supervised_step)")
  outer = [c for i, c in enumerate(calls) if all(c[0] >= end for _, end in calls[:i])]
  assert len(outer) == 2, calls

  directory = restore.checkpoint_dir(resumed, "downstream")
  ckpt = checkpoint.Checkpointer(directory, best_key="fg_miou")
  assert ckpt.all_steps() == [1, 2] and ckpt.best_step() == again["best_epoch"]
  ckpt.close()
  a = checkpoint.restore_subtree(restore.checkpoint_dir(straight, "downstream"), ("seg_params",))
  b = checkpoint.restore_subtree(directory, ("seg_params",))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)
  step = checkpoint.restore_subtree(directory, ("step",))
  assert int(step) == 4  # 2 epochs x 2 steps
  # Training moved the weights away from the fresh initialisation.
  fresh = downstream.init_state(plain["config"], (16, 16, 3), optax.adam(1e-3)).seg_params
  assert any(not np.allclose(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(fresh), jax.tree.leaves(b)))
  # Each epoch's validation is logged once, across the interruption.
  records = metric_writers.read_jsonl(resumed / "downstream", prefix="val")
  assert [r["epoch"] for r in records] == [1, 2]
  assert again["val"]["miou"] == pytest.approx(result["val"]["miou"], abs=1e-6)
  # The downstream checkpoint evaluates to what training logged (same code path).
  scored = restore.evaluate_checkpoint(resumed, split="test", which="downstream",
                                       step="latest", limit=4)
  assert scored["step"] == 2
  assert scored["miou"] == pytest.approx(records[-1]["miou"], abs=1e-9)
  assert scored["fg_miou"] == pytest.approx(records[-1]["fg_miou"], abs=1e-9)

