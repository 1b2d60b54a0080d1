"""Several iterations per dispatch and one generator call per iteration:
the same numbers as the plain loop."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gmseg import annotate, steps
from gmseg import state as state_lib
from gmseg.models import annotator, generators, layers


class _Segmenter(nn.Module):
  """conv-norm-relu then a 1x1 conv: the loop logic under test does not
  depend on depth, and a small graph keeps the unrolled program quick to
  compile."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train=False):
    h = layers.conv_norm_relu(x, 4, "group", train, "a")
    return nn.Conv(self.num_classes, (1, 1), name="out")(h)


def _noisy_method():
  """A tiny setup whose generator adds per-call noise from its rng, as
  StyleGAN2's noise_mode='random' does (shape-dependent draws)."""
  gen = generators.random_conv(resolution=16, width=8, z_dim=4, seed=0)

  def gen_fn(params, z, rng):
    images, feats = gen.apply_fn(params, z, rng)
    return images + 0.1 * jax.random.normal(rng, images.shape), feats

  m = state_lib.Method(
      gen_fn=gen_fn, z_dim=gen.z_dim,
      annotator=annotator.Annotator(3, tmp_channels=4, num_layers=1),
      segmenter=_Segmenter(3),
      ann_tx=state_lib.make_optimizer("sgd", 1e-2),
      seg_tx=state_lib.make_optimizer("sgd", 1e-2), matched=(),
      syn_batch=2, seg_batch=2)
  s = state_lib.init_state(m, gen.params, seed=0)
  m = state_lib.Method(**{**m.__dict__,
                          "matched": state_lib.matched_paths(s.seg_params, "re:.*")})
  rng = np.random.default_rng(0)
  batches = {"image": rng.uniform(-1, 1, (2, 2, 16, 16, 3)).astype(np.float32),
             "label": rng.integers(0, 3, (2, 2, 16, 16)).astype(np.int32)}
  return m, s, gen.params, batches


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_one_generator_call_draws_the_two_steps_samples():
  m, s, gen_params, _ = _noisy_method()
  joint = jax.jit(lambda st: steps.generate_for_step(m, st, gen_params))(s)
  apart = jax.jit(lambda st: (steps._generate_ann(m, st, gen_params, None),
                              steps._generate_seg(m, st, gen_params, None)))(s)
  # Same latents and noise: only float32 rounding of the batched convolutions
  # differs (drawing other noise would move pixels by ~0.1).
  assert _max_diff(joint, apart) < 1e-6
  assert float(jnp.max(jnp.abs(joint[0][0] - joint[1][0]))) > 0.1


def test_unrolled_iterations_equal_single_iterations_bitwise():
  m, s, gen_params, batches = _noisy_method()
  single = jax.jit(functools.partial(steps.iteration_step, method=m))
  several = jax.jit(functools.partial(steps.unrolled_iterations, method=m))
  s1, history = s, []
  for i in range(2):
    s1, metrics = single(s1, jax.tree.map(lambda x: x[i], batches), gen_params)
    history.append(metrics)
  s3, stacked = several(s, batches, gen_params)
  assert int(s3.step) == 2
  assert _max_diff(s1, s3) == 0.0  # bitwise: the same program traced twice
  for i, metrics in enumerate(history):
    for k, v in metrics.items():
      assert float(stacked[k][i]) == float(v), (i, k)


def _train(**kw):
  c = ml_collections.ConfigDict({"steps": 20, "ann_every": 1, "seg_every": 1,
                                 "log_every": 5, "eval_every": 10, "ckpt_every": 10,
                                 "grid_every": 20, "steps_per_dispatch": 3})
  c.update(kw)
  return c


def _chunks(start, tc):
  out, step = [], start
  while step < tc.steps:
    n = annotate.dispatch_length(step, tc)
    out.append((step, n))
    step += n
  return out


def test_dispatch_length_stops_at_host_actions_and_resumes_alike():
  tc = _train()
  chunks = _chunks(0, tc)
  # log every 5: [0, 3) then 3, 4 alone (5 is a log step), and so on.
  assert chunks[:4] == [(0, 3), (3, 1), (4, 1), (5, 3)]
  assert sum(n for _, n in chunks) == 20
  for step, n in chunks:  # no chunk runs over a log/eval/checkpoint/grid step
    assert not any(annotate.host_action_due(t, tc) for t in range(step + 1, step + n))
  # A run resumed at checkpoint 10 runs the chunks the uninterrupted one ran.
  assert _chunks(10, tc) == [c for c in chunks if c[0] >= 10]
  assert annotate.dispatch_length(0, _train(ann_every=2)) == 1
  # S restarts (before iterations 7, 14) end chunks too; never at step 0.
  restarts = _train(seg_restart_every=7)
  assert [s for s in range(21) if annotate.restart_due(s, restarts)] == [7, 14]
  assert (6, 1) in _chunks(0, restarts) and (7, 3) in _chunks(0, restarts)
  assert annotate.dispatch_length(0, _train(steps_per_dispatch=1)) == 1


def test_summarize_metrics_unstacks_dispatches_and_names_the_step():
  ok = {"loss": np.array([[1.0, 2.0, 3.0]])}  # [devices, n]: steps 4, 5, 6
  assert annotate.summarize_metrics([(3, {"loss": np.array([0.0])}), (6, ok, 3)]) == {
      "loss": 1.5}
  bad = {"loss": np.array([[1.0, np.nan, 3.0]])}
  with pytest.raises(FloatingPointError, match="step 5"):
    annotate.summarize_metrics([(6, bad, 3)])
