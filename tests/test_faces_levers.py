"""Faces levers beyond the paper (issue 9): annotator inputs, head resolution,
learning-rate schedules, the gradient filter, evaluation preparation."""
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gmseg import build, downstream, losses, matching, steps
from gmseg.experiments import faces

_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _config(name, arg=None):
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", _CONFIGS / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return ml_collections.ConfigDict(mod.get_config(arg).to_dict())


def test_image_input_and_pixel_head_shapes():
  c = _config("tiny")
  gen = build.generator(c)
  z = jnp.ones((2, gen.z_dim))
  _, feats = gen.apply_fn(gen.params, z, jax.random.PRNGKey(0))
  c.annotator.inputs = "features+image"
  images, feats2 = build.annotator_gen_fn(c, gen)(gen.params, z, jax.random.PRNGKey(0))
  assert len(feats2) == len(feats) + 1 and feats2[-1].shape == images.shape
  np.testing.assert_array_equal(feats2[-1], images)
  # Paper head: logits at the largest feature map; 'image': at the image size.
  largest = feats[-1].shape[1:3]
  for head, inputs, hw in (("features", "features", largest), ("image", "features", (32, 32)),
                           ("features", "features+image", (32, 32))):
    c.annotator.update(head_resolution=head, inputs=inputs)
    ann = build.annotator(c, image_hw=(32, 32))
    f = build.annotator_gen_fn(c, gen)(gen.params, z, jax.random.PRNGKey(0))[1]
    logits, _ = ann.init_with_output(jax.random.PRNGKey(1), f)
    assert logits.shape == (2, *hw, len(c.class_names)), (head, inputs)
  c.annotator.inputs = "pixels"
  with pytest.raises(ValueError, match="annotator.inputs='pixels'"):
    build.annotator_gen_fn(c, gen)


def test_learning_rate_warmup_and_cosine():
  o = ml_collections.ConfigDict({"lr": 1e-3, "warmup": 10, "schedule": "constant"})
  lr = build.learning_rate(o, 100)
  np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(50)], [0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
  o.schedule = "cosine"
  lr = build.learning_rate(o, 110)
  np.testing.assert_allclose([lr(10), lr(60), lr(110)], [1e-3, 5e-4, 0], atol=1e-9)
  o.update(warmup=0, schedule="constant")
  assert build.learning_rate(o, 100) == 1e-3  # the paper: a plain rate
  o.schedule = "step"
  with pytest.raises(ValueError, match="schedule='step'"):
    build.learning_rate(o, 100)


def test_gradient_filter_distance_is_the_methods_distance(tiny_annotate):
  # conftest's tiny method (a 4..8-wide UNet, every parameter matched), built
  # once a session. Its UNet is convolutional: 32x32 images here, not its
  # 16x16, so the bottleneck is 2x2 and GroupNorm does not zero it (at 1x1 a
  # whole gradient row is 0, and the clamped cosine gives such a row
  # distance 1 even against itself).
  method, s = tiny_annotate["method"], tiny_annotate["state"]
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 6, (3, 32, 32)).astype(np.uint8)
  x = images.astype(np.float32) / 127.5 - 1.0
  matched, rest = matching.split(s.seg_params, method.matched)

  def loss(m, x, y):
    logits, _ = steps.apply_model(method.segmenter, matching.merge(m, rest), s.seg_stats, x,
                                  train=False)
    return losses.hard_cross_entropy(logits, y)

  grad = jax.jit(jax.grad(loss))  # one compile for both examples
  grad_of = lambda i: grad(matched, jnp.asarray(x[i:i + 1]),
                           jnp.asarray(labels[i:i + 1], jnp.int32))
  g0 = grad_of(0)
  d = np.asarray(downstream.gradient_distances(s.seg_params, s.seg_stats, images, labels, g0,
                                               method=method))
  assert d.shape == (3,) and abs(d[0]) < 1e-5  # an example agrees perfectly with itself
  want = matching.matching_distance(grad_of(2), g0, method.metric, method.row_reduction,
                                    method.tensor_reduction, method.vectors)
  np.testing.assert_allclose(d[2], want, rtol=1e-4)
  assert d[1] > 0.05 and d[2] > 0.05
  keep = downstream._select("gradient", ml_collections.ConfigDict({"keep_fraction": 2 / 3}),
                            np.zeros(3), d)  # pylint: disable=protected-access
  assert keep.tolist() == [True, d[1] <= d[2], d[2] < d[1]]


def test_every_row_prepares_evaluation_faces_alike():
  c = _config("faces", "num=2")
  r = faces.rendered_config(c)
  assert r.data.transform == "resize" and build.eval_transform(r) == "square_crop"
  assert build.eval_transform(c) == "square_crop"
  assert (build.val_dataset(r), build.eval_dataset(r)) == ("fasseg/multipose01", "fasseg/frontal02")
  assert not build.test_is_val(c)


