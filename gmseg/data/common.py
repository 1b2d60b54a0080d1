"""Conventions shared by every gmseg dataset builder (tfds, no TensorFlow).

Every builder writes `array_record` files whose examples are

  image: tfds Image uint8 `[height, width, 3]` (PNG).
  label: tfds Image uint8 `[height, width, 1]` (PNG) holding class ids;
         `IGNORE` (255) marks pixels no loss or metric should count.
  id:    string, unique within a split; readers sort by it because tfds
         shuffles the write order.

The label is a single-channel PNG rather than a `Tensor`: class maps are
mostly flat regions, so PNG is ~20x smaller than raw bytes, it is lossless,
each example may have its own size, and tfds encodes/decodes it with PIL
(no TensorFlow). Readers drop the trailing channel (`read_split` does).

Each dataset module also exposes `DATASETS: dict[str, DatasetSpec]`, which
`gmseg.data.registry` merges, and builds examples with `example(...)`.
"""
import contextlib
import dataclasses
import io
import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from gmseg import errors

IGNORE = 255
FILE_FORMAT = "array_record"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the registry needs to build and read one dataset.

  Attributes:
    builder: the tfds builder class.
    config: builder config name, or None for builders without configs.
    class_names: class names by id (id 0 first); `IGNORE` is not a class.
    splits: split names the builder writes (informative; tfds is the truth).
  """
  builder: type
  config: str | None
  class_names: tuple[str, ...]
  splits: tuple[str, ...] = ("train", "test")


def features():
  """The tfds FeaturesDict every builder uses (see module docstring)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
      "label": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
      "id": tfds.features.Text(),
  })


def example(image: np.ndarray, label: np.ndarray, example_id: str) -> dict[str, Any]:
  """Packs one example for `_generate_examples` as PNG bytes (tfds would need TF for numpy).

  Args:
    image: uint8 `[height, width, 3]`.
    label: uint8 `[height, width]` class ids (255 = ignore).
    example_id: unique id within the split.
  """
  image = np.asarray(image)
  label = np.asarray(label)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"example {example_id!r}: image must be uint8 [H,W,3], "
                     f"got {image.dtype} {image.shape}")
  if label.dtype != np.uint8 or label.shape != image.shape[:2]:
    raise ValueError(f"example {example_id!r}: label must be uint8 {image.shape[:2]}, "
                     f"got {label.dtype} {label.shape}")
  return {"image": _png(Image.fromarray(image, "RGB")),
          "label": _png(Image.fromarray(label, "L")),
          "id": str(example_id)}


