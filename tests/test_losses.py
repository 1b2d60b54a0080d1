"""The hard cross-entropy's reduction: the paper's mean over every labelled
pixel of the batch, also when computed in parts (per example, per device)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg import losses


def _two_examples():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
  labels = rng.integers(0, 3, (2, 4, 4)).astype(np.int32)
  labels[0, :3] = 255    # example 0: 12 of 16 pixels ignored
  labels[1, 0, 0] = 255  # example 1: 1 ignored
  return logits, labels


def _hand_nll(logits, labels):
  """Per-pixel -log softmax[label] in float64 numpy, NaN where ignored."""
  x = logits.astype(np.float64)
  logp = x - x.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  out = np.full(labels.shape, np.nan)
  for idx in zip(*np.nonzero(labels != 255)):
    out[idx] = -logp[idx + (labels[idx],)]
  return out


def test_hard_ce_is_the_mean_over_the_batch_labelled_pixels():
  logits, labels = _two_examples()
  nll = _hand_nll(logits, labels)
  want = np.nansum(nll) / np.sum(labels != 255)          # the paper: 4 + 15 pixels
  per_example_means = np.mean([np.nanmean(nll[0]), np.nanmean(nll[1])])
  assert abs(want - per_example_means) > 1e-2             # the two reductions differ here
  got = float(losses.hard_cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_parts_with_the_batch_count_average_to_the_batch_loss():
  logits, labels = _two_examples()
  whole = losses.hard_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  per_example = losses.labelled_count(jnp.asarray(labels)) / 2
  parts = [losses.hard_cross_entropy(jnp.asarray(logits[i:i + 1]), jnp.asarray(labels[i:i + 1]),
                                     count=per_example) for i in range(2)]
  np.testing.assert_allclose(float(np.mean(parts)), float(whole), rtol=1e-6)
  # And their gradients (what the per-example path averages).
  grad = lambda x, y, c=None: jax.grad(lambda z: losses.hard_cross_entropy(z, y, count=c))(x)
  g_parts = np.concatenate([grad(jnp.asarray(logits[i:i + 1]), jnp.asarray(labels[i:i + 1]),
                                 per_example) for i in range(2)]) / 2
  np.testing.assert_allclose(g_parts, grad(jnp.asarray(logits), jnp.asarray(labels)),
                             rtol=1e-5, atol=1e-8)


def test_no_labelled_pixel_gives_zero():
  logits = jnp.zeros((1, 2, 2, 3))
  labels = jnp.full((1, 2, 2), 255)
  assert float(losses.hard_cross_entropy(logits, labels)) == 0.0
  assert float(losses.hard_cross_entropy(logits, labels, count=jnp.float32(0))) == 0.0
  assert float(losses.labelled_count(labels)) == 0.0


@pytest.mark.parametrize("count", [0.5, 3.0])
def test_fractional_share_of_the_count(count):
  logits, labels = _two_examples()
  total = float(losses.hard_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                          count=jnp.float32(1.0)))
  got = float(losses.hard_cross_entropy(jnp.asarray(logits), jnp.asarray(labels),
                                        count=jnp.float32(count)))
  np.testing.assert_allclose(got, total / count, rtol=1e-6)
