"""Segmentation evaluation: confusion matrices, pACC / mIoU / FG-mIoU, protocols.

Conventions (as the paper's evaluation code):
- One confusion matrix over the whole set (not a mean of per-image scores);
  rows are ground truth, columns predictions; ground-truth values
  >= num_classes (255 included) are ignored.
- IoU_c = TP / (gt_c + pred_c - TP). With `absent='zero'` (default, the
  paper's quirk) a class absent from both prediction and ground truth scores
  0 and still counts in the mean; `absent='nan'` leaves it out instead.
- mIoU averages all classes, FG-mIoU classes 1..C-1 (class 0 = background).
Protocols: `best_validation` (the paper's real-image experiments) and
`five_fold_cv` (DatasetGAN test sets).
"""
import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int) -> jax.Array:
  """Confusion counts on device; jit/vmap-friendly (one bincount of length C*C).

  Args:
    pred: `[..., height, width]` integer predictions in [0, num_classes).
    label: same shape, ground truth; values >= num_classes are ignored.
    num_classes: C.
  Returns:
    `[C, C]` int32 counts (rows: ground truth); fine up to 2**31 pixels per
    call; accumulate larger sets on the host in int64.
  """
  c = num_classes
  pred = jnp.asarray(pred).astype(jnp.int32)
  label = jnp.asarray(label).astype(jnp.int32)
  valid = (label >= 0) & (label < c)
  # Ignored pixels go to an extra bin that is dropped.
  index = jnp.where(valid, label * c + jnp.clip(pred, 0, c - 1), c * c)
  counts = jnp.bincount(index.ravel(), length=c * c + 1)
  return counts[:c * c].reshape(c, c)


