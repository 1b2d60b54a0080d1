"""Pascal-Part horse and aeroplane, 6 classes, per-instance crops (manual download).

Needs PASCAL VOC 2010 trainval (`JPEGImages/`, `Annotations/` for the boxes,
`ImageSets/Main/<obj>_{train,val}.txt`) and the Pascal-Part annotations
(`Annotations_Part/<image id>.mat`, MATLAB v5: struct `anno` with `imname` and
`objects(i).{class, class_ind, mask, parts(j).{part_name, mask}}`).

Crops follow the paper's preprocessing:
  * images: the positives (`1`) of `ImageSets/Main/<obj>_<split>.txt` that have
    at least one `<obj>` object in their .mat; the part map paints the parts of
    every `<obj>` object (later objects and parts overwrite earlier ones);
  * instances: the `<obj>` boxes of `Annotations/<id>.xml`, in file order; one
    is skipped when its box overlaps another `<obj>` box with "IoU" > 0.05 or
    when its width or height (VOC inclusive pixels) is under `min_size`
    (32 horse, 50 aeroplane);
  * crop: a square of side max(w, h) centred on the box, clipped to the image,
    then zero-padded back to a square with the clipped content centred;
  * dropped when part pixels cover < 1% of the crop.
Crop ids are `<image id>_<instance index>`. The VOC train crops sorted by file
name give `train` (the first 180) and `validation` (the rest); VOC val crops
give `test`. Crops are stored at their native size (the paper resizes to 256).

The .mat files are read with `scipy.io.loadmat` (scipy is a hard dependency of
jax, so it is always installed).
"""
import dataclasses
import os
import pathlib
import re
import xml.etree.ElementTree as ET

import numpy as np
import tensorflow_datasets as tfds

from gmseg.data import builder as builder_lib
from gmseg.data import common

HORSE_CLASSES = ("background", "head", "torso", "legs", "neck", "tail")
AEROPLANE_CLASSES = ("background", "body", "stern", "wing", "engine", "wheel")
CLASS_NAMES = {"horse": HORSE_CLASSES, "aeroplane": AEROPLANE_CLASSES}

_HORSE_PARTS = {
    **dict.fromkeys(("head", "leye", "reye", "lear", "rear", "muzzle"), "head"),
    "torso": "torso",
    **dict.fromkeys(("lfuleg", "lflleg", "rfuleg", "rflleg", "lbuleg", "lblleg", "rbuleg",
                     "rblleg", "lfho", "rfho", "lbho", "rbho"), "legs"),
    "neck": "neck",
    "tail": "tail",
}
_AEROPLANE_PARTS = {"body": "body", "stern": "stern", "tail": "stern", "lwing": "wing",
                    "rwing": "wing"}
_NUMBERED = re.compile(r"^(engine|wheel)_\d+$")  # aeroplane: engine_1, wheel_3, ...

MAX_BOX_IOU = 0.05
MIN_PART_AREA = 0.01

_INSTRUCTIONS = """\
Download PASCAL VOC 2010 trainval (http://host.robots.ox.ac.uk/pascal/VOC/voc2010/) and the
Pascal-Part annotations (http://roozbehm.info/pascal-parts/pascal-parts.html, trainval.tar.gz).
Pass as `manual_dir` the VOC2010 folder (or a parent holding VOCdevkit/VOC2010 or VOC2010):

  VOC2010/JPEGImages/2008_000002.jpg
  VOC2010/Annotations/2008_000002.xml
  VOC2010/ImageSets/Main/horse_train.txt, horse_val.txt, aeroplane_train.txt, aeroplane_val.txt
  trainval/Annotations_Part/2008_000002.mat  (Pascal-Part, beside VOC2010 or VOCdevkit, or
                                             inside VOC2010/, VOC2010/part_segmentation/)
"""


def part_class(obj: str, part_name: str, path=None) -> int:
  """Class id of a Pascal-Part part name for object class `obj`."""
  names = CLASS_NAMES[obj]
  if obj == "horse" and part_name in _HORSE_PARTS:
    return names.index(_HORSE_PARTS[part_name])
  if obj == "aeroplane":
    if part_name in _AEROPLANE_PARTS:
      return names.index(_AEROPLANE_PARTS[part_name])
    match = _NUMBERED.match(part_name)
    if match:
      return names.index(match.group(1))
  raise ValueError(f"{path}: unknown {obj} part {part_name!r}; the annotation is not Pascal-Part's.")


@dataclasses.dataclass(eq=False)
class PascalPartConfig(tfds.core.BuilderConfig):
  obj: str = "horse"
  min_size: int = 32
  num_train: int = 180


# --------------------------------------------------------------------------- files


