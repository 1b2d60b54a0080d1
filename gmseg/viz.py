"""Image and label grids, palettes and PNG writing (numpy + PIL only).

Images are `[N, H, W, 3]` floats in [-1, 1] (generator output) or uint8;
labels are integer `[N, H, W]` class ids with 255 = ignore (drawn black).
"""
import colorsys
import os
import pathlib

import numpy as np
from PIL import Image

IGNORE = 255
IGNORE_COLOR = (0, 0, 0)
LOW_CONFIDENCE_COLOR = (255, 0, 255)  # magenta: in neither palette below

# FASSEG's own label colours, in gmseg's class order.
FASSEG_CLASSES = ("background", "hair", "skin", "eyes", "nose", "mouth")
FASSEG_PALETTE = np.array(
    [(255, 0, 0), (127, 0, 0), (255, 255, 0), (0, 0, 255), (0, 255, 255), (0, 255, 0)],
    np.uint8)


def palette(num_classes: int) -> np.ndarray:
  """A distinct colour per class, `[num_classes, 3]` uint8; never black or magenta.

  Hues step by the golden ratio so neighbouring ids differ strongly; saturation
  and value alternate so that many classes stay distinguishable.
  """
  colors = []
  for i in range(num_classes):
    hue = (0.03 + i * 0.618033988749895) % 1.0
    sat = (0.9, 0.55)[i % 2]
    val = (0.95, 0.7)[(i // 2) % 2]
    colors.append(colorsys.hsv_to_rgb(hue, sat, val))
  colors = np.round(np.array(colors, np.float64).reshape(-1, 3) * 255).astype(np.uint8)
  # Keep the two reserved colours unambiguous (magenta-ish hues can round onto it).
  colors[np.all(colors == LOW_CONFIDENCE_COLOR, axis=-1)] = (200, 0, 200)
  return colors


def _palette_array(pal, labels: np.ndarray) -> np.ndarray:
  if pal is None:
    valid = labels[labels != IGNORE]
    return palette(int(valid.max()) + 1 if valid.size else 1)
  if isinstance(pal, str):
    if pal.lower() != "fasseg":
      raise ValueError(f"Unknown palette {pal!r}: use 'fasseg', None or a [K, 3] uint8 array.")
    return FASSEG_PALETTE
  pal = np.asarray(pal)
  if pal.ndim != 2 or pal.shape[1] != 3:
    raise ValueError(f"A palette must be [num_classes, 3], got {pal.shape}.")
  return pal.astype(np.uint8)


FASSEG_CLASSES = ("background", "hair", "skin", "eyes", "nose", "mouth")


def palette_for(class_names) -> np.ndarray:
  """FASSEG's own label colours for its six classes, else `palette(len)`."""
  if tuple(class_names) == FASSEG_CLASSES:
    return FASSEG_PALETTE
  return palette(len(class_names))


def colorize(labels, pal=None) -> np.ndarray:
  """Class ids `[..., H, W]` -> colours `[..., H, W, 3]` uint8.

  `pal`: None (generic palette sized to the labels), 'fasseg', or `[K, 3]`.
  Ignore (255) is black; any other id >= K is an error.
  """
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"Labels must be integer class ids, got dtype {labels.dtype}.")
  pal = _palette_array(pal, labels)
  bad = (labels != IGNORE) & ((labels < 0) | (labels >= len(pal)))
  if bad.any():
    raise ValueError(f"Label ids {np.unique(labels[bad])[:10].tolist()} are outside the "
                     f"{len(pal)}-colour palette (255 = ignore).")
  table = np.zeros((256, 3), np.uint8)
  table[:len(pal)] = pal
  table[IGNORE] = IGNORE_COLOR
  return table[np.where(labels == IGNORE, IGNORE, labels).astype(np.int64)]


def to_uint8(images) -> np.ndarray:
  """Images in [-1, 1] -> uint8 via round((x + 1) * 127.5), clipped."""
  images = np.asarray(images, np.float32)
  return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _as_rgb(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"grid takes uint8 images (see to_uint8/colorize), got {image.dtype}.")
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"grid images must be [H, W, 3] or [H, W], got {image.shape}.")
  return image


