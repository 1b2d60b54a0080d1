"""The analytic face renderer and its tfds builder."""
import numpy as np
import pytest

from gmseg.data import common, rendered_faces as rf


def test_deterministic_by_seed():
  a, la = rf.render(7, 48)
  b, lb = rf.render(7, 48)
  c, _ = rf.render(8, 48)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert np.abs(a.astype(int) - c.astype(int)).mean() > 10
  # A face does not depend on the other faces in its batch.
  batch, labels = rf.render_batch([3, 7, 11], 48)
  np.testing.assert_array_equal(batch[1], a)
  np.testing.assert_array_equal(labels[1], la)


def test_class_coverage_and_fractions():
  _, labels = rf.render_batch(range(40), 64)
  frac = np.stack([np.bincount(l.ravel(), minlength=6) / l.size for l in labels])
  assert labels.max() <= 5
  assert (frac > 0).mean(0).min() >= 0.95, frac.min(0)
  # FASSEG-like proportions: skin and hair large, eyes/nose/mouth ~1% each.
  assert 0.15 < frac[:, 2].mean() < 0.5 and 0.05 < frac[:, 1].mean() < 0.35
  assert all(0.003 < frac[:, k].mean() < 0.05 for k in (3, 4, 5))


@pytest.mark.parametrize("resolution", [16, 33, (40, 56)])
def test_any_resolution(resolution):
  image, label = rf.render(1, resolution)
  shape = (resolution, resolution) if np.isscalar(resolution) else resolution
  assert image.shape == shape + (3,) and image.dtype == np.uint8
  assert label.shape == shape and set(np.unique(label)) >= {0, 1, 2}


def test_resolutions_agree():
  """The same face at two resolutions: labels agree after nearest downsampling."""
  _, small = rf.render(5, 32)
  _, big = rf.render(5, 128)
  agree = (big[2::4, 2::4] == small).mean()
  assert agree > 0.9


def test_builder(tmp_path):
  builder = rf.RenderedFaces(config="n64_r32", data_dir=str(tmp_path), file_format="array_record")
  train = common.read_split(builder, "train", tmp_path, limit=5)
  assert [x["id"] for x in train] == [f"{i:08d}" for i in range(5)]
  image, label = rf.render(3, 32)
  np.testing.assert_array_equal(train[3]["image"], image)
  np.testing.assert_array_equal(train[3]["label"], label)
  test = common.read_split(builder, "test", tmp_path)
  assert len(test) == 32 and test[0]["id"] == f"{rf.TEST_SEED_OFFSET:08d}"


_PREPARE = """
import sys
from gmseg.data import common
from gmseg.data import rendered_faces as rf
b = rf.RenderedFaces(config="n64_r32", data_dir=sys.argv[1], file_format="array_record")
print(len(common.read_split(b, "test", sys.argv[1])))
"""


def test_concurrent_prepare(tmp_path):
  """Two processes building the same missing dataset into one data_dir (a
  multi-host job's first run on a shared disk) both read it: the prepare
  lock makes the second wait (without it, tfds' writes collided)."""
  import subprocess
  import sys
  procs = [subprocess.Popen([sys.executable, "-c", _PREPARE, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
  assert [out.split()[-1] for out, _ in outs] == ["32", "32"]
  assert (tmp_path / ".gmseg_prepare.lock").exists()