def confusion_matrix_np(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
  """Host version of `confusion_matrix`: `[C, C]` int64; checks its inputs."""
  pred, label = np.asarray(pred), np.asarray(label)
  if pred.shape != label.shape:
    raise ValueError(f"pred {pred.shape} and label {label.shape} differ: resize "
                     "predictions to the label resolution before scoring.")
  c = num_classes
  label = label.astype(np.int64)
  valid = (label >= 0) & (label < c)
  pred = pred.astype(np.int64)[valid]
  if pred.size and (pred.min() < 0 or pred.max() >= c):
    raise ValueError(f"Predictions must lie in [0, {c}); got [{pred.min()}, {pred.max()}].")
  counts = np.bincount(label[valid] * c + pred, minlength=c * c)
  return counts.reshape(c, c).astype(np.int64)


def scores(conf: np.ndarray, absent: str = "zero") -> dict:
  """pACC, mIoU, FG-mIoU and per-class IoU from a `[C, C]` confusion matrix.

  Args:
    conf: counts, rows ground truth.
    absent: 'zero' (paper: a class absent from prediction and ground truth
      has IoU 0 and counts) or 'nan' (its IoU is NaN and means skip it).
  Returns:
    dict(pacc, miou, fg_miou: float, iou: `[C]` float64).
  """
  if absent not in ("zero", "nan"):
    raise ValueError(f"absent={absent!r}: use 'zero' (paper) or 'nan'.")
  conf = np.asarray(conf, np.float64)
  if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
    raise ValueError(f"conf must be [C, C]; got {conf.shape}.")
  total = conf.sum()
  if total == 0:
    raise ValueError("Empty confusion matrix: every label pixel was ignored "
                     "(labels >= num_classes?).")
  tp = np.diag(conf)
  union = conf.sum(0) + conf.sum(1) - tp
  if absent == "zero":
    iou = tp / np.maximum(union, 1e-10)
    mean = np.mean
  else:
    with np.errstate(invalid="ignore"):
      iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    mean = lambda x: np.nanmean(x) if np.any(~np.isnan(x)) else np.nan
  return dict(pacc=float(tp.sum() / total), miou=float(mean(iou)),
              fg_miou=float(mean(iou[1:])) if len(iou) > 1 else float("nan"),
              iou=iou)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _batch_confusion(logits, labels, num_classes, per_image):
  pred = jnp.argmax(logits, axis=-1)
  if per_image:
    return jax.vmap(confusion_matrix, in_axes=(0, 0, None))(pred, labels, num_classes)
  return confusion_matrix(pred, labels, num_classes)


def _confusions(predict_fn, images, labels, num_classes, batch_size, per_image):
  images, labels = np.asarray(images), np.asarray(labels)
  if images.ndim != 4 or labels.shape != images.shape[:3]:
    raise ValueError(f"Want images [N, H, W, C] and labels [N, H, W]; got "
                     f"{images.shape} and {labels.shape}.")
  n = len(images)
  out = []
  for start in range(0, n, batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    real = len(x)
    if real < batch_size:  # pad to keep one compiled shape; padded labels are ignored
      x = np.concatenate([x, np.repeat(x[-1:], batch_size - real, 0)])
      y = np.concatenate([y, np.full((batch_size - real,) + y.shape[1:], 255, y.dtype)])
    logits = predict_fn(x)
    if logits.shape[:3] != y.shape or logits.shape[-1] != num_classes:
      raise ValueError(f"predict_fn gave logits {logits.shape} for labels {y.shape} "
                       f"and {num_classes} classes: return [B, H, W, num_classes] at "
                       "the label resolution.")
    conf = np.asarray(_batch_confusion(logits, y, num_classes, per_image), np.int64)
    out.append(conf[:real] if per_image else conf)
  return np.concatenate(out) if per_image else np.sum(out, axis=0)


def evaluate_segmenter(predict_fn: Callable[[np.ndarray], jax.Array], images: np.ndarray,
                       labels: np.ndarray, num_classes: int, batch_size: int = 8,
                       absent: str = "zero") -> dict:
  """Scores a segmenter on a labelled set.

  Args:
    predict_fn: images `[B, H, W, 3]` -> logits `[B, H, W, num_classes]`
      (typically a jitted apply with params bound); always called with
      exactly `batch_size` images (the last batch is padded).
    images: `[N, H, W, 3]`, already normalised as predict_fn expects.
    labels: `[N, H, W]` integer; values >= num_classes are ignored.
  Returns:
    `scores(...)` plus 'confusion' `[C, C]` int64.
  """
  conf = _confusions(predict_fn, images, labels, num_classes, batch_size, False)
  return dict(scores(conf, absent), confusion=conf)


def per_image_confusions(predict_fn, images, labels, num_classes: int,
                         batch_size: int = 8) -> np.ndarray:
  """`[N, C, C]` int64 confusion per image (input to `five_fold_cv`)."""
  return _confusions(predict_fn, images, labels, num_classes, batch_size, True)


def best_validation(snapshots: dict, key: str = "fg_miou") -> int:
  """The step whose validation `key` is highest (earliest step on ties; NaN loses).

  Args:
    snapshots: step -> scores dict (as `scores` returns).
  """
  if not snapshots:
    raise ValueError("best_validation got no snapshots.")
  best_step, best = None, -np.inf
  for step in sorted(snapshots):
    value = float(snapshots[step][key])
    if best_step is None or value > best:
      best_step, best = step, (value if not np.isnan(value) else -np.inf)
  return best_step


def five_fold_cv(confusions: dict, last: int = 20, folds: int = 5, key: str = "miou",
                 absent: str = "zero") -> dict:
  """DatasetGAN's cross-validation over the last `last` snapshots.

  Images must be in sorted (file-name) order. Fold size is N // folds; fold i
  (images [i*size, (i+1)*size)) is validation and every other image is test
  (the remainder included). For each fold, the snapshot with the best
  validation `key` (mIoU with background) is chosen and its test `key` recorded.

  Args:
    confusions: step -> `[N, C, C]` per-image confusions.
  Returns:
    dict(mean, std (population), per_fold [folds], steps [folds] chosen).
  """
  if not confusions:
    raise ValueError("five_fold_cv got no snapshots.")
  steps = sorted(confusions)[-last:]
  shapes = {np.shape(confusions[s]) for s in steps}
  if len(shapes) != 1 or len(next(iter(shapes))) != 3:
    raise ValueError(f"Every snapshot needs the same [N, C, C] confusions; got {shapes}.")
  n = next(iter(shapes))[0]
  size = n // folds
  if size == 0:
    raise ValueError(f"{n} images cannot make {folds} folds.")
  per_fold, chosen = [], []
  for i in range(folds):
    val = np.zeros(n, bool)
    val[i * size:(i + 1) * size] = True
    val_scores = {s: scores(np.asarray(confusions[s])[val].sum(0), absent) for s in steps}
    step = best_validation(val_scores, key)
    per_fold.append(scores(np.asarray(confusions[step])[~val].sum(0), absent)[key])
    chosen.append(step)
  return dict(mean=float(np.mean(per_fold)), std=float(np.std(per_fold)),
              per_fold=per_fold, steps=chosen)


def format_table(result: dict, class_names: Optional[Sequence[str]] = None) -> str:
  """Per-class IoU and the summary scores, in percent, as aligned text."""
  iou = np.asarray(result["iou"])
  names = list(class_names) if class_names is not None else [str(i) for i in range(len(iou))]
  if len(names) != len(iou):
    raise ValueError(f"{len(names)} class names for {len(iou)} classes.")
  width = max(len(n) for n in names + ["FG-mIoU"])
  lines = [f"{n:<{width}}  {100 * v:6.2f}" for n, v in zip(names, iou)]
  lines.append("-" * (width + 8))
  for label, k in (("pACC", "pacc"), ("mIoU", "miou"), ("FG-mIoU", "fg_miou")):
    lines.append(f"{label:<{width}}  {100 * result[k]:6.2f}")
  return "\n".join(lines)