def test_class_weights_in_the_labelled_loss_by_hand():
  logits = jnp.log(jnp.array([[[[0.5, 0.5], [0.9, 0.1]]]]))  # [1, 1, 2, 2]
  labels = jnp.array([[[1, 0]]])
  plain = float(losses.hard_cross_entropy(logits, labels))
  np.testing.assert_allclose(plain, -(np.log(0.5) + np.log(0.9)) / 2, rtol=1e-6)
  weighted = float(losses.hard_cross_entropy(logits, labels, weights=jnp.array([1.0, 4.0])))
  np.testing.assert_allclose(weighted, -(4 * np.log(0.5) + np.log(0.9)) / 2, rtol=1e-6)
  # The synthetic side (class_weights_on='both'): soft labels, same weights;
  # one-hot labels give the weighted hard loss.
  probs = jnp.array([[[[0.0, 1.0], [0.25, 0.75]]]])
  soft = float(losses.soft_cross_entropy(logits, probs, weights=jnp.array([1.0, 4.0])))
  np.testing.assert_allclose(
      soft, -(4 * np.log(0.5) + 0.25 * np.log(0.9) + 3 * np.log(0.1)) / 2, rtol=1e-6)
  one_hot = jax.nn.one_hot(labels, 2)
  np.testing.assert_allclose(
      float(losses.soft_cross_entropy(logits, one_hot, weights=jnp.array([1.0, 4.0]))),
      weighted, rtol=1e-6)
  c = _config("faces", "num=2")
  c.matching.class_weights = (1.0, 2.0)
  with pytest.raises(ValueError, match="class_weights has 2 values for 6 classes"):
    build._class_weights(c)  # pylint: disable=protected-access


def test_mix_labelled_fills_the_batch_with_augmented_labelled_images(tmp_path):
  c = _config("tiny", "num_labelled=3")
  c.data.data_dir = str(tmp_path)
  c.downstream.update(batch=8, mix_labelled=2)
  mix = downstream._mixer(c)  # pylint: disable=protected-access
  syn = {"image": np.zeros((6, 32, 32, 3), np.float32), "label": np.full((6, 32, 32), 9, np.uint8)}
  out = mix(syn, step=5)
  assert out["image"].shape == (8, 32, 32, 3) and out["label"].dtype == np.uint8
  assert (out["label"][:6] == 9).all() and out["label"][6:].max() < 6
  assert np.abs(out["image"][6:]).max() > 0.1  # real faces, not the zeros
  np.testing.assert_array_equal(mix(syn, step=5)["image"], out["image"])  # a function of the step
  c.downstream.mix_labelled = 8
  with pytest.raises(ValueError, match="mix_labelled=8 leaves no place"):
    downstream._mixer(c)  # pylint: disable=protected-access


def test_anchored_matching_loss_adds_the_weighted_teacher_cross_entropy(tiny_annotate):
  # matching.anchor (issue 18): loss = distance + w * CE(teacher, annotator),
  # checked against the two terms differentiated separately by plain autodiff.
  import dataclasses
  from gmseg import annotate, config_base
  from conftest import perturbed
  method, s, gen = tiny_annotate["method"], tiny_annotate["state"], tiny_annotate["gen"]
  teacher_params = perturbed(s.seg_params, 3, 0.1)

  def anchor(images, feats):
    del feats
    logits, _ = steps.apply_model(method.segmenter, teacher_params, s.seg_stats, images,
                                  train=False)
    return jax.nn.softmax(logits, axis=-1)

  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32),
           "label": rng.integers(0, 6, (2, 16, 16)).astype(np.uint8)}
  g_real = steps.labelled_grads(s, batch, method=method)
  weight = 0.3
  anchored = dataclasses.replace(method, anchor=anchor, anchor_weight=weight)
  loss_and_grad = jax.value_and_grad(steps.matching_loss, has_aux=True)
  (plain, _), g_plain = loss_and_grad(s.ann_params, s, g_real, gen.params, method=method)
  (total, aux), g_total = loss_and_grad(s.ann_params, s, g_real, gen.params, method=anchored)

  images, feats = steps._generate_ann(method, s, gen.params, None)

  def cross_entropy(ann_params):
    logits, _ = steps.annotate(method, ann_params, s.ann_stats, feats, images.shape[1:3],
                               train=True)
    x, p = steps._with_transform(method, images, jax.nn.softmax(logits, axis=-1))
    return -jnp.mean(jnp.sum(anchor(x, feats) * jnp.log(p + 1e-8), axis=-1))

  ce, g_ce = jax.value_and_grad(cross_entropy)(s.ann_params)
  assert float(ce) > 0.5  # a random teacher disagrees: the term is not trivially 0
  np.testing.assert_allclose(aux[3]["match"], plain, rtol=1e-6)
  np.testing.assert_allclose(aux[3]["anchor"], ce, rtol=1e-5)
  np.testing.assert_allclose(total, plain + weight * ce, rtol=1e-5)
  expected = jax.tree.map(lambda a, b: a + weight * b, g_plain, g_ce)
  for got, want, extra in zip(jax.tree.leaves(g_total), jax.tree.leaves(expected),
                              jax.tree.leaves(g_ce)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()))
  assert max(float(jnp.abs(e).max()) for e in jax.tree.leaves(g_ce)) > 1e-4
  _, metrics = jax.jit(lambda st, b: steps.annotator_step(st, b, gen.params, method=anchored))(
      s, batch)
  np.testing.assert_allclose(metrics["ann/anchor_loss"], ce, rtol=1e-5)

  # Bad settings name the key and the fix.
  with pytest.raises(ValueError, match="a teacher `anchor`"):
    dataclasses.replace(method, anchor_weight=0.1)
  c = ml_collections.ConfigDict(tiny_annotate["config"].to_dict())
  c.matching.anchor = -1.0
  with pytest.raises(config_base.ConfigError, match="matching.anchor=-1.0"):
    config_base.check(c)
  c.matching.anchor = 0.1
  with pytest.raises(ValueError, match="matching.anchor=0.1 needs a teacher"):
    annotate.with_anchor(c, method, None)
  assert annotate.with_anchor(tiny_annotate["config"], method, None) is method
