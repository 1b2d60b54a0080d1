"""V3 scores by head pose (gmseg.experiments.pose_scores)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg.experiments import pose_scores


def test_pose_of_reads_the_folder_and_rejects_other_ids():
  np.testing.assert_array_equal(pose_scores.pose_of([b"-90/a", "+15/b", "0/c"]),
                                ["-90", "+15", "0"])
  with pytest.raises(ValueError, match="multipose01"):
    pose_scores.pose_of(["frontal_01"])


def test_scores_split_by_pose():
  """A predictor that reads the label out of the image is perfect on every
  pose whose images carry it, and only there."""
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 6, (6, 8, 8)).astype(np.uint8)
  images = np.zeros((6, 8, 8, 3), np.float32)
  images[..., 0] = labels / 5.0 * 2 - 1
  ids = ["-30/a", "-30/b", "0/c", "0/d", "+30/e", "+30/f"]
  images[4:, ..., 0] = 1.0  # the +30 faces all read as class 5
  predict = lambda x: jax.nn.one_hot(jnp.round((x[..., 0] + 1) / 2 * 5).astype(jnp.int32), 6)
  out = pose_scores.scores_by_pose(predict, {"image": images, "label": labels, "id": ids}, 6,
                                   batch_size=2)
  assert list(out) == ["-30", "0", "+30"]
  assert out["-30"] == pytest.approx(1.0) and out["0"] == pytest.approx(1.0)
  assert out["+30"] < 0.3
  table = pose_scores.markdown({"cell": [{"supervised": out}]})
  assert "| cell | supervised | 100 | 100 |" in table