def _png(im: Image.Image) -> bytes:
  # PIL's default zlib level (6) takes ~3x longer for ~10% smaller photos; tfds
  # stores bytes as given.
  buffer = io.BytesIO()
  im.save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def open_image(path: os.PathLike | str, mode: str = "RGB") -> np.ndarray:
  """Reads an image file as a uint8 array, with an error that names the file.

  Returns:
    `[height, width, 3]` for mode 'RGB', `[height, width]` for mode 'L'.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: image file is missing; check the dataset folder.")
  try:
    with Image.open(path) as im:
      im.load()
      return np.asarray(im.convert(mode))
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f"{path}: cannot read this image ({type(e).__name__}: {e}); "
                     "the file is corrupt or not an image: re-download the dataset.") from e


def open_pair(image_path, mask_path, mask_mode: str = "RGB") -> tuple[np.ndarray, np.ndarray]:
  """Reads an image and its mask and checks they have the same size.

  Returns:
    image uint8 `[height, width, 3]`, mask uint8 `[height, width(, 3)]`.
  """
  image = open_image(image_path, "RGB")
  mask = open_image(mask_path, mask_mode)
  if image.shape[:2] != mask.shape[:2]:
    raise ValueError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
                     f"{image_path} is {image.shape[1]}x{image.shape[0]}; the pair does not match.")
  return image, mask


def _blend_distance(colours: np.ndarray, class_colours: np.ndarray) -> np.ndarray:
  """Distance of each of `colours [n,3]` to the nearest blend of two class colours.

  Anti-aliasing mixes the colours either side of an edge, so a legitimate mask
  colour lies near a segment whose ends are class colours.
  """
  k = len(class_colours)
  best = np.linalg.norm(colours[:, None] - class_colours[None], axis=-1).min(-1)
  for i in range(k):
    for j in range(i + 1, k):
      a, d = class_colours[i], class_colours[j] - class_colours[i]
      t = np.clip(((colours - a) @ d) / max(float(d @ d), 1e-9), 0.0, 1.0)
      best = np.minimum(best, np.linalg.norm(colours - (a + t[:, None] * d), axis=-1))
  return best


def colours_to_labels(mask: np.ndarray, class_colours: Sequence[Sequence[int]], *,
                      path: os.PathLike | str | None = None,
                      max_distance: float = 48.0,
                      max_far_fraction: float = 0.005,
                      ignore_colours: Iterable[Sequence[int]] = ()) -> np.ndarray:
  """Colour-coded mask -> class map, snapping anti-aliased pixels.

  Every pixel takes the class of the nearest class colour (RGB Euclidean).
  Anti-aliased pixels are blends of the two class colours either side of an
  edge. A pixel farther than `max_distance` from every class colour and every
  such blend is "far"; a few occur at three-class junctions (FASSEG: at most
  0.07% of a mask), so the mask is rejected, with an error naming the file, only
  when more than `max_far_fraction` of its pixels are far.

  Args:
    mask: uint8 `[height, width, 3]`.
    class_colours: RGB colour of class i at index i.
    path: the mask's file, named in errors.
    max_distance: colour tolerance in RGB units.
    max_far_fraction: tolerated fraction of far pixels (they still snap).
    ignore_colours: colours (exact) that map to `IGNORE`.

  Returns:
    uint8 `[height, width]` class ids.
  """
  cc = np.asarray(class_colours, np.float64)
  if mask.ndim != 3 or mask.shape[-1] != 3:
    raise ValueError(f"{path}: expected an RGB mask [H,W,3], got shape {mask.shape}.")
  # Work on unique colours: a mask has a few thousand at most, pixels ~200k.
  packed = ((mask[..., 0].astype(np.int32) << 16) | (mask[..., 1].astype(np.int32) << 8)
            | mask[..., 2].astype(np.int32))
  uniq, inverse = np.unique(packed.ravel(), return_inverse=True)
  rgb = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], -1).astype(np.float64)
  lut = np.linalg.norm(rgb[:, None, :] - cc[None], axis=-1).argmin(-1).astype(np.uint8)
  ignored = np.zeros(len(rgb), bool)
  for colour in ignore_colours:
    ignored |= (rgb == np.asarray(colour, np.float64)).all(-1)
  lut[ignored] = IGNORE
  far = (_blend_distance(rgb, cc) > max_distance) & ~ignored
  counts = np.bincount(inverse, minlength=len(uniq))[far]
  if counts.sum() > max_far_fraction * inverse.size:
    worst = np.argsort(-counts)[:5]
    listed = ", ".join(f"{tuple(int(v) for v in rgb[far][w])} x{int(counts[w])}" for w in worst)
    raise ValueError(
        f"{path}: {int(counts.sum())} of {inverse.size} mask pixels have colours farther than "
        f"{max_distance} from every class colour and every anti-aliasing blend of two (most "
        f"common: {listed}); class colours are {[tuple(int(v) for v in c) for c in cc]}. The "
        "mask is corrupt or belongs to another dataset: re-download it.")
  return lut[inverse].reshape(mask.shape[:2])


def download_config(manual_dir: os.PathLike | str | None = None):
  """A tfds DownloadConfig with `manual_dir` set when given."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.fspath(manual_dir))


