"""DatasetGAN's annotated sets Car-20, Cat-16 and Face-34 (manual download).

Layout of the DatasetGAN release (github.com/nv-tlabs/datasetGAN_release,
`dataset_release/annotation/`):

  annotation/training_data/{car,cat,face}_processed/image_<k>.jpg, image_mask<k>.npy
  annotation/testing_data/{car_20,cat_16,face_34}_class/<name>_<k>.{png,jpg}, <name><k>.npy

Images and masks are paired by the number that ends their file names (an image
or a mask without its partner is an error); ids are the image file stems,
ordered by that number, so "the first N" are DatasetGAN's first N.

As DatasetGAN (and the paper) do, a class with fewer than 30 pixels in a mask
is an annotation artefact and becomes background; this runs on the mask as
stored, before any resizing. Images and masks are then resized to the
paper's resolution (Car-20 512, Cat-16 256, Face-34 512; bicubic for images,
nearest for masks). Car images are 4:3 content: where one of a pair is a square
canvas and the other 4:3, the canvas's centre 3/4 rows (the content of
StyleGAN's car canvas) are kept first so the pair stays aligned.
"""
import dataclasses
import os
import pathlib
import re

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from gmseg.data import builder as builder_lib
from gmseg.data import common

CAR20_CLASSES = ("background", "back_bumper", "bumper", "car_body", "car_lights", "door",
                 "fender", "grilles", "handles", "hoods", "licensePlate", "mirror", "roof",
                 "running_boards", "tailLight", "tire", "trunk_lids", "wheelhub", "window",
                 "windshield")
# DatasetGAN names the cat classes only by number.
CAT16_CLASSES = ("background",) + tuple(f"part_{i:02d}" for i in range(1, 16))
FACE34_CLASSES = (
    "background", "head", "head***cheek", "head***chin", "head***ear", "head***ear***helix",
    "head***ear***lobule", "head***eye***bottom lid", "head***eye***eyelashes",
    "head***eye***iris", "head***eye***pupil", "head***eye***sclera", "head***eye***tear duct",
    "head***eye***top lid", "head***eyebrow", "head***forehead", "head***frown", "head***hair",
    "head***hair***sideburns", "head***jaw", "head***moustache", "head***mouth***inferior lip",
    "head***mouth***oral comisure", "head***mouth***superior lip", "head***mouth***teeth",
    "head***neck", "head***nose", "head***nose***ala of nose", "head***nose***bridge",
    "head***nose***nose tip", "head***nose***nostril", "head***philtrum", "head***temple",
    "head***wrinkles")
CLASS_NAMES = {"car20": CAR20_CLASSES, "cat16": CAT16_CLASSES, "face34": FACE34_CLASSES}

MIN_CLASS_PIXELS = 30
_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
_NUMBER = re.compile(r"(\d+)$")

_INSTRUCTIONS = """\
Download the DatasetGAN release (https://github.com/nv-tlabs/datasetGAN_release, its Google
Drive `dataset_release`) and pass as `manual_dir` the `annotation` folder (or a parent holding
annotation/ or dataset_release/annotation/):

  annotation/training_data/car_processed/image_0.jpg, image_mask0.npy
  annotation/testing_data/car_20_class/...
"""


@dataclasses.dataclass(eq=False)
class DatasetGANConfig(tfds.core.BuilderConfig):
  obj: str = "car"            # folder prefix: car, cat, face
  num_classes: int = 20
  size: int = 512             # stored resolution (square, as the paper trains)


def find_root(manual_dir: os.PathLike | str) -> pathlib.Path:
  """The `annotation` folder (holding training_data/ and testing_data/)."""
  manual_dir = pathlib.Path(manual_dir)
  for root in (manual_dir, manual_dir / "annotation", manual_dir / "dataset_release" / "annotation"):
    if (root / "training_data").is_dir() and (root / "testing_data").is_dir():
      return root
  raise FileNotFoundError(f"{manual_dir}: no training_data/ and testing_data/ here or in "
                          "annotation/ below it.\n" + _INSTRUCTIONS)


def _number(path: pathlib.Path) -> int | None:
  match = _NUMBER.search(path.stem)
  return None if match is None else int(match.group(1))