def find_dirs(manual_dir: os.PathLike | str) -> tuple[pathlib.Path, pathlib.Path]:
  """Returns (VOC2010 root, folder of the Pascal-Part .mat files)."""
  manual_dir = pathlib.Path(manual_dir)
  for voc in (manual_dir, manual_dir / "VOC2010", manual_dir / "VOCdevkit" / "VOC2010"):
    if (voc / "JPEGImages").is_dir() and (voc / "ImageSets" / "Main").is_dir():
      break
  else:
    raise FileNotFoundError(f"{manual_dir}: no VOC2010 folder (JPEGImages/, ImageSets/Main/) "
                            "here or below.\n" + _INSTRUCTIONS)
  for base in (voc, voc / "part_segmentation", voc / "trainval", voc.parent, voc.parent / "trainval",
               manual_dir, manual_dir / "trainval"):
    if (base / "Annotations_Part").is_dir():
      return voc, base / "Annotations_Part"
  raise FileNotFoundError(f"{manual_dir}: no Pascal-Part Annotations_Part/ folder.\n" + _INSTRUCTIONS)


def image_ids(voc: pathlib.Path, obj: str, split: str) -> list[str]:
  """The positive images of `ImageSets/Main/<obj>_<split>.txt`."""
  path = voc / "ImageSets" / "Main" / f"{obj}_{split}.txt"
  if not path.is_file():
    raise FileNotFoundError(f"{path}: VOC image list is missing.\n" + _INSTRUCTIONS)
  ids = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    fields = line.split()
    if not fields:
      continue
    if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
      raise ValueError(f"{path}:{n}: expected '<image id> <1|0|-1>', got {line!r}.")
    if fields[1] == "1":
      ids.append(fields[0])
  return ids


def _mat_str(value) -> str:
  return str(np.asarray(value).ravel()[0])


def part_map(mat_path: pathlib.Path, obj: str) -> np.ndarray | None:
  """The class map of every `obj` object's parts, or None when the image has no `obj`.

  Returns:
    uint8 `[height, width]` ids into `CLASS_NAMES[obj]`.
  """
  import scipy.io  # pylint: disable=g-import-not-at-top
  if not mat_path.is_file():
    raise FileNotFoundError(f"{mat_path}: Pascal-Part annotation is missing for this image.")
  try:
    anno = scipy.io.loadmat(os.fspath(mat_path))["anno"][0, 0]
    objects = anno["objects"].ravel()
  except Exception as e:  # scipy raises several types for broken files.
    raise ValueError(f"{mat_path}: cannot read it as a Pascal-Part annotation "
                     f"({type(e).__name__}: {e}); re-download Pascal-Part.") from e
  label, found = None, False
  for ob in objects:
    silhouette = np.asarray(ob["mask"])
    if label is None:
      label = np.zeros(silhouette.shape, np.uint8)
    if _mat_str(ob["class"]) != obj:
      continue
    found = True
    parts = ob["parts"]
    if parts.size == 0 or parts.dtype.names is None:
      continue  # An object without part annotations.
    for part in parts.ravel():
      mask = np.asarray(part["mask"])
      if mask.shape != label.shape:
        raise ValueError(f"{mat_path}: a part mask is {mask.shape}, the objects are {label.shape}.")
      label[mask > 0] = part_class(obj, _mat_str(part["part_name"]), mat_path)
  return label if found else None


def voc_boxes(xml_path: pathlib.Path, obj: str) -> np.ndarray:
  """The `obj` boxes of a VOC annotation, in file order.

  Returns:
    float `[n, 4]` (xmin, ymin, xmax, ymax), VOC 1-based inclusive pixels.
  """
  if not xml_path.is_file():
    raise FileNotFoundError(f"{xml_path}: VOC box annotation is missing.")
  try:
    root = ET.parse(xml_path).getroot()
    boxes = [[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
             for o in root.findall("object") if o.find("name").text.strip() == obj]
  except (ET.ParseError, AttributeError, ValueError) as e:
    raise ValueError(f"{xml_path}: not a readable VOC annotation ({e}).") from e
  return np.asarray(boxes, np.float64).reshape(-1, 4)


# --------------------------------------------------------------------------- crops


def mutual_iou(boxes: np.ndarray) -> np.ndarray:
  """`[n, n]` overlap of boxes (x1, y1, x2, y2, no +1), zero on the diagonal.

  As the paper's preprocessing computes it (kept for fidelity): intersection
  over the area of the enclosing box, which is at most the true IoU.
  """
  a, b = boxes[:, None], boxes[None]
  inter = np.prod(np.maximum(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]),
                             0.0), -1)
  union = np.prod(np.maximum(np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2]),
                             0.0), -1)
  iou = inter / (union + 1e-8)
  np.fill_diagonal(iou, 0.0)
  return iou


