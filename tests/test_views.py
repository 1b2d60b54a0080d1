"""Siamese views (gmseg.views) and the annotator step that uses them."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg import steps, views
from tests.test_steps import _method, _rel, _with


def _view(**kw):
  return views.identity()._replace(**{k: jnp.float32(v) for k, v in kw.items()})


def _ramp(h=8, w=8):
  """Image `[1, h, w, 3]` whose channels are y/8, x/8 and 0: bilinear
  sampling reproduces a linear function exactly inside the image."""
  y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return jnp.asarray(np.stack([y / 8, x / 8, 0 * x], -1)[None], jnp.float32)


def test_identity_view_changes_nothing():
  rng = np.random.default_rng(0)
  img = jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  lab = jnp.asarray(rng.integers(0, 6, (2, 8, 8)), jnp.uint8)
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32))
  v = views.identity()
  np.testing.assert_allclose(views.apply_images(v, img), img, atol=1e-6)
  np.testing.assert_array_equal(views.apply_labels(v, lab), lab)
  np.testing.assert_allclose(views.apply_probs(v, probs), probs, atol=1e-7)


def test_zoom_in_and_out_sample_where_the_window_says():
  img = _ramp()
  # Zoom in x2 at the top-left: output pixel i samples source row i/2 - 1/4
  # (pixel centres), clamped at the first row.
  out = views.apply_probs(_view(scale=2.0), img)
  expect = np.clip(np.arange(8) / 2 - 0.25, 0, 7) / 8
  np.testing.assert_allclose(out[0, :, 0, 0], expect, atol=1e-6)
  np.testing.assert_allclose(out[0, 0, :, 1], expect, atol=1e-6)
  # Zoom out x2, image centred in the window (offset 0.5): output pixel i
  # samples 2i + 1/2 - 4, the border repeating the edge rows.
  out = views.apply_probs(_view(scale=0.5, top=0.5, left=0.5), img)
  expect = np.clip(2 * np.arange(8) + 0.5 - 4, 0, 7) / 8
  np.testing.assert_allclose(out[0, :, 3, 0], expect, atol=1e-6)
  # Flip mirrors the columns before the window is taken.
  out = views.apply_probs(_view(flip=1.0), img)
  np.testing.assert_allclose(out[0, 0, :, 1], np.arange(8)[::-1] / 8, atol=1e-6)


def test_labels_and_soft_labels_get_the_same_geometry():
  """At zoom x2 with these offsets (window starts at whole or half pixels)
  every output pixel lies 1/4 from a source pixel in both axes, so the
  bilinear one-hot's argmax is the nearest label (weight 9/16 against 7/16
  for all others): the two batches of a Siamese view stay aligned. Soft
  labels stay distributions under any view."""
  rng = np.random.default_rng(1)
  lab = jnp.asarray(rng.integers(0, 5, (2, 12, 12)), jnp.int32)
  for kw in (dict(scale=2.0, top=0.5, left=0.25, flip=1.0), dict(scale=2.0)):
    v = _view(**kw)
    soft = views.apply_probs(v, jax.nn.one_hot(lab, 5))
    np.testing.assert_array_equal(np.argmax(soft, -1), views.apply_labels(v, lab))
  v = views.sample(jax.random.key(3), (0.7, 1.3))
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 12, 12, 5)), jnp.float32))
  np.testing.assert_allclose(np.sum(views.apply_probs(v, probs), -1), 1.0, atol=1e-6)


def test_view_of_soft_labels_is_linear_with_the_autodiff_gradient():
  """The annotator's gradient passes through the view: jax.grad of a
  weighted sum of the viewed labels equals finite differences (float64)."""
  with jax.enable_x64(True):
    rng = np.random.default_rng(2)
    v = jax.tree.map(lambda x: x.astype(jnp.float64), views.sample(jax.random.key(0), (0.7, 1.3)))
    p = jnp.asarray(rng.uniform(size=(1, 6, 6, 3)))
    w = jnp.asarray(rng.normal(size=(1, 6, 6, 3)))
    f = lambda q: jnp.sum(w * views.apply_probs(v, q) ** 2)
    d = jnp.asarray(rng.normal(size=p.shape))
    h = 1e-6
    fd = (f(p + h * d) - f(p - h * d)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(jax.grad(f)(p), d)), float(fd), rtol=1e-7)


def test_sample_draws_in_range_and_rejects_a_bad_zoom():
  vs = [views.sample(jax.random.key(i), (0.7, 1.3)) for i in range(40)]
  scales = np.array([float(v.scale) for v in vs])
  assert scales.min() >= 0.7 and scales.max() <= 1.3 and scales.std() > 0.1
  assert 0 < np.mean([float(v.flip) for v in vs]) < 1
  with pytest.raises(ValueError, match="augment_zoom"):
    views.sample(jax.random.key(0), (1.3, 0.7))


def test_siamese_annotator_step_sees_both_batches_through_one_view():
  """The step equals its parts written out: the view of (step, rng), the
  target gradient of the viewed labelled batch, and the matching loss of
  the synthetic batch under the same view; without the option nothing changes."""
  m, s, gen_params, batch = _method()
  ms = _with(m, augment="siamese", augment_zoom=(0.7, 1.3))
  view = steps.step_view(ms, s)
  assert steps.step_view(m, s) is None
  assert float(view.scale) != float(steps.step_view(ms, s.replace(step=s.step + 1)).scale)
  viewed = dict(batch, image=views.apply_images(view, batch["image"]),
                label=views.apply_labels(view, batch["label"]))
  g_real = steps.labelled_grads(s, viewed, method=m)
  loss = lambda p: steps.matching_loss(p, s, g_real, gen_params, method=m, view=view)[0]
  g_hand = jax.jit(jax.grad(loss))(s.ann_params)
  step = lambda mm: jax.jit(functools.partial(steps.annotator_step, method=mm))(
      s, batch, gen_params)
  (s_siam, m_siam), (s_plain, _) = step(ms), step(m)
  # SGD lr 1e-2 from the same parameters: the update is -lr * gradient.
  g_step = jax.tree.map(lambda a, b: (a - b) / -1e-2, s_siam.ann_params, s.ann_params)
  flat = lambda t: {str(k): v for k, v in jax.tree_util.tree_leaves_with_path(t)}
  assert _rel(flat(g_step), flat(g_hand)) < 1e-4
  assert _rel(flat(s_plain.ann_params), flat(s_siam.ann_params)) > 1e-4
  assert np.isfinite(float(m_siam["ann/match_loss"]))


def test_siamese_train_views_the_segmenter_step_too():
  """'siamese' leaves the segmenter step as the paper's; 'siamese_train'
  trains S on a view of its batch (its own key: not the matching's view)."""
  m, s, gen_params, _ = _method()
  out = {}
  for mode in ("none", "siamese", "siamese_train"):
    mm = _with(m, augment=mode, augment_zoom=(0.7, 1.3))
    out[mode], _ = jax.jit(functools.partial(steps.segmenter_step, method=mm))(s, gen_params)
  flat = lambda t: {str(k): v for k, v in jax.tree_util.tree_leaves_with_path(t.seg_params)}
  assert _rel(flat(out["siamese"]), flat(out["none"])) == 0.0
  assert _rel(flat(out["siamese_train"]), flat(out["none"])) > 1e-4
  mt = _with(m, augment="siamese_train", augment_zoom=(0.7, 1.3))
  assert float(steps._view(mt, s, steps._SEG_VIEW).scale) != float(steps.step_view(mt, s).scale)
