"""The pure steps: exact annotator gradients, compile-once, metrics."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg import matching, steps
from gmseg import state as state_lib
import flax.linen as nn

from gmseg.models import annotator, generators, layers


class TinySegmenter(nn.Module):
  """conv-norm-relu, strided conv-norm-relu, upsample, 1x1 conv: the step
  logic under test does not depend on the segmenter's depth, and a small
  graph keeps the (vmapped, nested) gradients quick to compile."""
  num_classes: int
  norm: str = "group"

  @nn.compact
  def __call__(self, x, train=False):
    h = layers.conv_norm_relu(x, 4, self.norm, train, "a")
    h = nn.Conv(8, (3, 3), strides=2, padding=1, name="down")(h)
    h = jax.nn.relu(layers.norm_layer(self.norm, train, "down_norm")(h))
    h = layers.resize_to(h, x.shape[1:3])
    return nn.Conv(self.num_classes, (1, 1), name="out")(h)


def _method(dtype=jnp.float32, norm="group", matched="re:.*"):
  gen = generators.random_conv(resolution=16, width=8, z_dim=4, seed=0)
  gen_params = jax.tree.map(lambda x: x.astype(dtype), gen.params)
  seg = TinySegmenter(3, norm=norm)
  m = state_lib.Method(
      gen_fn=gen.apply_fn, z_dim=gen.z_dim,
      annotator=annotator.Annotator(3, tmp_channels=4, num_layers=2, norm=norm),
      segmenter=seg, ann_tx=state_lib.make_optimizer("sgd", 1e-2),
      seg_tx=state_lib.make_optimizer("sgd", 1e-2), matched=(),
      syn_batch=2, seg_batch=2)
  s = state_lib.init_state(m, gen_params, seed=0)
  paths = state_lib.matched_paths(s.seg_params, matched)
  m = state_lib.Method(**{**m.__dict__, "matched": paths})
  s = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, s)
  images, _ = gen.apply_fn(gen_params, jax.random.normal(jax.random.PRNGKey(5), (2, 4), dtype), None)
  labels = jax.random.randint(jax.random.PRNGKey(6), (2, 16, 16), 0, 3)
  labels = labels.at[0, :4].set(255)  # some ignored pixels
  return m, s, gen_params, {"image": images, "label": labels}


def test_annotator_gradient_matches_finite_differences_float64():
  with jax.enable_x64(True):
    m, s, gen_params, batch = _method(jnp.float64)
    g_real = jax.jit(functools.partial(steps.labelled_grads, method=m))(s, batch)
    loss = lambda p: steps.matching_loss(p, s, g_real, gen_params, method=m)[0]
    # One program gives the gradient here and the loss at the shifted points.
    value_and_grad = jax.jit(jax.value_and_grad(loss))
    _, grad = value_and_grad(s.ann_params)
    direction = jax.tree.map(
        lambda x: jax.random.normal(jax.random.PRNGKey(x.size), x.shape, jnp.float64),
        s.ann_params)
    h = 1e-5
    plus, _ = value_and_grad(jax.tree.map(lambda p, d: p + h * d, s.ann_params, direction))
    minus, _ = value_and_grad(jax.tree.map(lambda p, d: p - h * d, s.ann_params, direction))
    fd = (plus - minus) / (2 * h)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction)))
    assert abs(float(analytic)) > 1e-6  # a direction with signal
    np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6)


@pytest.fixture(scope="module")
def group_norm_steps():
  """`_method()` and its jitted annotator, segmenter and supervised steps,
  shared by the tests below, so each program compiles once in this file."""
  m, s, gen_params, batch = _method()
  jitted = lambda fn: jax.jit(functools.partial(fn, method=m))
  return (m, s, gen_params, batch, jitted(steps.annotator_step),
          jitted(steps.segmenter_step), jitted(steps.supervised_step))


def test_steps_compile_once_and_report_metrics(group_norm_steps):
  _, s, gen_params, batch, a_step, s_step, sup_step = group_norm_steps
  ann_before = s.ann_params
  for _ in range(3):
    s, ma = a_step(s, batch, gen_params)
    s, ms = s_step(s, gen_params)
    s, mu = sup_step(s, batch)
  assert a_step._cache_size() == 1
  assert s_step._cache_size() == 1
  assert sup_step._cache_size() == 1
  assert int(s.step) == 6
  for k in ("ann/match_loss", "ann/grad_norm", "ann/update_norm", "ann/g_real_norm",
            "ann/g_syn_norm", "ann/nonfinite"):
    assert np.isfinite(float(ma[k])), k
  assert 0.0 < float(ma["ann/match_loss"]) < 2.0  # cosine distance range
  assert float(ma["ann/nonfinite"]) == 0.0
  assert float(ms["seg/loss"]) > 0 and float(mu["sup/loss"]) > 0
  assert 1 / 3 <= float(ms["seg/label_confidence"]) <= 1.0
  moved = matching.global_norm(jax.tree.map(lambda a, b: a - b, s.ann_params, ann_before))
  assert float(moved) > 0


def test_batchnorm_rule():
  """Annotator step leaves S's running stats alone; segmenter step updates them."""
  m, s, gen_params, batch = _method(norm="batch")
  s1, _ = jax.jit(functools.partial(steps.annotator_step, method=m))(s, batch, gen_params)
  for a, b in zip(jax.tree.leaves(s.seg_stats), jax.tree.leaves(s1.seg_stats)):
    np.testing.assert_array_equal(a, b)
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(s.ann_stats), jax.tree.leaves(s1.ann_stats))]
  assert all(changed)  # A trains in this step: its running stats move
  s2, _ = jax.jit(functools.partial(steps.segmenter_step, method=m))(s1, gen_params)
  changed = [not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(s1.seg_stats), jax.tree.leaves(s2.seg_stats))]
  assert all(changed)
  for a, b in zip(jax.tree.leaves(s1.ann_stats), jax.tree.leaves(s2.ann_stats)):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_gradients_are_counted_and_cleaned(group_norm_steps):
  _, s, _, batch, _, _, sup_step = group_norm_steps
  bad = s.replace(seg_params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.inf), s.seg_params))
  s2, metrics = sup_step(bad, batch)
  assert float(metrics["sup/nonfinite"]) > 0


