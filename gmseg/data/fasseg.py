"""FASSEG: frontal and multi-pose faces labelled in six classes (tfds, no TensorFlow).

Khan, Mauro, Leonardi, "Multi-class semantic segmentation of faces", ICIP 2015;
github.com/massimomauro/FASSEG-repository. Configs:

  frontal01:   folder V1, 70 frontal faces with rough masks (published train/test).
  frontal02:   folder V2, the same 70 faces with precise masks: 20 train, 50 test.
  multipose01: folder V3, faces in 13 yaw poses (one sub-folder per pose,
               `-90 ... 0 ... +90`): 182 train faces (7 people x 2 sessions x
               13 poses), 96 labelled test faces (other people).

Each folder holds `Train_RGB`, `Train_Labels`, `Test_RGB`, `Test_Labels`
(V3 spells the label folders `Train_labels`, `Test_labels`); a mask has its
image's relative path (pose sub-folder included). Masks are colour-coded
(`CLASS_COLOURS`) with anti-aliased edges, snapped to the nearest class
colour by `common.colours_to_labels`.

multipose01 is incomplete by design, and its build says so instead of failing:
`V3/Test_RGB` has 208 images but only 96 masks (the other poses served pose
estimation), and 4 test masks differ in width from their images. Images
without a mask and pairs of different sizes are skipped with a warning naming
each, counted in `skipped_<split>.json` next to the prepared dataset (never
resized: a mask of another width is not the same face's labelling). A folder
without the test folders (e.g. the train-only copy in ../shared) gives the
train split alone; asking for 'test' then says why. frontal01/02 stay strict:
there a missing mask or a size mismatch means a damaged download, an error.

Online, the builder downloads the repository archive at a pinned commit and
unpacks only the config's folder. Offline, pass a manual_dir holding the
folder (`<manual_dir>/V2/Train_RGB/1.bmp`, ...) or a checkout of the repository.
"""
import dataclasses
import json
import os
import pathlib
from typing import Optional
import zipfile

from absl import logging
from PIL import Image
import tensorflow_datasets as tfds

from gmseg.data import builder as builder_lib
from gmseg.data import common
from gmseg.data import download

CLASS_NAMES = ("background", "hair", "skin", "eyes", "nose", "mouth")
CLASS_COLOURS = ((255, 0, 0), (127, 0, 0), (255, 255, 0), (0, 0, 255), (0, 255, 255), (0, 255, 0))

REPOSITORY = "https://github.com/massimomauro/FASSEG-repository"
COMMIT = "7817f332b68decc858c9e741f8c0b366b9e0289c"
ARCHIVE_URL = f"{REPOSITORY}/archive/{COMMIT}.zip"
RAW_URL = f"https://raw.githubusercontent.com/massimomauro/FASSEG-repository/{COMMIT}"
SPLIT_FOLDERS = {"train": ("Train_RGB", "Train_Labels"), "test": ("Test_RGB", "Test_Labels")}
# V3 spells its label folders with a lower-case l; either spelling is read.
LABEL_FOLDERS = {split: (labels, labels.replace("Labels", "labels"))
                 for split, (_, labels) in SPLIT_FOLDERS.items()}
SKIPPED_REPORT = "skipped_{split}.json"
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg")


def raw_url(folder: str, split: str, name: str, labels: bool = False) -> str:
  """URL of one file of the repository at the pinned commit (e.g. for a spot check)."""
  sub = SPLIT_FOLDERS[split][1 if labels else 0]
  return f"{RAW_URL}/{folder}/{sub}/{name}"


@dataclasses.dataclass
class FassegConfig(tfds.core.BuilderConfig):
  """A FASSEG subset: `folder` is its top-level folder in the repository.

  `partial` (multipose01): images without a mask and image/mask pairs of
  different sizes are skipped and reported, and a missing test folder leaves
  the train split alone; otherwise each of these is an error.
  """
  folder: str = "V2"
  partial: bool = False


