"""Augmentation: the zoom range (zooming out repeats edge pixels of image and
label alike) and phase two's augmented synthetic batches (`downstream.augment`)."""
import itertools

import ml_collections
import numpy as np
import pytest

from gmseg import config_base
from gmseg import downstream
from gmseg.data import pipeline


def _batch(n=3, size=4):
  # Labels name their source pixel (row * size + col), so the sampled window can be read back.
  label = np.broadcast_to(np.arange(size * size, dtype=np.uint8).reshape(size, size),
                          (n, size, size)).copy()
  image = np.random.default_rng(0).uniform(-0.9, 0.9, (n, size, size, 3)).astype(np.float32)
  return {"image": image, "label": label}


def test_default_zoom_is_the_previous_zoom_in_only_augmentation():
  batch = _batch()
  a = pipeline.augment(batch, np.random.default_rng(3))
  b = pipeline.augment(batch, np.random.default_rng(3), min_scale=1.0, max_scale=1.3)
  c = pipeline.augmenter(config_base.get_base())(batch, np.random.default_rng(3))
  for out in (b, c):
    np.testing.assert_array_equal(out["image"], a["image"])
    np.testing.assert_array_equal(out["label"], a["label"])


def test_zoom_out_samples_a_window_past_the_border_with_edge_pixels():
  batch = _batch(n=8)
  out = pipeline.augment(batch, np.random.default_rng(1), min_scale=0.5, max_scale=0.5,
                         jitter=0.0)
  found = 0
  for i in range(8):
    # s = 0.5 on 4 pixels: a window of 8 starting at top, left in [-4, 0]; output
    # pixel i samples the window at top + 2i + 0.5: the label the nearest source
    # row (ties to even, numpy's rounding), the image the mean of rows top + 2i, +1.
    matches = []
    for top, left, flip in itertools.product(range(-4, 1), range(-4, 1), (False, True)):
      src_l = batch["label"][i]
      if flip:
        src_l = src_l[:, ::-1]
        src_i = np.pad(batch["image"][i][:, ::-1], ((4, 4), (4, 4), (0, 0)), mode="edge")
      else:
        src_i = np.pad(batch["image"][i], ((4, 4), (4, 4), (0, 0)), mode="edge")
      rows = np.clip(np.round(top + 2 * np.arange(4) + 0.5).astype(int), 0, 3)
      cols = np.clip(np.round(left + 2 * np.arange(4) + 0.5).astype(int), 0, 3)
      if not np.array_equal(out["label"][i], src_l[rows[:, None], cols[None, :]]):
        continue
      # Bilinear image: the mean of the 2x2 padded block at the same place.
      r, c = top + 4 + 2 * np.arange(4), left + 4 + 2 * np.arange(4)
      block = (src_i[r][:, c] + src_i[r + 1][:, c] + src_i[r][:, c + 1]
               + src_i[r + 1][:, c + 1]) / 4
      matches.append(np.abs(out["image"][i] - block).max())
    assert matches and min(matches) < 1e-5, (i, matches)
    found += 1
  assert found == 8


def test_zoom_range_is_checked():
  with pytest.raises(ValueError, match="augment_zoom"):
    pipeline.augment(_batch(), np.random.default_rng(0), min_scale=0.0)
  with pytest.raises(ValueError, match="augment_zoom"):
    pipeline.augment(_batch(), np.random.default_rng(0), min_scale=1.5, max_scale=1.2)


def test_downstream_augment_transforms_each_synthetic_batch_by_step():
  config = config_base.get_base()
  config.seed = 4
  config.data.augment_zoom = (0.7, 1.3)
  data = _batch(n=4, size=8)
  plain, extra = downstream.batch_transform(config)
  assert extra == 0 and plain(data, 3) is data  # off by default: the batch as read
  config.downstream.augment = True
  transform, extra = downstream.batch_transform(config)
  out = transform(data, 3)
  expected = pipeline.augment(data, np.random.default_rng([4, 3, 2]), min_scale=0.7,
                              max_scale=1.3)
  assert extra == 0 and out["image"].shape == data["image"].shape
  np.testing.assert_array_equal(out["image"], expected["image"])
  np.testing.assert_array_equal(out["label"], expected["label"])
  assert not np.array_equal(out["label"], data["label"])
  assert not np.array_equal(transform(data, 4)["image"], out["image"])  # a new draw per step
