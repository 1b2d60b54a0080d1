"""CelebAMask-HQ with the paper's 8 face-part classes (manual download).

On-disk layout of the official release (github.com/switchablenorms/CelebAMask-HQ):

  CelebAMask-HQ/
    CelebA-HQ-img/<id>.jpg                          1024x1024, id 0..29999
    CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png   512x512, one per part

A part PNG exists only when the face has that part; its pixels are > 0 inside
the part. The 19-class map is painted part by part in the official label order
(later parts overwrite earlier ones), then reduced to 8 classes as the paper
does: every labelled pixel starts as skin; hat, earring, necklace, neck and
cloth become background; eyeglasses stay skin; left/right parts merge; upper
lip, lower lip and inner mouth are mouth.

Images are resized to the mask size (512) with bicubic filtering. Splits are
ranges of image ids (the paper's): train 28000-29499 (the first N ids are the
N labelled images), validation 27500-27999, test 29500-29999.
"""
import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from gmseg.data import builder as builder_lib
from gmseg.data import common

# The official 19-class order (index = class id); parts are painted in this order.
CLASSES_19 = ("background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow",
              "l_ear", "r_ear", "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l",
              "neck", "cloth")
CLASS_NAMES = ("background", "ear", "eye", "eyebrow", "skin", "hair", "mouth", "nose")

_TO_8 = {
    "background": "background", "skin": "skin", "eye_g": "skin",
    "nose": "nose", "l_eye": "eye", "r_eye": "eye", "l_brow": "eyebrow", "r_brow": "eyebrow",
    "l_ear": "ear", "r_ear": "ear", "mouth": "mouth", "u_lip": "mouth", "l_lip": "mouth",
    "hair": "hair", "hat": "background", "ear_r": "background", "neck_l": "background",
    "neck": "background", "cloth": "background",
}
# Lookup table: 19-class id -> 8-class id.
MAP_19_TO_8 = np.array([CLASS_NAMES.index(_TO_8[c]) for c in CLASSES_19], np.uint8)

IDS_PER_FOLDER = 2000

_IMG_DIR = "CelebA-HQ-img"
_MASK_DIR = "CelebAMask-HQ-mask-anno"

_INSTRUCTIONS = f"""\
Download CelebAMask-HQ (https://github.com/switchablenorms/CelebAMask-HQ), unzip it,
and pass the folder that holds `{_IMG_DIR}/` and `{_MASK_DIR}/` (or its parent) as
`manual_dir`:

  CelebAMask-HQ/{_IMG_DIR}/28000.jpg
  CelebAMask-HQ/{_MASK_DIR}/14/28000_skin.png
"""


@dataclasses.dataclass(eq=False)
class CelebAMaskConfig(tfds.core.BuilderConfig):
  """Split ranges of image ids, each `[first, stop)`."""
  train_ids: tuple[int, int] = (28000, 29500)
  validation_ids: tuple[int, int] = (27500, 28000)
  test_ids: tuple[int, int] = (29500, 30000)


def find_root(manual_dir: os.PathLike | str) -> pathlib.Path:
  """The folder holding CelebA-HQ-img/ and CelebAMask-HQ-mask-anno/."""
  manual_dir = pathlib.Path(manual_dir)
  for root in (manual_dir, manual_dir / "CelebAMask-HQ"):
    if (root / _IMG_DIR).is_dir() and (root / _MASK_DIR).is_dir():
      return root
  raise FileNotFoundError(
      f"{manual_dir}: no {_IMG_DIR}/ and {_MASK_DIR}/ here or in CelebAMask-HQ/ below it.\n"
      + _INSTRUCTIONS)


def part_path(root: pathlib.Path, image_id: int, part: str) -> pathlib.Path:
  return root / _MASK_DIR / str(image_id // IDS_PER_FOLDER) / f"{image_id:05d}_{part}.png"


def label_19(root: pathlib.Path, image_id: int) -> np.ndarray:
  """Paints the per-part PNGs of one face into the 19-class map.

  Returns:
    uint8 `[height, width]` (512x512 in the release) with ids into `CLASSES_19`.
  """
  label, first = None, None
  for class_id, part in enumerate(CLASSES_19[1:], start=1):
    path = part_path(root, image_id, part)
    if not path.is_file():
      continue  # The face does not have this part.
    mask = common.open_image(path, "L")
    if label is None:
      label, first = np.zeros(mask.shape, np.uint8), path
    elif mask.shape != label.shape:
      raise ValueError(f"{path}: part mask is {mask.shape[1]}x{mask.shape[0]} but {first} is "
                       f"{label.shape[1]}x{label.shape[0]}; the parts of one face must match.")
    label[mask > 0] = class_id
  if label is None:
    raise FileNotFoundError(
        f"{root / _MASK_DIR / str(image_id // IDS_PER_FOLDER)}: no part mask "
        f"'{image_id:05d}_<part>.png' for image id {image_id}; the annotations are incomplete.")
  return label


def load_example(root: pathlib.Path, image_id: int) -> dict:
  """One example: the image resized to its 8-class label's size."""
  image_path = root / _IMG_DIR / f"{image_id}.jpg"
  if not image_path.is_file():
    raise FileNotFoundError(f"{image_path}: image of id {image_id} is missing; the download "
                            "is incomplete (ids 0-29999 are expected).")
  label = MAP_19_TO_8[label_19(root, image_id)]
  image = common.open_image(image_path, "RGB")
  h, w = label.shape
  if image.shape[0] * w != image.shape[1] * h:
    raise ValueError(f"{image_path}: image is {image.shape[1]}x{image.shape[0]} but its masks "
                     f"are {w}x{h}; the aspect ratios differ, so the pair does not match.")
  if image.shape[:2] != (h, w):
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
  return common.example(image, label, str(image_id))


class CelebAMask(builder_lib.Builder):
  """CelebAMask-HQ, 8 face-part classes, the paper's id-range splits."""

  name = "celebamask"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "19-to-8 classes; images resized to 512."}
  BUILDER_CONFIGS = [CelebAMaskConfig(name="parts8", description="8 classes, paper splits.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS


  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=common.features(),
        homepage="https://github.com/switchablenorms/CelebAMask-HQ",
    )

  def _split_generators(self, dl_manager):
    root = find_root(dl_manager.manual_dir)
    cfg = self.builder_config
    return {
        "train": self._generate_examples(root, cfg.train_ids),
        "validation": self._generate_examples(root, cfg.validation_ids),
        "test": self._generate_examples(root, cfg.test_ids),
    }

  def _generate_examples(self, root, id_range):
    for image_id in range(*id_range):
      yield str(image_id), load_example(root, image_id)


DATASETS = {
    "celebamask8": common.DatasetSpec(CelebAMask, "parts8", CLASS_NAMES,
                                      ("train", "validation", "test")),
}
