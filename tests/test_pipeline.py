"""load_split, the resumable sharded Sampler, augment, and the registry."""
import numpy as np
import pytest

from conftest import shared_path
from gmseg.data import pipeline, registry


@pytest.fixture(scope="module")
def fasseg_train(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  return pipeline.load_split("fasseg/frontal02", "train", resolution=32, data_dir=data_dir,
                             manual_dir=shared_path("data", "fasseg"), limit=6)


def test_load_split_fasseg(fasseg_train):
  d = fasseg_train
  assert d["image"].shape == (6, 32, 32, 3) and d["image"].dtype == np.float32
  assert d["label"].shape == (6, 32, 32) and d["label"].dtype == np.uint8
  assert list(d["id"]) == ["1", "2", "3", "4", "5", "6"]
  assert -1.0 <= d["image"].min() < -0.5 and 0.5 < d["image"].max() <= 1.0
  assert d["label"].max() <= 5 and set(np.unique(d["label"])) == set(range(6))


def test_transforms():
  image = np.zeros((40, 20, 3), np.uint8)
  image[:10] = 255  # top rows white: cut by the centred square crop
  label = np.zeros((40, 20), np.uint8)
  label[10:30] = 3
  im, lab = pipeline._fit(image, label, 10, "square_crop")
  assert im.shape == (10, 10, 3) and (lab == 3).all() and im.max() == 0
  im, lab = pipeline._fit(image, label, 10, "resize")
  assert lab.shape == (10, 10) and (lab[:2] == 0).all() and (lab[3:7] == 3).all()
  sq_im, sq_lab = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8)
  sq_lab[:2] = 1  # rows outside the centre 3/4 disappear
  im, lab = pipeline._fit(sq_im, sq_lab, 8, "wide_crop")
  assert lab.shape == (6, 8) and (lab == 0).all()
  with pytest.raises(ValueError, match="unknown transform"):
    pipeline._fit(image, label, 10, "stretch")


def _arrays(n=10):
  return {"x": np.arange(n), "y": np.arange(n) * 10}


def test_sampler_reproducible_from_seed_and_step():
  a = pipeline.Sampler(_arrays(), 4, seed=3)
  b = pipeline.Sampler(_arrays(), 4, seed=3)
  steps = [a.batch(s)["x"] for s in range(7)]
  np.testing.assert_array_equal(b.batch(5)["x"], steps[5])  # resumed at step 5
  assert not np.array_equal(pipeline.Sampler(_arrays(), 4, seed=4).batch(0)["x"], steps[0])
  np.testing.assert_array_equal(a.batch(2)["y"], a.batch(2)["x"] * 10)


def test_sampler_epoch_coverage():
  s = pipeline.Sampler(_arrays(10), 5, seed=0)
  epoch0 = np.concatenate([s.batch(0)["x"], s.batch(1)["x"]])
  epoch1 = np.concatenate([s.batch(2)["x"], s.batch(3)["x"]])
  assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
  assert not np.array_equal(epoch0, epoch1)  # reshuffled per epoch
  # Batches straddling an epoch boundary still cover every example once per epoch.
  s = pipeline.Sampler(_arrays(10), 4, seed=0)
  seen = np.concatenate([s.batch(i)["x"] for i in range(5)])
  assert sorted(seen) == sorted(list(range(10)) * 2)


def test_sampler_host_sharding():
  hosts = [pipeline.Sampler(_arrays(12), 6, seed=1, process_index=i, process_count=3)
           for i in range(3)]
  full = pipeline.Sampler(_arrays(12), 6, seed=1)
  for step in range(4):
    parts = [h.batch(step)["x"] for h in hosts]
    assert all(len(p) == 2 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), full.batch(step)["x"])
    assert len(set(np.concatenate(parts))) == 6  # disjoint
  with pytest.raises(ValueError, match="does not divide by process_count"):
    pipeline.Sampler(_arrays(12), 7, seed=1, process_count=3)


def test_augment_label_consistent():
  rng = np.random.default_rng(0)
  label = np.zeros((2, 16, 16), np.uint8)
  label[:, :, :8] = 1
  image = np.where(label[..., None] == 1, 0.8, -0.8).astype(np.float32) * np.ones(3, np.float32)
  out = pipeline.augment({"image": image, "label": label, "id": np.array(["a", "b"])}, rng,
                         jitter=0.0)
  assert out["image"].shape == image.shape and out["label"].dtype == np.uint8
  assert -1 <= out["image"].min() and out["image"].max() <= 1
  # With no colour jitter the bright pixels are exactly where label 1 is (edges aside).
  bright = out["image"][..., 0] > 0.4
  dark = out["image"][..., 0] < -0.4
  assert (out["label"][bright] == 1).all() and (out["label"][dark] == 0).all()
  assert list(out["id"]) == ["a", "b"]


def test_registry():
  assert "fasseg/frontal02" in registry.names() and "celebamask8" in registry.names()
  assert registry.class_names("fasseg/frontal02")[:3] == ("background", "hair", "skin")
  assert registry.get("rendered_faces").config == "n1000_r64"
  with pytest.raises(KeyError, match="known datasets:.*fasseg/frontal02"):
    registry.get("fasseg/frontal99")
