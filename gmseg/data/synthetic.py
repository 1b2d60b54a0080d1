"""The generated (G + A) training set of phase two, as a tfds array_record dataset.

`gmseg.downstream.generate` writes generated images and the annotator's
labels into numpy shards (`shard_*.npz` in a staging folder, with a
`manifest.json` that lists the shards and the kept latent indices); this builder turns them into
`<data_dir>/gmseg_synthetic/1.0.0/` with one split, 'train'. Examples are

  image:      uint8 `[height, width, 3]` PNG (generated image).
  label:      uint8 `[height, width, 1]` PNG, argmax of the annotator's softmax.
  confidence: uint8 `[height, width, 1]` PNG, max probability * 255 (rounded).
  id:         '00000042': the index of the latent the image came from.
  score:      float32, the image's filter score (mean confidence, or ensemble
              disagreement; see gmseg.downstream).

As for every gmseg builder, tfds shuffles examples at write time; `read`
sorts by id. Reading needs no staging folder: `builder(data_dir)` finds the
prepared files.
"""
import io
import json
import os
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from gmseg.data import builder as builder_lib
from gmseg.data import common

MANIFEST = "manifest.json"


def _png(array: np.ndarray, mode: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array, mode).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


class GmsegSynthetic(builder_lib.Builder):
  """Images of a frozen generator labelled by a trained annotator.

  Args:
    staging_dir: folder with the shards and manifest written by
      `gmseg.downstream.generate`; needed only to build, not to read.
    **kwargs: tfds builder arguments (data_dir, file_format, ...).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def __init__(self, *, staging_dir: os.PathLike | str | None = None, **kwargs):
    self._staging_dir = None if staging_dir is None else pathlib.Path(staging_dir)
    super().__init__(**kwargs)


  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "label": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            "confidence": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            "id": tfds.features.Text(),
            "score": tfds.features.Scalar(dtype=np.float32),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    if self._staging_dir is None or not (self._staging_dir / MANIFEST).is_file():
      raise FileNotFoundError(
          f"gmseg_synthetic is not prepared in {self.data_dir} and no staging folder with "
          f"{MANIFEST} was given: run gmseg.downstream.generate(config, workdir) to build it.")
    return {"train": self._generate_examples(self._staging_dir)}

  def _generate_examples(self, staging_dir: pathlib.Path):
    manifest = json.loads((staging_dir / MANIFEST).read_text())
    keep = set(manifest["keep"])
    for shard in manifest["shards"]:
      with np.load(staging_dir / shard) as data:
        for i, index in enumerate(data["index"]):
          if int(index) not in keep:
            continue
          example_id = f"{int(index):08d}"
          ex = common.example(data["image"][i], data["label"][i], example_id)
          ex["confidence"] = _png(data["confidence"][i], "L")
          ex["score"] = np.float32(data["score"][i])
          yield example_id, ex


def builder(data_dir: os.PathLike | str,
            staging_dir: os.PathLike | str | None = None) -> GmsegSynthetic:
  """The builder rooted at `data_dir` (array_record files)."""
  return GmsegSynthetic(data_dir=os.fspath(data_dir), file_format=common.FILE_FORMAT,
                        staging_dir=staging_dir)


def build(data_dir: os.PathLike | str, staging_dir: os.PathLike | str) -> GmsegSynthetic:
  """Writes the dataset from a staging folder; returns the prepared builder."""
  b = builder(data_dir, staging_dir)
  b.download_and_prepare(download_config=common.download_config())
  return b


def is_prepared(data_dir: os.PathLike | str) -> bool:
  """Whether `data_dir` holds a complete gmseg_synthetic dataset."""
  return builder(data_dir).is_prepared()


def source(data_dir: os.PathLike | str):
  """Random-access reader of the 'train' split (tfds data source: `len`, `[i]`).

  Examples come in write order (a fixed order for a given dataset), with
  `label`/`confidence` as `[height, width, 1]`.
  """
  b = builder(data_dir)
  if not b.is_prepared():
    raise FileNotFoundError(f"No gmseg_synthetic dataset in {data_dir}: run "
                            "gmseg.downstream.generate(config, workdir) first.")
  return b.as_data_source(split="train")


def read(data_dir: os.PathLike | str, limit: int | None = None) -> dict[str, np.ndarray]:
  """Reads the set into memory, sorted by id (small sets, tests, notebooks).

  Returns:
    {'image': uint8 `[N, H, W, 3]`, 'label': uint8 `[N, H, W]`,
     'confidence': uint8 `[N, H, W]`, 'score': float32 `[N]`, 'id': `[N]` str}.
  """
  src = source(data_dir)
  examples = sorted((src[i] for i in range(len(src))), key=lambda ex: _text(ex["id"]))
  if limit is not None:
    examples = examples[:limit]
  if not examples:
    raise ValueError(f"The gmseg_synthetic dataset in {data_dir} is empty.")
  return {"image": np.stack([ex["image"] for ex in examples]),
          "label": np.stack([ex["label"][..., 0] for ex in examples]),
          "confidence": np.stack([ex["confidence"][..., 0] for ex in examples]),
          "score": np.array([ex["score"] for ex in examples], np.float32),
          "id": np.array([_text(ex["id"]) for ex in examples])}


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