def prepare(builder, data_dir: os.PathLike | str, *,
            manual_dir: os.PathLike | str | None = None):
  """Returns a prepared tfds builder (building it first when needed).

  Args:
    builder: a builder class (built with its default config) or instance;
      for a registry name, `gmseg.data.registry.builder(name, data_dir)`.
    data_dir: where tfds stores prepared datasets.
    manual_dir: folder with manually downloaded files, for offline builds.
  """
  if isinstance(builder, str):
    raise TypeError(f"prepare({builder!r}): pass a builder; for a dataset name use "
                    "gmseg.data.registry.builder(name, data_dir) or pipeline.load_split.")
  if isinstance(builder, type):
    builder = builder(data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
  with _prepare_lock(data_dir):
    builder.download_and_prepare(download_config=download_config(manual_dir))
  if not builder.info.splits:
    # Another process built it while this one waited: the info this builder
    # read at construction predates it.
    builder.info.read_from_directory(builder.data_dir)
  return builder


@contextlib.contextmanager
def _prepare_lock(data_dir: os.PathLike | str):
  """Holds an exclusive lock on `<data_dir>/.gmseg_prepare.lock`.

  The processes of a multi-host job (or several runs on one machine) start
  together and would all build a missing dataset into the same folder at
  once; tfds' own writes then collide. With the lock the first one builds it
  and the others wait, then find it prepared. flock is per machine on local
  disks (each host builds its own copy) and a POSIX lock on NFS.
  """
  import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".gmseg_prepare.lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def read_split(builder, split: str, data_dir: os.PathLike | str, *,
               manual_dir: os.PathLike | str | None = None,
               limit: int | None = None,
               class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Reads a split as a list of numpy dicts sorted by id (building if needed).

  Args:
    builder: as for `prepare`.
    class_names: the dataset's classes; when given, label ids beyond them
      raise `LabelRangeError` (`pipeline.load_split` passes the registry's).

  Returns:
    `[{'image': uint8 [H,W,3], 'label': uint8 [H,W], 'id': str}, ...]`,
    the first `limit` ids when `limit` is given.
  """
  builder = prepare(builder, data_dir, manual_dir=manual_dir)
  if split not in builder.info.splits:
    # Builders of partial datasets (FASSEG multipose01) say why a split is absent.
    hint = getattr(builder, "split_hint", lambda _: "")(split)
    raise ValueError(f"{builder.name}: no split {split!r}; it has {sorted(builder.info.splits)}"
                     + (f": {hint}." if hint else "."))
  source = builder.as_data_source(split=split)
  ids = [(_text(source[i]["id"]), i) for i in range(len(source))]
  ids.sort(key=lambda x: _id_key(x[0]))
  if limit is not None:
    ids = ids[:limit]
  out = []
  for example_id, i in ids:
    ex = source[i]
    out.append({"image": np.asarray(ex["image"]), "label": np.asarray(ex["label"])[..., 0],
                "id": example_id})
  if class_names is not None:
    check_label_range([ex["label"] for ex in out], [ex["id"] for ex in out], len(class_names),
                      f"{builder.name} split {split!r} in {builder.data_dir}", class_names)
  return out


class LabelRangeError(errors.UserError, ValueError):
  """Labels hold class ids the dataset or config does not have."""


def check_label_range(labels: Sequence[np.ndarray], ids: Sequence[str], num_classes: int,
                      where: str, class_names: Sequence[str] | None = None) -> None:
  """Rejects labels with ids >= `num_classes` other than `IGNORE`, naming the examples.

  Evaluation would skip such pixels silently (they fall outside the confusion
  matrix) and training would index past the logits, so they stop here.

  Args:
    labels: `[N, H, W]` array or N `[H, W]` arrays of class ids.
    ids: the N example ids (the source file's relative path or stem).
    where: the dataset, split and folder, for the message.
  """
  bad = []
  for example_id, label in zip(ids, labels):
    label = np.asarray(label)
    if label.size and int(label.max()) >= num_classes:
      wrong = np.unique(label[(label >= num_classes) & (label != IGNORE)])
      if wrong.size:
        bad.append(f"{_text(example_id)}: {wrong.tolist()}")
  if bad:
    names = f" {tuple(class_names)}" if class_names is not None else ""
    raise LabelRangeError(
        f"{where}: {len(bad)} example(s) hold label ids outside the {num_classes} classes"
        f"{names} (0..{num_classes - 1}, and {IGNORE} = ignore): "
        f"{'; '.join(bad[:5])}{'; ...' if len(bad) > 5 else ''}. Fix those masks (and "
        "rebuild the dataset: delete its prepared folder) or the class list "
        "(config.class_names must cover every id the dataset uses).")


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _id_key(example_id: str):
  """Natural order: '2' before '10' (ids are often file numbers)."""
  parts = []
  for chunk in _split_digits(example_id):
    parts.append((0, int(chunk), "") if chunk.isdigit() else (1, 0, chunk))
  return tuple(parts)


def _split_digits(text: str) -> list[str]:
  chunks, cur = [], ""
  for ch in text:
    if cur and (ch.isdigit() != cur[-1].isdigit()):
      chunks.append(cur)
      cur = ""
    cur += ch
  if cur:
    chunks.append(cur)
  return chunks