def grid(rows, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles rows of equally sized uint8 images into one `[H', W', 3]` image.

  Args:
    rows: a sequence of rows; each row is a sequence of `[H, W, 3]` (or
      `[H, W]`) uint8 images, or a `[N, H, W, 3]` array. Short rows are padded.
    pad: border width in pixels around and between images.
    pad_value: border grey level (255: white, as in the fixtures' grids).
  """
  rows = [[_as_rgb(im) for im in row] for row in rows]
  if not rows or not any(rows):
    raise ValueError("grid needs at least one image.")
  h, w = next(im for row in rows for im in row).shape[:2]
  if any(im.shape[:2] != (h, w) for row in rows for im in row):
    raise ValueError("grid images must all have the same height and width.")
  cols = max(len(row) for row in rows)
  out = np.full((pad + len(rows) * (h + pad), pad + cols * (w + pad), 3), pad_value, np.uint8)
  for r, row in enumerate(rows):
    for c, im in enumerate(row):
      y, x = pad + r * (h + pad), pad + c * (w + pad)
      out[y:y + h, x:x + w] = im
  return out


def save_png(path, array) -> pathlib.Path:
  """Writes a uint8 `[H, W]`, `[H, W, 3]` or `[H, W, 4]` array as PNG."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"save_png takes uint8, got {array.dtype} (use to_uint8 for [-1, 1] images).")
  path = pathlib.Path(path)
  os.makedirs(path.parent, exist_ok=True)
  Image.fromarray(array).save(path, format="PNG")
  return path


def save_label_png(path, labels, pal=None) -> pathlib.Path:
  """Writes `[H, W]` class ids as a palette ('P' mode) PNG that keeps the ids."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.min() < 0 or labels.max() > 255:
    raise ValueError(f"save_label_png takes [H, W] ids in 0..255, got {labels.shape}.")
  pal = _palette_array(pal, labels)
  table = np.zeros((256, 3), np.uint8)
  table[:len(pal)] = pal
  table[IGNORE] = IGNORE_COLOR
  image = Image.fromarray(labels.astype(np.uint8), mode="P")
  image.putpalette(table.reshape(-1).tolist())
  path = pathlib.Path(path)
  os.makedirs(path.parent, exist_ok=True)
  image.save(path, format="PNG")
  return path


def label_grid(images, labels, probs=None, conf_threshold: float = 0.9, pal=None,
               alpha: float = 0.5, pad: int = 2) -> np.ndarray:
  """One column per example; rows: image / labels / overlay / [low confidence].

  Args:
    images: `[N, H, W, 3]` in [-1, 1] (or uint8).
    labels: `[N, H, W]` class ids (255 = ignore).
    probs: optional `[N, H, W, K]` class probabilities; adds a row of labels
      with pixels whose max probability is below `conf_threshold` in magenta.
    conf_threshold: the confidence below which a pixel is marked.
    pal: palette for `colorize` (None, 'fasseg' or `[K, 3]`).
    alpha: label opacity in the overlay row.
    pad: grid border width.

  Returns:
    The grid, uint8 `[rows * (H + pad) + pad, N * (W + pad) + pad, 3]`.
  """
  images = np.asarray(images)
  images = images if images.dtype == np.uint8 else to_uint8(images)
  labels = np.asarray(labels)
  if images.shape[:3] != labels.shape:
    raise ValueError(f"images {images.shape} and labels {labels.shape} differ in [N, H, W].")
  colors = colorize(labels, pal)
  blend = (1 - alpha) * images.astype(np.float32) + alpha * colors.astype(np.float32)
  overlay = np.where((labels == IGNORE)[..., None], images, np.round(blend).astype(np.uint8))
  rows = [images, colors, overlay]
  if probs is not None:
    probs = np.asarray(probs)
    if probs.shape[:3] != labels.shape:
      raise ValueError(f"probs {probs.shape} and labels {labels.shape} differ in [N, H, W].")
    low = probs.max(axis=-1) < conf_threshold
    rows.append(np.where(low[..., None], np.array(LOW_CONFIDENCE_COLOR, np.uint8), colors))
  return grid(rows, pad=pad)
