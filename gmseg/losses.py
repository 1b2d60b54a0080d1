"""Segmentation losses: soft cross-entropy (synthetic labels) and hard
cross-entropy with an ignore index (manual labels)."""
from typing import Optional

import jax
import jax.numpy as jnp

IGNORE = 255


def soft_cross_entropy(logits: jax.Array, probs: jax.Array,
                       weights: Optional[jax.Array] = None) -> jax.Array:
  """Mean over pixels of `sum_c -w_c p_c log softmax(logits)_c`.

  Args:
    logits: segmenter logits `[..., H, W, C]`.
    probs: soft labels `[..., H, W, C]` (rows sum to 1).
    weights: optional `[C]` per-class weights (beyond the paper; w = 1 when
      None). With one-hot `probs` this is `hard_cross_entropy` with the same
      weights and no ignored pixel.
  Returns:
    scalar loss.
  """
  logp = jax.nn.log_softmax(logits, axis=-1)
  if weights is not None:
    logp = logp * jnp.asarray(weights, logp.dtype)
  return -jnp.mean(jnp.sum(probs * logp, axis=-1))


def distillation_cross_entropy(probs: jax.Array, target: jax.Array) -> jax.Array:
  """Mean over pixels of `sum_c -t_c log(p_c + 1e-8)`: soft cross-entropy of
  a labeller's probabilities `probs` against a teacher's `target` (both
  `[..., H, W, C]`; detach `target` first), for labels that exist only as
  probabilities (an annotator's after a joint transform). Returns a scalar."""
  return -jnp.mean(jnp.sum(target * jnp.log(probs + 1e-8), axis=-1))


def hard_cross_entropy(logits: jax.Array, labels: jax.Array,
                       ignore_index: int = IGNORE,
                       count: Optional[jax.Array] = None,
                       weights: Optional[jax.Array] = None) -> jax.Array:
  """Mean over labelled pixels of `-log softmax(logits)[label]`.

  Pixels equal to `ignore_index` do not count (as torch's CrossEntropyLoss
  with `ignore_index`): the sum over every labelled pixel of the batch is
  divided by their number, so an example with more ignored pixels weighs
  less (the paper's reduction); a batch with no labelled pixel gives 0.

  Args:
    logits: `[..., H, W, C]`.
    labels: integer class map `[..., H, W]`.
    count: what to divide the sum by instead of the number of labelled pixels
      in `labels`. Parts of a batch (one example, one device's share) pass
      `labelled_count(whole batch) * part_size / batch_size`, so the mean of
      the parts' losses (and of their gradients) is the whole batch's loss.
    weights: optional `[C]` per-class weights multiplying each pixel's term
      (beyond the paper; the divisor stays the pixel count).
  """
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  if weights is not None:
    nll = nll * jnp.asarray(weights, nll.dtype)[safe]
  total = jnp.sum(jnp.where(valid, nll, 0.0))
  if count is None:
    return total / jnp.maximum(jnp.sum(valid), 1)
  # A part's share of the count may be fractional; the sum is 0 when it is 0.
  return total / jnp.where(count > 0, count, 1).astype(total.dtype)


def labelled_count(labels: jax.Array, ignore_index: int = IGNORE) -> jax.Array:
  """Number of pixels of `labels` not equal to `ignore_index` (float32 scalar)."""
  return jnp.sum(labels != ignore_index).astype(jnp.float32)
