"""FASSEG: frontal and multi-pose faces labelled in six classes (tfds, no TensorFlow).

Khan, Mauro, Leonardi, "Multi-class semantic segmentation of faces", ICIP 2015;
github.com/massimomauro/FASSEG-repository. Configs:

  frontal01:   folder V1, 70 frontal faces with rough masks (published train/test).
  frontal02:   folder V2, the same 70 faces with precise masks: 20 train, 50 test.
  multipose01: folder V3, 200+ faces in 13 yaw poses (one sub-folder per pose).

Each folder holds `Train_RGB`, `Train_Labels`, `Test_RGB`, `Test_Labels`; a
mask has its image's relative path (pose sub-folder included). Masks are
colour-coded (`CLASS_COLOURS`) with anti-aliased edges, snapped to the nearest
class colour by `common.colours_to_labels`.

Online, the builder downloads the repository archive at a pinned commit and
unpacks only the config's folder. Offline, pass a manual_dir holding the
folder (`<manual_dir>/V2/Train_RGB/1.bmp`, ...) or a checkout of the repository.
"""
import dataclasses
import os
import pathlib
import zipfile

import tensorflow_datasets as tfds

from gmseg.data import builder as builder_lib
from gmseg.data import common

CLASS_NAMES = ("background", "hair", "skin", "eyes", "nose", "mouth")
CLASS_COLOURS = ((255, 0, 0), (127, 0, 0), (255, 255, 0), (0, 0, 255), (0, 255, 255), (0, 255, 0))

REPOSITORY = "https://github.com/massimomauro/FASSEG-repository"
COMMIT = "7817f332b68decc858c9e741f8c0b366b9e0289c"
ARCHIVE_URL = f"{REPOSITORY}/archive/{COMMIT}.zip"
RAW_URL = f"https://raw.githubusercontent.com/massimomauro/FASSEG-repository/{COMMIT}"
SPLIT_FOLDERS = {"train": ("Train_RGB", "Train_Labels"), "test": ("Test_RGB", "Test_Labels")}
IMAGE_SUFFIXES = (".bmp", ".png", ".jpg", ".jpeg")


def raw_url(folder: str, split: str, name: str, labels: bool = False) -> str:
  """URL of one file of the repository at the pinned commit (e.g. for a spot check)."""
  sub = SPLIT_FOLDERS[split][1 if labels else 0]
  return f"{RAW_URL}/{folder}/{sub}/{name}"


@dataclasses.dataclass
class FassegConfig(tfds.core.BuilderConfig):
  """A FASSEG subset: `folder` is its top-level folder in the repository."""
  folder: str = "V2"


class Fasseg(builder_lib.Builder):
  """FASSEG face parts: image, 6-class label map, id (relative path, no suffix)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      FassegConfig(name="frontal01", folder="V1",
                   description="70 frontal faces, rough masks (ICIP 2015 split)."),
      FassegConfig(name="frontal02", folder="V2",
                   description="70 frontal faces, precise masks: 20 train, 50 test."),
      FassegConfig(name="multipose01", folder="V3",
                   description="200+ faces in 13 yaw poses (ICME 2017 split)."),
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
    return {split: self._generate_examples(root, split) for split in SPLIT_FOLDERS}

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
    try:
      archive = pathlib.Path(os.fspath(dl_manager.download(ARCHIVE_URL)))
    except Exception as e:
      raise RuntimeError(
          f"FASSEG: downloading {ARCHIVE_URL} failed ({type(e).__name__}: {e}). Offline, "
          f"download or clone {REPOSITORY} elsewhere and pass the folder holding {folder}/ "
          "as manual_dir (`--manual_dir /path/to/FASSEG-repository`).") from e
    out = download_dir / f"fasseg_{COMMIT[:12]}"
    return extract_folder(archive, folder, out)

  def _generate_examples(self, root: pathlib.Path, split: str):
    rgb_dir, label_dir = (root / sub for sub in SPLIT_FOLDERS[split])
    if not rgb_dir.is_dir() or not label_dir.is_dir():
      raise FileNotFoundError(f"FASSEG: {rgb_dir} or {label_dir} is missing; {root} should "
                              f"hold {' '.join(sum(SPLIT_FOLDERS.values(), ()))}.")
    images = sorted(p for p in rgb_dir.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
      raise FileNotFoundError(f"FASSEG: no images in {rgb_dir}.")
    for image_path in images:
      rel = image_path.relative_to(rgb_dir)
      mask_path = _find_mask(label_dir, rel)
      image, mask = common.open_pair(image_path, mask_path)
      label = common.colours_to_labels(mask, CLASS_COLOURS, path=mask_path)
      example_id = rel.with_suffix("").as_posix()
      yield example_id, common.example(image, label, example_id)


def _find_mask(label_dir: pathlib.Path, rel: pathlib.Path) -> pathlib.Path:
  for suffix in (rel.suffix,) + IMAGE_SUFFIXES:
    candidate = label_dir / rel.with_suffix(suffix)
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(f"FASSEG: the mask for image {rel} is missing: expected "
                          f"{label_dir / rel}. Re-download the dataset.")


def find_folder(manual_dir: pathlib.Path, folder: str) -> pathlib.Path:
  """Finds `folder` (e.g. 'V2') in a manual_dir: the folder itself, a parent, or a checkout."""
  candidates = [manual_dir / folder, manual_dir]
  candidates += sorted(manual_dir.glob(f"*/{folder}")) if manual_dir.is_dir() else []
  for c in candidates:
    if (c / SPLIT_FOLDERS["train"][0]).is_dir() and (c / SPLIT_FOLDERS["test"][0]).is_dir():
      return c
  raise FileNotFoundError(
      f"FASSEG: manual_dir {manual_dir} has no {folder}/Train_RGB and {folder}/Test_RGB. "
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
