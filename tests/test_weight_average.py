"""The moving average of S's weights kept by training on labelled images
(`state.with_weight_average`, `supervised.train(ema=...)`,
`downstream.finetune_ema`)."""
import functools

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from gmseg import checkpoint, restore, steps, supervised
from gmseg import state as state_lib


class _Seg(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return nn.Conv(3, (1, 1))(nn.relu(nn.Conv(4, (3, 3))(x)))


def _step(tx):
  module = _Seg()
  method = state_lib.Method(gen_fn=None, z_dim=0, annotator=None, segmenter=module,
                            ann_tx=None, seg_tx=tx, matched=())
  state = state_lib.segmenter_state(module, jax.random.PRNGKey(0), (8, 8, 3), tx)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32),
           "label": rng.integers(0, 3, (2, 8, 8)).astype(np.int32)}
  return jax.jit(functools.partial(steps.supervised_step, method=method), donate_argnums=0), \
      state, batch


def test_average_moves_after_each_update_and_never_feeds_back():
  adam = state_lib.make_optimizer("adam", 1e-2)
  step, state, batch = _step(state_lib.with_weight_average(adam, 0.9))
  plain, ref, _ = _step(adam)
  start = np.asarray(jax.tree.leaves(state.seg_opt_state.average)[0])
  np.testing.assert_array_equal(start, jax.tree.leaves(state.seg_params)[0])
  for _ in range(3):  # donated states: the average holds buffers of its own
    previous = jax.tree.map(np.array, state.seg_opt_state.average)
    state, _ = step(state, batch)
    ref, _ = plain(ref, batch)
    for a, b in zip(jax.tree.leaves(state.seg_params), jax.tree.leaves(ref.seg_params)):
      np.testing.assert_array_equal(a, b)  # training is adam's, bitwise
    expect = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, previous, state.seg_params)
    for a, b in zip(jax.tree.leaves(state.seg_opt_state.average), jax.tree.leaves(expect)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert not np.allclose(jax.tree.leaves(state.seg_opt_state.average)[0],
                         jax.tree.leaves(state.seg_params)[0])


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_decay_outside_the_unit_interval_is_refused(decay):
  with pytest.raises(ValueError, match="must be in"):
    state_lib.with_weight_average(state_lib.make_optimizer("adam", 1e-2), decay)


def test_training_keeps_restores_and_resumes_the_average(tiny_annotate, tmp_path):
  # A copy: the fixture's config is shared by the session's other tests.
  config = ml_collections.ConfigDict(tiny_annotate["config"].to_dict())
  config.train.ckpt_every = 2
  start = supervised.train(config, tmp_path / "start", num_steps=2)
  assert start["step"] == 2
  _, init, stats = restore.restore_segmenter(tmp_path / "start", "annotate", "latest", config)

  # One update from known weights: the average is d * init + (1 - d) * trained.
  supervised.train(config, tmp_path / "one", num_steps=1, init=(init, stats), ema=0.75)
  _, trained, _ = restore.restore_segmenter(tmp_path / "one", "annotate", "latest", config,
                                            weights="trained")
  _, average, _ = restore.restore_segmenter(tmp_path / "one", "annotate", "latest", config)
  for a, i, t in zip(*(jax.tree.leaves(x) for x in (average, init, trained))):
    np.testing.assert_allclose(a, 0.75 * i + 0.25 * t, rtol=1e-6, atol=1e-7)

  # Killed after 2 of 4 updates and resumed: the same average as uninterrupted.
  supervised.train(config, tmp_path / "whole", num_steps=4, init=(init, stats), ema=0.75)
  supervised.train(config, tmp_path / "parts", num_steps=2, init=(init, stats), ema=0.75)
  supervised.train(config, tmp_path / "parts", num_steps=4, init=(init, stats), ema=0.75)
  for weights in ("ema", "trained"):
    _, w, _ = restore.restore_segmenter(tmp_path / "whole", "annotate", "latest", config,
                                        weights=weights)
    _, p, _ = restore.restore_segmenter(tmp_path / "parts", "annotate", "latest", config,
                                        weights=weights)
    for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(p)):
      np.testing.assert_array_equal(a, b)

  # A run without an average: 'auto' gives its weights, 'ema' says there is none,
  # and adding an average to it later is refused rather than silently restarted.
  _, auto, _ = restore.restore_segmenter(tmp_path / "start", "annotate", "latest", config)
  for a, b in zip(jax.tree.leaves(auto), jax.tree.leaves(init)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="keeps no moving average"):
    restore.restore_segmenter(tmp_path / "start", "annotate", "latest", config, weights="ema")
  with pytest.raises(checkpoint.CheckpointMismatchError, match="weight average"):
    supervised.train(config, tmp_path / "start", num_steps=3, ema=0.5)