def square_box(box, height: int, width: int) -> tuple[int, int, int, int]:
  """The square of side max(w, h) centred on a VOC box, clipped to the image.

  Returns:
    (x1, y1, x2, y2) 0-based, end-exclusive, as the paper's preprocessing
    computes them (floats truncated to int).
  """
  x1, y1, x2, y2 = box
  x1, y1 = x1 - 1, y1 - 1
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  bw, bh = x2 - x1, y2 - y1
  side = max(bw, bh)
  # The paper clamps the centre with the box size (not the side); for boxes
  # inside the image this never moves it, but it is kept for fidelity.
  cx = min(max(cx, min(width / 2, bw / 2)), max(width / 2, width - bw / 2))
  cy = min(max(cy, min(height / 2, bh / 2)), max(height / 2, height - bh / 2))
  clip = lambda v, hi: min(max(v, 0), hi)
  return (int(clip(cx - side / 2, width)), int(clip(cy - side / 2, height)),
          int(clip(cx + side / 2, width)), int(clip(cy + side / 2, height)))


def crop_with_padding(array: np.ndarray, box) -> np.ndarray:
  """Crops `box` and zero-pads it to a square, the content centred."""
  x1, y1, x2, y2 = box
  w, h = x2 - x1, y2 - y1
  side = max(w, h)
  out = np.zeros((side, side) + array.shape[2:], array.dtype)
  px, py = (side - w) // 2, (side - h) // 2
  out[py:py + h, px:px + w] = array[y1:y2, x1:x2]
  return out


def image_crops(voc: pathlib.Path, parts_dir: pathlib.Path, image_id: str, obj: str,
                min_size: int):
  """Yields `(crop_id, image_crop, label_crop)` for the kept instances of one image."""
  label = part_map(parts_dir / f"{image_id}.mat", obj)
  if label is None:
    return
  image_path = voc / "JPEGImages" / f"{image_id}.jpg"
  image = common.open_image(image_path, "RGB")
  if image.shape[:2] != label.shape:
    raise ValueError(f"{parts_dir / (image_id + '.mat')}: masks are {label.shape[1]}x"
                     f"{label.shape[0]} (WxH) but {image_path} is {image.shape[1]}x"
                     f"{image.shape[0]}; the pair does not match.")
  boxes = voc_boxes(voc / "Annotations" / f"{image_id}.xml", obj)
  iou = mutual_iou(boxes)
  height, width = label.shape
  for i, box in enumerate(boxes):
    if np.any(iou[i] > MAX_BOX_IOU):
      continue
    if box[2] - box[0] + 1 < min_size or box[3] - box[1] + 1 < min_size:
      continue
    square = square_box(box, height, width)
    label_crop = crop_with_padding(label, square)
    if np.mean(label_crop > 0) < MIN_PART_AREA:
      continue
    yield f"{image_id}_{i}", crop_with_padding(image, square), label_crop


def crop_ids(voc, parts_dir, obj: str, voc_split: str, min_size: int) -> list[str]:
  """The kept crop ids of a VOC split, sorted by file name as the paper sorts them."""
  ids = [c[0] for image_id in image_ids(voc, obj, voc_split)
         for c in image_crops(voc, parts_dir, image_id, obj, min_size)]
  return sorted(ids, key=lambda c: c + ".png")


# --------------------------------------------------------------------------- builder


class PascalPart(builder_lib.Builder):
  """Pascal-Part per-instance crops with the paper's 6-class part maps."""

  name = "pascal_part"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Per-instance crops as in the paper."}
  BUILDER_CONFIGS = [
      PascalPartConfig(name="horse", obj="horse", min_size=32,
                       description="Horses: background, head, torso, legs, neck, tail."),
      PascalPartConfig(name="aeroplane", obj="aeroplane", min_size=50,
                       description="Aeroplanes: background, body, stern, wing, engine, wheel."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS


  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=common.features(),
                                 homepage="http://roozbehm.info/pascal-parts/pascal-parts.html")

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.obj not in CLASS_NAMES:
      raise ValueError(f"PascalPartConfig.obj must be one of {sorted(CLASS_NAMES)}, got {cfg.obj!r}.")
    voc, parts_dir = find_dirs(dl_manager.manual_dir)
    # The train/validation cut needs every train crop's id first; the crops
    # are then generated again per image rather than all held in memory.
    train = crop_ids(voc, parts_dir, cfg.obj, "train", cfg.min_size)
    args = (voc, parts_dir, cfg.obj, cfg.min_size)
    return {
        "train": self._generate_examples(*args, "train", set(train[:cfg.num_train])),
        "validation": self._generate_examples(*args, "train", set(train[cfg.num_train:])),
        "test": self._generate_examples(*args, "val", None),
    }

  def _generate_examples(self, voc, parts_dir, obj, min_size, voc_split, keep):
    for image_id in image_ids(voc, obj, voc_split):
      for crop_id, image, label in image_crops(voc, parts_dir, image_id, obj, min_size):
        if keep is None or crop_id in keep:
          yield crop_id, common.example(image, label, crop_id)


_SPLITS = ("train", "validation", "test")
DATASETS = {
    "pascal_horse": common.DatasetSpec(PascalPart, "horse", HORSE_CLASSES, _SPLITS),
    "pascal_aeroplane": common.DatasetSpec(PascalPart, "aeroplane", AEROPLANE_CLASSES, _SPLITS),
}
