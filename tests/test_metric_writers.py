"""MetricWriter: JSONL content, TensorBoard event records, config dump."""
import json
import struct

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gmseg import metric_writers


def read_event_records(path):
  """Parses TFRecord framing: u64 length, u32 crc, data, u32 crc."""
  data = path.read_bytes()
  records, pos = [], 0
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    records.append(data[pos + 12:pos + 12 + length])
    pos += 12 + length + 4
  assert pos == len(data)
  return records


def test_jsonl_and_tensorboard(tmp_path):
  with metric_writers.MetricWriter(tmp_path) as writer:
    writer.write_scalars(1, {"loss": jnp.float32(0.5), "acc": np.float64(0.25),
                             "n": np.int32(3), "iou": np.array([0.1, 0.2])},
                         prefix="train")
    writer.write_scalars(2, {"fg_miou": 0.75}, prefix="val")
    writer.write_images(2, "labels", np.zeros((4, 6, 3), np.uint8))
    writer.write_images(2, "mask", np.full((4, 6), 255, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
      writer.write_images(2, "bad", np.zeros((4, 6, 3), np.float32))
    with pytest.raises(ValueError, match="reserved"):
      writer.write_scalars(3, {"step": 1})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2
  first = json.loads(lines[0])
  assert first["step"] == 1 and first["prefix"] == "train"
  assert first["loss"] == 0.5 and first["acc"] == 0.25 and first["n"] == 3
  assert first["iou"] == pytest.approx([0.1, 0.2]) and isinstance(first["time"], float)
  assert [r["step"] for r in metric_writers.read_jsonl(tmp_path, prefix="val")] == [2]

  events = list(tmp_path.glob("events.out.tfevents.*"))
  assert len(events) == 1
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars, images = {}, {}
  for record in read_event_records(events[0]):
    event = event_pb2.Event.FromString(record)
    for value in event.summary.value:
      if value.HasField("image"):
        images[value.tag] = (event.step, value.image.height, value.image.width,
                             value.image.colorspace, value.image.encoded_image_string[:4])
      else:
        scalars[value.tag] = (event.step, value.simple_value)
  # The [2]-array is JSONL-only.
  assert scalars == {"train/loss": (1, 0.5), "train/acc": (1, 0.25), "train/n": (1, 3.0),
                     "val/fg_miou": (2, 0.75)}
  assert images == {"labels": (2, 4, 6, 3, b"\x89PNG"), "mask": (2, 4, 6, 3, b"\x89PNG")}  # gray -> RGB


def test_append_on_resume_and_torn_line(tmp_path):
  writer = metric_writers.MetricWriter(tmp_path, tensorboard=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 2, "lo')  # killed mid-line
  writer = metric_writers.MetricWriter(tmp_path, tensorboard=False)
  writer.write_scalars(2, {"loss": 0.5})
  writer.close()
  records = metric_writers.read_jsonl(tmp_path / "metrics.jsonl")
  assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.5)]


def test_disabled_writes_nothing(tmp_path):
  writer = metric_writers.MetricWriter(tmp_path / "run", enabled=False)
  writer.write_scalars(1, {"loss": 1.0})
  writer.write_images(1, "x", np.zeros((2, 2), np.uint8))
  writer.close()
  assert not (tmp_path / "run").exists()


def test_write_config(tmp_path):
  config = ml_collections.ConfigDict({"lr": 0.1, "model": {"widths": (8, 16)}, "name": "unet"})
  path = metric_writers.write_config(tmp_path, config)
  assert json.loads(path.read_text()) == {"lr": 0.1, "model": {"widths": [8, 16]}, "name": "unet"}
  with pytest.raises(TypeError, match="JSON"):
    metric_writers.to_jsonable({"f": object()})
