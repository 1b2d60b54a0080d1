"""Labels with ids the config has no class for are rejected at load time, naming
the examples and ids (real rendered faces: 6 classes, loaded with a 3-class config)."""
import numpy as np
import pytest

from gmseg import build
from gmseg import config_base
from gmseg import errors
from gmseg.data import common


def _config(data_dir, class_names):
  c = config_base.get_base()
  c.class_names = class_names
  c.data.dataset = "rendered_faces"
  c.data.resolution = 16
  c.data.data_dir = str(data_dir)
  c.lock()
  return c


def test_ids_beyond_the_config_classes_are_rejected(tmp_path_factory):
  # The same data_dir as test_downstream.py / test_restore_eval.py: built once a session.
  data_dir = tmp_path_factory.getbasetemp() / "tfds_rendered"
  ok = build.split_arrays(_config(data_dir, config_base.FASSEG_CLASSES), "test", limit=4)
  assert int(ok["label"].max()) == 5  # eyes, nose and mouth are there
  with pytest.raises(common.LabelRangeError) as info:
    build.split_arrays(_config(data_dir, ("background", "hair", "skin")), "test", limit=4)
  message = str(info.value)
  assert isinstance(info.value, errors.UserError)
  assert "rendered_faces split 'test'" in message and "outside the 3 classes" in message
  first = str(ok["id"][0])
  present = sorted({int(v) for v in np.unique(ok["label"][0]) if v >= 3})
  assert f"{first}: {present}" in message, message


def test_ignore_is_allowed_and_others_named():
  labels = np.zeros((3, 4, 4), np.uint8)
  labels[0, 0, 0] = 255               # ignore: fine
  labels[1, 1, 1], labels[1, 2, 2] = 7, 6
  labels[2, 3, 3] = 2
  common.check_label_range(labels[[0, 2]], ["a", "c"], 3, "here")
  with pytest.raises(common.LabelRangeError, match=r"here: 1 example\(s\) .* b: \[6, 7\]\."):
    common.check_label_range(labels, ["a", "b", "c"], 3, "here")
