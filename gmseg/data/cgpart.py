"""CGPart cars: rendered images as the labelled set, real images as test (manual download).

Two folders, as the paper's code expects them:

  CGPart_render/car/image/<ShapeNet model id>/<frame>.png   rendered images (RGBA or RGB)
  CGPart_render/car/seg/<ShapeNet model id>/<frame>.png     palette PNGs, 32 CGPart ids
  CGPart_real/Images/car_imagenet_cropped/<id>.JPEG         real images (cgpart_real.zip)
  CGPart_real/Annotations_png/car_imagenet_cropped/<id>.png palette/grey PNGs, 32 CGPart ids
  CGPart_real/Image_sets/car_imagenet_val.txt               ids of the real split

The 32 CGPart car classes are reduced to the paper's 15: every labelled pixel
starts as car body (so the left/right frames stay body), front/back and
left/right variants merge, quarter windows are windows.

`train` holds the renders of the paper's four models (minivan, SUV, sedan,
wagon; the truck is left out), ids `<model name>_<frame>`; the paper draws
1,000 of them. `test` holds the real images of `car_imagenet_val.txt`. Both
are stored at native size (the paper resizes to 256x192).
"""
import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from gmseg.data import builder as builder_lib
from gmseg.data import common

CGPART_CAR_CLASSES = (
    "background", "back_bumper", "back_left_door", "back_left_wheel", "back_left_window",
    "back_license_plate", "back_right_door", "back_right_wheel", "back_right_window",
    "back_windshield", "front_bumper", "front_left_door", "front_left_wheel",
    "front_left_window", "front_license_plate", "front_right_door", "front_right_wheel",
    "front_right_window", "front_windshield", "hood", "left_frame", "left_head_light",
    "left_mirror", "left_quarter_window", "left_tail_light", "right_frame", "right_head_light",
    "right_mirror", "right_quarter_window", "right_tail_light", "roof", "trunck")
CLASS_NAMES = ("background", "back_bumper", "car_body", "door", "front_bumper", "head_light",
               "hood", "licence_plate", "mirror", "roof", "tail_light", "trunk", "wheel",
               "window", "windshield")


def _simplified(name: str) -> str:
  if name == "background":
    return "background"
  if name in ("back_bumper", "front_bumper", "hood", "roof"):
    return name
  if name == "trunck":
    return "trunk"
  for suffix, target in (("_door", "door"), ("_wheel", "wheel"), ("_window", "window"),
                         ("_license_plate", "licence_plate"), ("_windshield", "windshield"),
                         ("_head_light", "head_light"), ("_tail_light", "tail_light"),
                         ("_mirror", "mirror")):
    if name.endswith(suffix):
      return target
  return "car_body"  # left_frame, right_frame


# Lookup table: CGPart id -> simplified id.
MAP_32_TO_15 = np.array([CLASS_NAMES.index(_simplified(c)) for c in CGPART_CAR_CLASSES], np.uint8)

# ShapeNet model ids of the rendered cars (the paper's code).
CAR_MODELS = {
    "minivan": "4ef6af15bcc78650bedced414fad522f",
    "suv": "473dd606c5ef340638805e546aa28d99",
    "sedan": "6710c87e34056a29aa69dfdc5532bb13",
    "wagon": "bad0a52f07afc2319ed410a010efa019",
    "truck": "42af1d5d3b2524003e241901f2025878",
}

_INSTRUCTIONS = """\
Download the real CGPart images (https://qliu24.github.io/cgpart/, cgpart_real.zip) and the
renders (the paper's, or rendered with github.com/qliu24/render-3d-segmentation) and pass as
`manual_dir` a folder holding both:

  <manual_dir>/CGPart_render/car/image/<model id>/000000.png   (and .../seg/<model id>/000000.png)
  <manual_dir>/CGPart_real/Images/car_imagenet_cropped/<id>.JPEG
  <manual_dir>/CGPart_real/Annotations_png/car_imagenet_cropped/<id>.png
  <manual_dir>/CGPart_real/Image_sets/car_imagenet_val.txt
"""


@dataclasses.dataclass(eq=False)
class CGPartConfig(tfds.core.BuilderConfig):
  models: tuple[str, ...] = ("minivan", "suv", "sedan", "wagon")
  real_split: str = "val"