def _with(m, **kw):
  return state_lib.Method(**{**m.__dict__, **kw})


def _hand_labelled_grads(m, s, batch):
  """The paper's target gradient written out: S in training mode on the whole
  batch (BatchNorm statistics over it), hard CE averaged over every labelled
  pixel of the batch, gradient over the matched parameters."""
  def loss(params):
    variables = {"params": params}
    if s.seg_stats:
      variables["batch_stats"] = s.seg_stats
    out = m.segmenter.apply(variables, batch["image"], train=True,
                            mutable=["batch_stats"])[0]
    logp = jax.nn.log_softmax(out, axis=-1)
    valid = batch["label"] != 255
    nll = -jnp.take_along_axis(logp, jnp.where(valid, batch["label"], 0)[..., None], -1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.sum(valid)
  flat = matching.flatten(jax.grad(loss)(s.seg_params))
  return {k: flat[k] for k in m.matched}


def _rel(a: dict, b: dict) -> float:
  """max |a - b| / max |b| over all tensors (float32 noise is ~1e-7 of the
  largest entry; a per-tensor ratio would divide the noise of gradients that
  are 0 in exact arithmetic, e.g. a conv bias before GroupNorm, by ~0)."""
  top = max(float(jnp.max(jnp.abs(v))) for v in b.values())
  return max(float(jnp.max(jnp.abs(a[k] - b[k]))) for k in b) / top


def test_batch_path_equals_mean_of_per_example_grads():
  """GroupNorm: the one-grad batch path and the vmap(grad) path give the same
  target gradient, synthetic gradient and annotator gradient; both are the
  whole batch's pixel-mean CE gradient (example 0 has 64 ignored pixels,
  example 1 none, so a mean of per-example means would differ)."""
  m, s, gen_params, batch = _method()
  out = {}
  for path in ("batch", "per_example"):
    mp = _with(m, grad_path=path)
    g_real = jax.jit(functools.partial(steps.labelled_grads, method=mp))(s, batch)
    fn = lambda p: steps.matching_loss(p, s, g_real, gen_params, method=mp)
    (dist, (_, g_syn, _, _)), g_ann = jax.jit(jax.value_and_grad(fn, has_aux=True))(s.ann_params)
    out[path] = (g_real, g_syn, matching.flatten(g_ann), dist)
  (r_b, s_b, a_b, d_b), (r_p, s_p, a_p, d_p) = out["batch"], out["per_example"]
  assert _rel(r_b, r_p) < 1e-5 and _rel(s_b, s_p) < 1e-5 and _rel(a_b, a_p) < 1e-5
  np.testing.assert_allclose(float(d_b), float(d_p), rtol=1e-5)
  hand = _hand_labelled_grads(m, s, batch)
  assert _rel(r_b, hand) < 1e-5 and _rel(r_p, hand) < 1e-5


def test_batchnorm_across_batch_is_the_paper_and_differs_per_example():
  m, s, gen_params, batch = _method(norm="batch")
  across = jax.jit(functools.partial(steps.labelled_grads, method=m))(s, batch)
  assert m.seg_bn == "across_batch"
  assert _rel(across, _hand_labelled_grads(m, s, batch)) < 1e-5
  per_ex = {}
  for path in ("batch", "per_example"):
    mp = _with(m, seg_bn="per_example", grad_path=path)
    per_ex[path] = jax.jit(functools.partial(steps.labelled_grads, method=mp))(s, batch)
  # The per-example rule: the batch path (forward per example) equals vmap(grad).
  assert _rel(per_ex["batch"], per_ex["per_example"]) < 1e-5
  assert _rel(per_ex["batch"], across) > 0.1  # batch 2: the two rules differ
  with pytest.raises(ValueError, match="seg_bn='per_example'"):
    steps.labelled_grads(s, batch, method=_with(m, grad_path="per_example"))


def test_annotator_step_can_update_segmenter_statistics():
  """ann_step_seg_stats='update': S's running statistics move by the labelled
  pass, then the synthetic pass (the paper's code), as hand-computed."""
  m, s, gen_params, batch = _method(norm="batch")
  mu = _with(m, ann_step_seg_stats="update")
  s1, _ = jax.jit(functools.partial(steps.annotator_step, method=mu))(s, batch, gen_params)
  apply = lambda stats, x: m.segmenter.apply(
      {"params": s.seg_params, "batch_stats": stats}, x, train=True,
      mutable=["batch_stats"])[1]["batch_stats"]
  shared, local = steps._step_keys(s, steps._ANN, 4, None)
  z = steps.sample_latents(shared[1], m.syn_batch, m.z_dim, None)
  images, _ = m.gen_fn(gen_params, z, local[2])
  want = apply(apply(s.seg_stats, batch["image"]), images)
  for a, b, old in zip(jax.tree.leaves(s1.seg_stats), jax.tree.leaves(want),
                       jax.tree.leaves(s.seg_stats)):
    assert not np.allclose(a, old)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="needs seg_bn='across_batch'"):
    _with(mu, seg_bn="per_example")


def test_iteration_step_is_annotator_then_segmenter_step(group_norm_steps):
  m, s, gen_params, batch, a_step, s_step, _ = group_norm_steps
  it = jax.jit(functools.partial(steps.iteration_step, method=m))
  s_sep, m_a = a_step(s, batch, gen_params)
  s_sep, m_s = s_step(s_sep, gen_params)
  s_one, m_one = it(s, batch, gen_params)
  assert set(m_one) == set(m_a) | set(m_s) and int(s_one.step) == 1
  for a, b in zip(jax.tree.leaves(s_one), jax.tree.leaves(s_sep)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_compile_cache_folder_and_off(tmp_path, monkeypatch):
  from gmseg import compile_cache
  before = jax.config.jax_compilation_cache_dir
  try:
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.enable() is None
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "c"))
    assert compile_cache.enable() == str(tmp_path / "c")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert (tmp_path / "c").is_dir()
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
