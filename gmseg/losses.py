"""Segmentation losses: soft cross-entropy (synthetic labels) and hard
cross-entropy with an ignore index (manual labels)."""
import jax
import jax.numpy as jnp

IGNORE = 255


def soft_cross_entropy(logits: jax.Array, probs: jax.Array) -> jax.Array:
  """Mean over pixels of `sum_c -p_c log softmax(logits)_c`.

  Args:
    logits: segmenter logits `[..., H, W, C]`.
    probs: soft labels `[..., H, W, C]` (rows sum to 1).
  Returns:
    scalar loss.
  """
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.sum(probs * logp, axis=-1))


def hard_cross_entropy(logits: jax.Array, labels: jax.Array,
                       ignore_index: int = IGNORE) -> jax.Array:
  """Mean over labelled pixels of `-log softmax(logits)[label]`.

  Pixels equal to `ignore_index` do not count (as torch's CrossEntropyLoss
  with `ignore_index`); an image with no labelled pixel gives 0.

  Args:
    logits: `[..., H, W, C]`.
    labels: integer class map `[..., H, W]`.
  """
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_index
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  count = jnp.sum(valid)
  return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(count, 1)