def list_pairs(folder: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(image, mask) file pairs of a DatasetGAN folder, in order of their number."""
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder}: DatasetGAN folder is missing.\n" + _INSTRUCTIONS)
  images, masks = {}, {}
  for path in sorted(folder.iterdir()):
    kind = (images if path.suffix.lower() in _IMAGE_EXTS
            else masks if path.suffix.lower() == ".npy" else None)
    if kind is None:
      continue
    number = _number(path)
    if number is None:
      raise ValueError(f"{path}: its name does not end with a number, so it cannot be paired.")
    if number in kind:
      raise ValueError(f"{path} and {kind[number]} have the same number {number}.")
    kind[number] = path
  for number in sorted(set(images) ^ set(masks)):
    have = images.get(number) or masks.get(number)
    raise FileNotFoundError(f"{have}: no {'mask' if number in images else 'image'} with "
                            f"number {number} in {folder}; the pair is incomplete.")
  if not images:
    raise FileNotFoundError(f"{folder}: no images (.png/.jpg) with .npy masks.\n" + _INSTRUCTIONS)
  return [(images[n], masks[n]) for n in sorted(images)]


def load_mask(path: pathlib.Path, image_shape) -> np.ndarray:
  """A DatasetGAN .npy mask as integer `[height, width]`."""
  try:
    mask = np.load(path, allow_pickle=False)
  except Exception as e:  # numpy raises several types for broken files.
    raise ValueError(f"{path}: cannot read this .npy mask ({type(e).__name__}: {e}).") from e
  if mask.ndim == 3:
    # Stored with a channel axis first or last; keep one channel as LAGM does.
    mask = mask[..., 0] if mask.shape[:2] == tuple(image_shape[:2]) else mask[0]
  if mask.ndim != 2:
    raise ValueError(f"{path}: mask must be [H, W] (or with one channel axis), got {mask.shape}.")
  if not np.issubdtype(mask.dtype, np.integer):
    if not np.all(np.isfinite(mask)) or np.any(mask != np.round(mask)):
      raise ValueError(f"{path}: mask holds non-integer values; it is not a class map.")
  return mask.astype(np.int64)


def remove_small_classes(mask: np.ndarray, min_pixels: int = MIN_CLASS_PIXELS) -> np.ndarray:
  """Zeroes every non-background class with fewer than `min_pixels` pixels."""
  ids, counts = np.unique(mask, return_counts=True)
  small = ids[(ids != 0) & (counts < min_pixels)]
  return np.where(np.isin(mask, small), 0, mask)


def _wide_crop(array: np.ndarray) -> np.ndarray:
  """Centre 3/4 rows of a square canvas (the 4:3 content)."""
  h = array.shape[0]
  top = h // 8
  return array[top:top + h * 3 // 4]


def load_pair(image_path, mask_path, num_classes: int, size: int):
  """One resized example: image uint8 `[size, size, 3]`, label uint8 `[size, size]`."""
  image = common.open_image(image_path, "RGB")
  mask = remove_small_classes(load_mask(mask_path, image.shape))
  bad = np.unique(mask[(mask < 0) | (mask >= num_classes)])
  if bad.size:
    raise ValueError(f"{mask_path}: class ids {bad.tolist()} are outside 0..{num_classes - 1}.")
  (ih, iw), (mh, mw) = image.shape[:2], mask.shape
  if ih * mw != iw * mh:
    if ih == iw and 4 * mh == 3 * mw:
      image = _wide_crop(image)
    elif mh == mw and 4 * ih == 3 * iw:
      mask = _wide_crop(mask)
    else:
      raise ValueError(f"{mask_path}: mask is {mw}x{mh} (WxH) but {image_path} is {iw}x{ih}; "
                       "the aspect ratios differ, so the pair does not match.")
  image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
  label = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((size, size), Image.NEAREST))
  return image, label


class DatasetGAN(builder_lib.Builder):
  """DatasetGAN's generated training images and real test images with part masks."""

  name = "datasetgan"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Small classes removed; resized to the paper's resolution."}
  BUILDER_CONFIGS = [
      DatasetGANConfig(name="car20", obj="car", num_classes=20, size=512,
                       description="Cars, 20 classes, 512x512 (4:3 content stretched)."),
      DatasetGANConfig(name="cat16", obj="cat", num_classes=16, size=256,
                       description="Cats, 16 classes, 256x256."),
      DatasetGANConfig(name="face34", obj="face", num_classes=34, size=512,
                       description="Faces, 34 classes, 512x512."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS


  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=common.features(),
                                 homepage="https://nv-tlabs.github.io/datasetGAN/")

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = find_root(dl_manager.manual_dir)
    train = root / "training_data" / f"{cfg.obj}_processed"
    test = root / "testing_data" / f"{cfg.obj}_{cfg.num_classes}_class"
    return {"train": self._generate_examples(list_pairs(train)),
            "test": self._generate_examples(list_pairs(test))}

  def _generate_examples(self, pairs):
    cfg = self.builder_config
    for image_path, mask_path in pairs:
      image, label = load_pair(image_path, mask_path, cfg.num_classes, cfg.size)
      yield image_path.stem, common.example(image, label, image_path.stem)


DATASETS = {
    f"datasetgan_{name}": common.DatasetSpec(DatasetGAN, name, classes, ("train", "test"))
    for name, classes in CLASS_NAMES.items()
}
