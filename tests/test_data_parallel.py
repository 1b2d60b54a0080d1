"""Phase two, fine-tuning, the supervised baseline and generation: 4 devices == 1.

The 1-device run is this pytest process (one CPU device: the jitted path);
the 4-device run is this file as a script in a subprocess with 4 fake CPU
devices (the pmapped path). Both run `_run` on a copy of the same tiny
annotate workdir (conftest's `tiny_annotate`): generate a synthetic set of
18 images in batches of 4 (two rounds of 4 devices, the last batch trimmed,
one batch index past the end dropped) with the 'ensemble' filter (30%
dropped by the two snapshots' disagreement), train the downstream segmenter
one epoch on it (augmented, one labelled image mixed into each batch),
fine-tune it, and train the supervised baseline. Each returns what it wrote
(the set, the three runs' parameters, logged losses); the tests compare.

The subprocess also runs the supervised step itself on labels whose ignored
pixels differ per device (pmapped over 4 devices against jitted on one), and
the divisibility errors.
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SNAPSHOTS = {5: 0.1, 10: 0.3}  # step -> validation FG-mIoU; best: 10
# Float32, the library's dtype. Parameters after each run: max |4 devices -
# 1 device| over all leaves / max |leaf| over all leaves (a leaf-wise ratio
# would divide by leaves that stay ~0). Measured: supervised baseline (3
# steps, SGD 1e-3) 1.1e-7; phase two (4 steps, SGD 0.05 with momentum,
# augmented synthetic images and a mixed labelled one) 1.2e-4, fine-tuning
# from it 1.7e-4. Phase two's losses agree to 1e-7 over the first 3 steps and
# its gradient norms differ by 3e-6 at step 1 (same parameters, same batch):
# float32 summation order (one batch of 4 against four of 1), which its
# larger steps carry into the parameters.
PARAM_TOL = 1e-3
LOSS_RTOL = 1e-4


def _config(data_dir):
  from conftest import tiny_annotate_config
  config = tiny_annotate_config(data_dir, num_images=18, gen_batch=4, filter="ensemble",
                                keep_fraction=0.7, epochs=1, augment=True, mix_labelled=1,
                                finetune_steps=2)
  # SGD: Adam divides each gradient entry by its own magnitude, so entries
  # that are ~0 (float32 reduction-order noise) move by ~lr either way.
  config.downstream.optim.name = "sgd"
  config.downstream.optim.lr = 0.05
  config.batch.labelled = 4  # the supervised baseline's and fine-tuning's global batch
  config.train.ckpt_every = 3
  return config


def _flat(tree) -> list:
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _run(data_dir, base: pathlib.Path, out: pathlib.Path) -> dict:
  """Generation, phase two, fine-tuning and the baseline in `out`; returns arrays."""
  import shutil
  from gmseg import checkpoint, downstream, metric_writers, restore, supervised
  from gmseg.data import synthetic
  config = _config(data_dir)
  run = out / "run"
  shutil.copytree(base, run)
  path = downstream.generate(config, run)
  arrays = {f"set/{k}": v for k, v in synthetic.read(path).items()}
  info = json.loads((run / "downstream" / "generation.json").read_text())
  arrays["set/num_kept"] = np.asarray(info["num_kept"])
  downstream.train(config, run)
  downstream.finetune(config, run)
  supervised.train(config, out / "sup", num_steps=3)
  for name, directory in (("down", restore.checkpoint_dir(run, "downstream")),
                          ("fine", downstream.finetune_dir(run) / "checkpoints"),
                          ("sup", out / "sup" / "checkpoints")):
    for i, leaf in enumerate(_flat(checkpoint.restore_subtree(directory, ("seg_params",)))):
      arrays[f"{name}/{i}"] = leaf
  arrays["down/loss"] = np.asarray([r["sup/loss"] for r in metric_writers.read_jsonl(
      run / "downstream", prefix="train")])
  arrays["sup/loss"] = np.asarray([r["loss"] for r in metric_writers.read_jsonl(
      out / "sup", prefix="supervised")])
  return arrays


def _step_with_ignored_pixels() -> dict:
  """The supervised step on 8 labelled images, pmapped over 4 devices and
  jitted on one; the first 3 images are mostly ignored pixels (255), so the
  devices' labelled counts differ."""
  import functools
  import flax.linen as nn
  import jax
  from gmseg import parallel, steps
  from gmseg import state as state_lib

  class SmallSeg(nn.Module):  # two convolutions: compiles in a fraction of the UNet's time

    @nn.compact
    def __call__(self, x, train=False):
      return nn.Conv(3, (1, 1))(nn.relu(nn.Conv(8, (3, 3))(x)))

  module = SmallSeg()
  tx = state_lib.make_optimizer("sgd", 0.1)
  method = state_lib.Method(gen_fn=None, z_dim=0, annotator=None, segmenter=module,
                            ann_tx=None, seg_tx=tx, matched=())
  state = jax.jit(lambda key: state_lib.segmenter_state(module, key, (16, 16, 3), tx))(
      jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  label = rng.integers(0, 3, (8, 16, 16)).astype(np.int32)
  label[:3][rng.random((3, 16, 16)) < 0.7] = 255
  batch = {"image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32), "label": label}
  step = jax.jit(functools.partial(steps.supervised_step, method=method))
  s1, m1 = step(state, batch)
  p_step = parallel.pmap_train_step(functools.partial(steps.supervised_step, method=method))
  s4, m4 = p_step(parallel.replicate(state), parallel.shard_batch(batch))
  s4 = parallel.unreplicate(s4)
  p1, p4, p0 = _flat(s1.seg_params), _flat(s4.seg_params), _flat(state.seg_params)
  scale = max(float(np.max(np.abs(x))) for x in p1)
  # Without the global count: each device's own mean, averaged.
  per_device = [float(step(state, {k: v[2 * d:2 * d + 2] for k, v in batch.items()})[1]["sup/loss"])
                for d in range(4)]
  return {"loss1": float(m1["sup/loss"]), "loss4": float(np.asarray(m4["sup/loss"])[0]),
          "mean_of_device_losses": float(np.mean(per_device)),
          "param_rel": max(float(np.max(np.abs(a - b))) for a, b in zip(p4, p1)) / scale,
          "moved_rel": max(float(np.max(np.abs(a - b))) for a, b in zip(p1, p0)) / scale}


def _errors(data_dir, run: pathlib.Path, out: pathlib.Path) -> dict:
  """Messages of the divisibility errors (global batches of 6 on 4 devices)."""
  from gmseg import downstream, parallel, supervised
  from gmseg.errors import UserError
  messages = {}
  config = _config(data_dir)
  config.batch.labelled = 6
  config.downstream.batch = 6
  for name, fn in (("supervised", lambda: supervised.train(config, out / "bad_sup", 1)),
                   ("downstream", lambda: downstream.train(config, run))):
    try:
      fn()
      messages[name] = None
    except parallel.BatchSplitError as e:
      assert isinstance(e, UserError) and isinstance(e, ValueError)
      messages[name] = str(e)
  return messages


def _worker(data_dir: str, base: str, out: str) -> None:
  import jax
  assert jax.device_count() == 4, jax.devices()
  out = pathlib.Path(out)
  np.savez(out / "four.npz", **_run(data_dir, pathlib.Path(base), out))
  result = {"step": _step_with_ignored_pixels(),
            "errors": _errors(data_dir, out / "run", out)}
  (out / "four.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def runs(tiny_annotate, tmp_path_factory):
  """(1-device arrays, 4-device arrays, the subprocess's JSON)."""
  import jax
  from conftest import perturbed
  assert jax.device_count() == 1
  run = tiny_annotate
  base = run["write_run"](tmp_path_factory.mktemp("dp_annotate"), {
      step: (run["state"].replace(ann_params=perturbed(run["state"].ann_params, step, 0.5)), fg)
      for step, fg in SNAPSHOTS.items()})
  four_dir = tmp_path_factory.mktemp("dp_four")
  # The parent's XLA flags (conftest's cheaper passes) plus 4 host devices.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "") +
             " --xla_force_host_platform_device_count=4")
  # One device first: it prepares the data splits the subprocess then reads.
  one = _run(run["data_dir"], base, tmp_path_factory.mktemp("dp_one"))
  proc = subprocess.run([sys.executable, __file__, str(run["data_dir"]), str(base),
                         str(four_dir)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(four_dir / "four.npz") as data:
    four = dict(data)
  return one, four, json.loads((four_dir / "four.json").read_text())


def _param_rel(one, four, prefix):
  keys = [k for k in one if k.startswith(prefix + "/") and k[len(prefix) + 1:].isdigit()]
  assert len(keys) > 10 and sorted(keys) == sorted(
      k for k in four if k.startswith(prefix + "/") and k[len(prefix) + 1:].isdigit())
  scale = max(float(np.max(np.abs(one[k]))) for k in keys)
  return max(float(np.max(np.abs(one[k] - four[k]))) for k in keys) / scale


def test_generation_writes_the_same_set(runs):
  one, four, _ = runs
  assert int(one["set/num_kept"]) == int(four["set/num_kept"]) == 13  # 0.7 of 18
  np.testing.assert_array_equal(one["set/id"], four["set/id"])
  for k in ("image", "label", "confidence"):
    np.testing.assert_array_equal(one[f"set/{k}"], four[f"set/{k}"], err_msg=k)
  np.testing.assert_allclose(one["set/score"], four["set/score"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prefix", ["down", "fine", "sup"])
def test_training_matches_one_device(runs, prefix):
  one, four, _ = runs
  rel = _param_rel(one, four, prefix)
  assert rel < PARAM_TOL, (prefix, rel)
  if prefix != "fine":
    np.testing.assert_allclose(one[f"{prefix}/loss"], four[f"{prefix}/loss"], rtol=LOSS_RTOL)


def test_supervised_step_counts_ignored_pixels_globally(runs):
  r = runs[2]["step"]
  assert r["moved_rel"] > 1e-3  # the step changes the parameters
  assert r["param_rel"] < 1e-6, r
  assert r["loss4"] == pytest.approx(r["loss1"], rel=1e-6)
  # The mean of the devices' own means is a different number.
  assert abs(r["mean_of_device_losses"] - r["loss1"]) > 3e-4, r  # measured 8.7e-4


def test_batch_that_does_not_split_is_a_user_error(runs):
  errors = runs[2]["errors"]
  assert errors["supervised"].startswith("batch.labelled=6 does not split over 4 devices"), errors
  assert errors["downstream"].startswith("downstream.batch=6 does not split over 4 devices")
  assert "multiple of 4 (e.g. 8)" in errors["downstream"]


def test_host_slice_takes_contiguous_rows():
  from gmseg import parallel
  batch = {"image": np.arange(8 * 2).reshape(8, 2), "label": np.arange(8)}
  parts = [parallel.host_slice(batch, p, 4) for p in range(4)]
  np.testing.assert_array_equal(np.concatenate([x["label"] for x in parts]), batch["label"])
  assert parts[1]["image"].shape == (2, 2) and list(parts[3]["label"]) == [6, 7]
  assert parallel.host_slice(batch, 0, 1) is batch
  with pytest.raises(parallel.BatchSplitError, match="Batch of 8 does not divide over 3"):
    parallel.host_slice(batch, 0, 3)


if __name__ == "__main__":
  sys.path.insert(0, str(REPO))
  sys.path.insert(0, str(REPO / "tests"))
  _worker(*sys.argv[1:4])