def open_index_png(path: pathlib.Path) -> np.ndarray:
  """A palette or grey PNG's raw indices, uint8 `[height, width]`."""
  if not path.is_file():
    raise FileNotFoundError(f"{path}: segmentation file is missing.")
  try:
    with Image.open(path) as im:
      im.load()
      mode = im.mode
      array = np.asarray(im)
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f"{path}: cannot read this image ({type(e).__name__}: {e}).") from e
  if mode not in ("P", "L"):
    raise ValueError(f"{path}: segmentation must be a palette or grey PNG of class ids, "
                     f"got mode {mode}.")
  return array


def load_example(image_path: pathlib.Path, seg_path: pathlib.Path, example_id: str) -> dict:
  seg = open_index_png(seg_path)
  if seg.max() >= len(CGPART_CAR_CLASSES):
    bad = np.unique(seg[seg >= len(CGPART_CAR_CLASSES)]).tolist()
    raise ValueError(f"{seg_path}: class ids {bad} are not CGPart car ids "
                     f"(0..{len(CGPART_CAR_CLASSES) - 1}).")
  image = common.open_image(image_path, "RGB")
  if image.shape[:2] != seg.shape:
    raise ValueError(f"{seg_path}: mask is {seg.shape[1]}x{seg.shape[0]} (WxH) but {image_path} "
                     f"is {image.shape[1]}x{image.shape[0]}; the pair does not match.")
  return common.example(image, MAP_32_TO_15[seg], example_id)


def render_pairs(render_root: pathlib.Path, models) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
  """(id, image, seg) of the renders of `models`, sorted by model name then frame."""
  out = []
  for name in sorted(models):
    if name not in CAR_MODELS:
      raise ValueError(f"unknown CGPart car model {name!r}; known: {sorted(CAR_MODELS)}.")
    folder = render_root / "image" / CAR_MODELS[name]
    frames = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not frames:
      raise FileNotFoundError(f"{folder}: no rendered images of the {name} model.\n" + _INSTRUCTIONS)
    out += [(f"{name}_{f.stem}", f, render_root / "seg" / CAR_MODELS[name] / f.name) for f in frames]
  return out


def real_pairs(real_root: pathlib.Path, split: str) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
  """(id, image, seg) of the real images listed for `split`."""
  listing = real_root / "Image_sets" / f"car_imagenet_{split}.txt"
  if not listing.is_file():
    raise FileNotFoundError(f"{listing}: CGPart real split list is missing.\n" + _INSTRUCTIONS)
  ids = listing.read_text().split()
  if not ids:
    raise ValueError(f"{listing}: the split list is empty.")
  return [(i, real_root / "Images" / "car_imagenet_cropped" / f"{i}.JPEG",
           real_root / "Annotations_png" / "car_imagenet_cropped" / f"{i}.png") for i in ids]


def find_roots(manual_dir: os.PathLike | str) -> tuple[pathlib.Path, pathlib.Path]:
  """(CGPart_render/car, CGPart_real)."""
  manual_dir = pathlib.Path(manual_dir)
  render, real = manual_dir / "CGPart_render" / "car", manual_dir / "CGPart_real"
  for folder in (render, real):
    if not folder.is_dir():
      raise FileNotFoundError(f"{folder}: folder is missing.\n" + _INSTRUCTIONS)
  return render, real


class CGPart(builder_lib.Builder):
  """CGPart cars with the paper's 15 simplified classes."""

  name = "cgpart"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Renders as train, real images as test; 15 classes."}
  BUILDER_CONFIGS = [CGPartConfig(name="car", description="Cars, 15 classes.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS


  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=common.features(),
                                 homepage="https://qliu24.github.io/cgpart/")

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    render, real = find_roots(dl_manager.manual_dir)
    return {"train": self._generate_examples(render_pairs(render, cfg.models)),
            "test": self._generate_examples(real_pairs(real, cfg.real_split))}

  def _generate_examples(self, pairs):
    for example_id, image_path, seg_path in pairs:
      yield example_id, load_example(image_path, seg_path, example_id)


DATASETS = {"cgpart_car": common.DatasetSpec(CGPart, "car", CLASS_NAMES, ("train", "test"))}
