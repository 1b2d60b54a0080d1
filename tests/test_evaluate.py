"""Evaluation: hand-computed confusion/IoU (absent-class quirk, ignore label), protocols."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg import evaluate

# gt/pred pairs: (0,0) (0,1) (1,1) (1,1); ignored: 255 and 3 (>= C).
LABEL = np.array([[[0, 0, 1], [1, 255, 3]]], np.uint8)
PRED = np.array([[[0, 1, 1], [1, 2, 0]]], np.int32)
CONF = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]])


def test_confusion_matrix_device_and_host():
  np.testing.assert_array_equal(evaluate.confusion_matrix_np(PRED, LABEL, 3), CONF)
  conf = jax.jit(evaluate.confusion_matrix, static_argnums=2)(PRED, LABEL, 3)
  np.testing.assert_array_equal(conf, CONF)
  assert evaluate.confusion_matrix_np(PRED, LABEL, 3).dtype == np.int64
  with pytest.raises(ValueError, match="resize"):
    evaluate.confusion_matrix_np(PRED[:, :1], LABEL, 3)
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    evaluate.confusion_matrix_np(PRED + 2, LABEL, 3)


def test_scores_absent_class_quirk():
  s = evaluate.scores(CONF)
  # IoU0 = 1/(2+1-1), IoU1 = 2/(2+3-2), class 2 absent everywhere -> 0 and counted.
  np.testing.assert_allclose(s["iou"], [0.5, 2 / 3, 0.0])
  assert s["pacc"] == pytest.approx(0.75)
  assert s["miou"] == pytest.approx((0.5 + 2 / 3) / 3)
  assert s["fg_miou"] == pytest.approx((2 / 3) / 2)
  s = evaluate.scores(CONF, absent="nan")
  assert np.isnan(s["iou"][2])
  assert s["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
  assert s["fg_miou"] == pytest.approx(2 / 3)
  # A class present only in the prediction has IoU 0 under both rules.
  conf = np.array([[3, 1], [0, 0]])
  assert evaluate.scores(conf, absent="nan")["iou"].tolist() == [0.75, 0.0]
  with pytest.raises(ValueError, match="Empty"):
    evaluate.scores(np.zeros((3, 3)))


def test_evaluate_segmenter_pads_and_compiles_once():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(5, 4, 6, 3)).astype(np.float32)
  labels = rng.integers(0, 3, size=(5, 4, 6)).astype(np.uint8)
  labels[0, 0, :] = 255
  traces = []

  @jax.jit
  def predict_fn(x):
    traces.append(x.shape)
    cls = jnp.floor(x[..., 0] * 3).astype(jnp.int32)  # class from the red channel
    return jax.nn.one_hot(cls, 3)

  result = evaluate.evaluate_segmenter(predict_fn, images, labels, 3, batch_size=2)
  assert traces == [(2, 4, 6, 3)]  # last batch (1 image) padded, no recompile
  pred = np.floor(images[..., 0] * 3).astype(np.int32)
  expected = evaluate.confusion_matrix_np(pred, labels, 3)
  np.testing.assert_array_equal(result["confusion"], expected)
  assert result["confusion"].sum() == 5 * 4 * 6 - 6
  assert result["miou"] == pytest.approx(evaluate.scores(expected)["miou"])
  per_image = evaluate.per_image_confusions(predict_fn, images, labels, 3, batch_size=2)
  assert per_image.shape == (5, 3, 3)
  np.testing.assert_array_equal(per_image.sum(0), expected)
  np.testing.assert_array_equal(per_image[3], evaluate.confusion_matrix_np(pred[3], labels[3], 3))
  with pytest.raises(ValueError, match="label resolution"):
    evaluate.evaluate_segmenter(lambda x: jnp.zeros((2, 2, 2, 3)), images, labels, 3, 2)


def test_best_validation():
  snaps = {10: {"fg_miou": 0.5}, 30: {"fg_miou": 0.7}, 20: {"fg_miou": 0.7},
           40: {"fg_miou": float("nan")}}
  assert evaluate.best_validation(snaps) == 20  # earliest of the tie


def test_five_fold_cv_known_answer():
  good = np.array([[2, 0], [0, 2]])
  bad = np.array([[0, 2], [2, 0]])

  def snapshot(good_images):
    return np.stack([good if i in good_images else bad for i in range(11)])

  confs = {
      10: snapshot(range(11)),  # perfect, but not among the last 2 snapshots
      20: snapshot({0, 1, 4, 5}),
      30: snapshot({2, 3, 6, 7, 8, 9, 10}),
  }
  # 11 images: folds of 2, image 10 is always test. Folds 0 and 2 pick step 20,
  # whose test set has 2 good / 7 bad images: IoU = 4 / (18 + 18 - 4) = 1/8.
  # Folds 1, 3, 4 pick step 30: 5 good / 4 bad test images: IoU = 10 / 26.
  out = evaluate.five_fold_cv(confs, last=2)
  assert out["steps"] == [20, 30, 20, 30, 30]
  np.testing.assert_allclose(out["per_fold"], [1 / 8, 5 / 13, 1 / 8, 5 / 13, 5 / 13])
  assert out["mean"] == pytest.approx((2 / 8 + 15 / 13) / 5)
  assert out["std"] == pytest.approx(np.sqrt(0.4 * 0.6) * (5 / 13 - 1 / 8))  # population
  assert evaluate.five_fold_cv(confs, last=3)["per_fold"] == [1.0] * 5


def test_format_table():
  text = evaluate.format_table(evaluate.scores(CONF), ["background", "eye", "nose"])
  lines = text.splitlines()
  assert lines[0] == "background   50.00"
  assert lines[1] == "eye          66.67"
  assert lines[-1] == "FG-mIoU      33.33"
  with pytest.raises(ValueError, match="2 class names"):
    evaluate.format_table(evaluate.scores(CONF), ["a", "b"])