class Fasseg(builder_lib.Builder):
  """FASSEG face parts: image, 6-class label map, id (relative path, no suffix)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      FassegConfig(name="frontal01", folder="V1",
                   description="70 frontal faces, rough masks (ICIP 2015 split)."),
      FassegConfig(name="frontal02", folder="V2",
                   description="70 frontal faces, precise masks: 20 train, 50 test."),
      FassegConfig(name="multipose01", folder="V3", partial=True,
                   description="Faces in 13 yaw poses (ICME 2017 split): 182 train, "
                               "96 labelled test faces."),
  ]
  DEFAULT_CONFIG_NAME = "frontal02"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {ARCHIVE_URL} (or clone {REPOSITORY}), unzip it, and pass the unzipped "
      "folder (the one holding V1/, V2/, V3/) as manual_dir (`--manual_dir` in gmseg launchers).")


  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="FASSEG face semantic segmentation: " + self.builder_config.description,
        features=common.features(),
        homepage=REPOSITORY,
        citation=("K. Khan, M. Mauro, R. Leonardi. Multi-class semantic segmentation of faces. "
                  "ICIP 2015."),
    )

  def _split_generators(self, dl_manager):
    root = self._locate(dl_manager)
    splits = {}
    for split, (rgb, _) in SPLIT_FOLDERS.items():
      if self.builder_config.partial and split != "train" and not (root / rgb).is_dir():
        logging.warning("FASSEG %s: %s has no %s/, so the %r split is not built (%s).",
                        self.builder_config.name, root, rgb, split, self.split_hint(split))
        continue
      splits[split] = self._generate_examples(root, split)
    return splits

  def split_hint(self, split: str) -> str:
    """Why a split may be missing, for `common.read_split`'s error."""
    if not self.builder_config.partial or split == "train":
      return ""
    folder = self.builder_config.folder
    return (f"the folder it was built from had no {folder}/{SPLIT_FOLDERS[split][0]} (the copy in "
            f"../shared/data/fasseg/{folder} holds the train split only: use split 'train', e.g. "
            "as a validation set); for the test split pass a full clone of "
            f"{REPOSITORY} as manual_dir and delete the prepared dataset "
            f"({self.data_dir}) so it is rebuilt")

  def _locate(self, dl_manager) -> pathlib.Path:
    """The config's folder (e.g. .../V2): from manual_dir if given, else downloaded."""
    folder = self.builder_config.folder
    # tfds defaults manual_dir to <download_dir>/manual: use it when it exists.
    manual = pathlib.Path(os.fspath(dl_manager._manual_dir))  # pylint: disable=protected-access
    download_dir = pathlib.Path(os.fspath(dl_manager.download_dir))
    if manual.exists():
      return find_folder(manual, folder)
    if manual != download_dir / "manual":
      raise FileNotFoundError(f"FASSEG: manual_dir {manual} does not exist. "
                              + self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    # One attempt, short timeout, nothing left behind (tfds retries for minutes).
    archive = download.fetch(
        ARCHIVE_URL, download_dir, f"fasseg_{COMMIT[:12]}.zip",
        hint=(f"FASSEG offline: download or clone {REPOSITORY} elsewhere and pass the folder "
              f"holding {folder}/ as manual_dir (`--manual_dir /path/to/FASSEG-repository`)."))
    out = download_dir / f"fasseg_{COMMIT[:12]}"
    return extract_folder(archive, folder, out)

  def _generate_examples(self, root: pathlib.Path, split: str):
    rgb_dir = root / SPLIT_FOLDERS[split][0]
    label_dir = label_folder(root, split)
    if not rgb_dir.is_dir() or label_dir is None:
      raise FileNotFoundError(
          f"FASSEG: {rgb_dir} or {root / SPLIT_FOLDERS[split][1]} (or "
          f"{LABEL_FOLDERS[split][1]}) is missing; {root} should hold "
          f"{' '.join(sum(SPLIT_FOLDERS.values(), ()))}.")
    images = sorted(p for p in rgb_dir.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
      raise FileNotFoundError(f"FASSEG: no images in {rgb_dir}.")
    partial = self.builder_config.partial
    no_mask, mismatched, kept = [], [], 0
    for image_path in images:
      rel = image_path.relative_to(rgb_dir)
      example_id = rel.with_suffix("").as_posix()
      mask_path = _find_mask(label_dir, rel, required=not partial)
      if mask_path is None:
        no_mask.append(example_id)
        continue
      if partial:
        image_size, mask_size = _size(image_path), _size(mask_path)
        if image_size != mask_size:
          logging.warning("FASSEG %s: skipped %s: image %dx%d (WxH) but mask %s %dx%d; "
                          "the pair is left out, not resized.", split, image_path,
                          *image_size, mask_path, *mask_size)
          mismatched.append({"id": example_id, "image_wh": list(image_size),
                             "mask_wh": list(mask_size)})
          continue
      image, mask = common.open_pair(image_path, mask_path)
      label = common.colours_to_labels(mask, CLASS_COLOURS, path=mask_path)
      kept += 1
      yield example_id, common.example(image, label, example_id)
    if partial:
      self._report_skipped(split, len(images), kept, no_mask, mismatched)

  def _report_skipped(self, split, num_images, kept, no_mask, mismatched):
    """Logs and writes what a partial split left out (`SKIPPED_REPORT`)."""
    report = {"split": split, "images": num_images, "examples": kept,
              "skipped_without_mask": len(no_mask), "skipped_size_mismatch": len(mismatched),
              "without_mask": no_mask, "size_mismatch": mismatched}
    if no_mask or mismatched:
      logging.warning("FASSEG %s %s: %d of %d images kept; skipped %d without a mask (not "
                      "segmentation examples) and %d whose mask differs in size.",
                      self.builder_config.name, split, kept, num_images, len(no_mask),
                      len(mismatched))
    # During download_and_prepare data_dir is the incomplete folder that becomes the dataset's.
    path = pathlib.Path(os.fspath(self.data_dir)) / SKIPPED_REPORT.format(split=split)
    path.write_text(json.dumps(report, indent=1) + "\n")


def label_folder(root: pathlib.Path, split: str) -> Optional[pathlib.Path]:
  """`root/Train_Labels` or `root/Train_labels` (V3's spelling), whichever exists."""
  for name in LABEL_FOLDERS[split]:
    if (root / name).is_dir():
      return root / name
  return None


def skipped_report(builder, split: str) -> dict:
  """What a prepared multipose01 split left out (`{}` when nothing was written)."""
  path = pathlib.Path(os.fspath(builder.data_dir)) / SKIPPED_REPORT.format(split=split)
  return json.loads(path.read_text()) if path.is_file() else {}


def _size(path: pathlib.Path) -> tuple[int, int]:
  """(width, height) of an image file, read from its header."""
  try:
    with Image.open(path) as im:
      return im.size
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f"{path}: cannot read this image ({type(e).__name__}: {e}); "
                     "the file is corrupt or not an image: re-download the dataset.") from e


def _find_mask(label_dir: pathlib.Path, rel: pathlib.Path,
               required: bool = True) -> Optional[pathlib.Path]:
  for suffix in (rel.suffix,) + IMAGE_SUFFIXES:
    candidate = label_dir / rel.with_suffix(suffix)
    if candidate.is_file():
      return candidate
  if not required:
    return None
  raise FileNotFoundError(f"FASSEG: the mask for image {rel} is missing: expected "
                          f"{label_dir / rel}. Re-download the dataset.")


def find_folder(manual_dir: pathlib.Path, folder: str) -> pathlib.Path:
  """Finds `folder` (e.g. 'V2') in a manual_dir: the folder itself, a parent, or a checkout."""
  candidates = [manual_dir / folder, manual_dir]
  candidates += sorted(manual_dir.glob(f"*/{folder}")) if manual_dir.is_dir() else []
  for c in candidates:
    # Train_RGB is enough: a partial config (V3) builds without its test folders.
    if (c / SPLIT_FOLDERS["train"][0]).is_dir():
      return c
  raise FileNotFoundError(
      f"FASSEG: manual_dir {manual_dir} has no {folder}/Train_RGB. "
      f"Pass the folder that holds {folder}/ (a clone or the unzipped {ARCHIVE_URL}).")


def extract_folder(archive: pathlib.Path, folder: str, out: pathlib.Path) -> pathlib.Path:
  """Unpacks `<top>/<folder>/...` of a GitHub archive zip into `out/<folder>`, once.

  tfds' own extractor needs TensorFlow, and only one of the repository's
  folders is wanted, so this reads the zip directly.
  """
  done = out / f".{folder}.complete"
  if done.exists():
    return out / folder
  try:
    with zipfile.ZipFile(archive) as zf:
      count = 0
      for info in zf.infolist():
        parts = pathlib.PurePosixPath(info.filename).parts
        # parts[0] is the archive's top folder (FASSEG-repository-<commit>).
        if len(parts) < 3 or parts[1] != folder or info.is_dir() or ".." in parts:
          continue
        target = out.joinpath(*parts[1:])
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as dst:
          dst.write(src.read())
        count += 1
  except zipfile.BadZipFile as e:
    raise ValueError(f"FASSEG: {archive} is not a valid zip archive ({e}); delete it and "
                     "retry, or pass a manual_dir.") from e
  if count == 0:
    raise ValueError(f"FASSEG: archive {archive} has no {folder}/ folder.")
  done.touch()
  return out / folder


DATASETS = {
    f"fasseg/{c.name}": common.DatasetSpec(builder=Fasseg, config=c.name, class_names=CLASS_NAMES)
    for c in Fasseg.BUILDER_CONFIGS
}
