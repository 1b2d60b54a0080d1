"""The method's steps as pure functions: annotator (gradient matching),
segmenter (training on synthetic soft labels) and a supervised baseline step.

Each step is `(state, ..., *, method, axis_name=None) -> (state, metrics)`.
Wrap with `functools.partial(step, method=m)` and `jax.jit` (or pmap through
gmseg/parallel.py, which passes `axis_name`). Under an axis name, gradient
means and metrics go through `lax.pmean`, so the matching loss is that of the
global batch.

BatchNorm rule (GroupNorm, the default, needs none): in the annotator step
the segmenter runs in training mode on each example alone (per-example
gradients are taken per example, so each example is its own batch) and its
running statistics are not updated; the annotator uses batch statistics and
updates its running ones. In the segmenter step the segmenter uses batch
statistics of the synthetic batch and updates its running ones; the annotator
uses its running ones. Evaluation uses running statistics.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
import optax

from gmseg import losses
from gmseg import matching
from gmseg.models import layers
from gmseg.state import Method, TrainState

# Tags folded into the per-step key so the two phases draw different samples.
_ANN, _SEG, _SUP = 0, 1, 2


def apply_model(module, params, stats, x, *, train: bool,
                rng: Optional[jax.Array] = None):
  """Runs a Flax module; returns (output, new batch_stats).

  Running statistics are updated only when the model has them and `train`.
  """
  variables = {"params": params}
  if stats:
    variables["batch_stats"] = stats
  rngs = {"dropout": rng} if rng is not None else None
  if train and stats:
    out, updates = module.apply(variables, x, train=True, rngs=rngs,
                                mutable=["batch_stats"])
    return out, updates["batch_stats"]
  return module.apply(variables, x, train=train, rngs=rngs), stats


def _pmean(tree, axis_name):
  return tree if axis_name is None else lax.pmean(tree, axis_name)


def _step_keys(state: TrainState, tag: int, n: int, axis_name):
  """`n` keys for this step and phase: fold_in(rng, step), then the tag.

  Returns (shared keys, per-device keys): shared keys are equal on every
  device (for global-batch latents), per-device keys differ (dropout, noise).
  """
  key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), tag)
  shared = jax.random.split(key, n)
  local = key if axis_name is None else jax.random.fold_in(
      key, lax.axis_index(axis_name))
  return shared, jax.random.split(jax.random.fold_in(local, 1), n)


def sample_latents(key, per_device: int, z_dim: int, axis_name) -> jax.Array:
  """This device's slice of one global latent batch.

  Drawing the global batch from a shared key and slicing it makes N devices
  see exactly the latents a single device would (same global batch and seed).

  Returns:
    `[per_device, z_dim]` latents.
  """
  if axis_name is None:
    return jax.random.normal(key, (per_device, z_dim))
  n_dev = lax.psum(1, axis_name)
  z = jax.random.normal(key, (per_device * n_dev, z_dim))
  return lax.dynamic_slice_in_dim(z, lax.axis_index(axis_name) * per_device,
                                  per_device)


def annotate(method: Method, ann_params, ann_stats, feats, image_hw, *,
             train: bool):
  """Annotator logits at the image resolution; returns (logits, new stats).

  Args:
    feats: generator features, low to high resolution.
    image_hw: (H, W) of the generated images.
  Returns:
    logits `[B, H, W, C]` and the annotator's batch_stats.
  """
  logits, stats = apply_model(method.annotator, ann_params, ann_stats, feats,
                              train=train)
  return layers.resize_to(logits, image_hw), stats


def _generate(method: Method, gen_params, z, rng):
  images, feats = method.gen_fn(gen_params, z, rng)
  # G is frozen: nothing flows back into it.
  return lax.stop_gradient(images), lax.stop_gradient(feats)


def _with_transform(method: Method, images, probs):
  if method.transform is None:
    return images, probs
  return method.transform(images, probs)


def _segmenter_grads(method: Method, state: TrainState, loss_fn, images,
                     targets, rng, axis_name):
  """Mean over the (global) batch of per-example gradients of S's loss with
  respect to the matched parameters; differentiable in `targets`."""
  seg_matched, seg_rest = matching.split(state.seg_params, method.matched)

  def example_loss(matched, image, target, key):
    params = matching.merge(matched, seg_rest)
    # Each example alone: per-example statistics for BatchNorm (see above).
    logits, _ = apply_model(method.segmenter, params, state.seg_stats,
                            image[None], train=True, rng=key)
    return loss_fn(logits, target[None])

  rngs = jax.random.split(rng, images.shape[0])
  g = matching.per_example_grads(example_loss, seg_matched, images, targets, rngs)
  return _pmean(jax.tree.map(lambda x: jnp.mean(x, axis=0), g), axis_name)


def labelled_grads(state: TrainState, batch: dict, *, method: Method,
                   axis_name: Optional[str] = None) -> dict:
  """The target gradient: mean per-example gradient of hard cross-entropy on
  the labelled batch, over the matched parameters (detached).

  Returns:
    flat dict path -> gradient, shaped like the matched parameters.
  """
  _, local = _step_keys(state, _ANN, 4, axis_name)
  g = _segmenter_grads(method, state, losses.hard_cross_entropy,
                       batch["image"], batch["label"], local[0], axis_name)
  return lax.stop_gradient(g)


def matching_loss(ann_params, state: TrainState, g_real: dict, gen_params, *,
                  method: Method, axis_name: Optional[str] = None):
  """Gradient-matching loss of the annotator at the current segmenter.

  z -> G -> (images, features) -> A -> soft labels -> per-example grads of S's
  soft cross-entropy -> mean -> distance to `g_real`.

  Args:
    ann_params: annotator parameters (the variable differentiated).
    g_real: the target gradient from `labelled_grads`.
  Returns:
    (distance, (new annotator batch_stats, synthetic gradient)).
  """
  shared, local = _step_keys(state, _ANN, 4, axis_name)
  z = sample_latents(shared[1], method.syn_batch, method.z_dim, axis_name)
  images, feats = _generate(method, gen_params, z, local[2])
  logits, ann_stats = annotate(method, ann_params, state.ann_stats, feats,
                               images.shape[1:3], train=True)
  x, p = _with_transform(method, images, jax.nn.softmax(logits, axis=-1))
  g_syn = _segmenter_grads(method, state, losses.soft_cross_entropy, x, p,
                           local[3], axis_name)
  dist = matching.matching_distance(
      g_syn, g_real, method.metric, method.row_reduction,
      method.tensor_reduction, method.vectors)
  return dist, (ann_stats, g_syn)


def annotator_step(state: TrainState, batch: dict, gen_params, *,
                   method: Method, axis_name: Optional[str] = None):
  """One gradient-matching update of the annotator.

  Args:
    state: the current TrainState.
    batch: the labelled batch (this device's share): `image` `[B, H, W, 3]`
      in [-1, 1], `label` `[B, H, W]` int (255 = ignore).
    gen_params: the frozen generator's parameters.
    method: static setup (closed over, not traced).
    axis_name: device axis under pmap, else None.
  Returns:
    (new state, metrics dict of scalars).
  """
  g_real = labelled_grads(state, batch, method=method, axis_name=axis_name)
  (dist, (ann_stats, g_syn)), grads = jax.value_and_grad(
      matching_loss, has_aux=True)(state.ann_params, state, g_real, gen_params,
                                   method=method, axis_name=axis_name)
  params, opt_state, metrics = _apply_grads(
      grads, state.ann_params, state.ann_opt_state, method.ann_tx, axis_name, "ann")
  metrics.update({
      "ann/match_loss": dist,
      "ann/g_real_norm": matching.global_norm(g_real),
      "ann/g_syn_norm": matching.global_norm(g_syn),
  })
  state = state.replace(ann_params=params, ann_opt_state=opt_state,
                        ann_stats=_pmean(ann_stats, axis_name))
  return state, _pmean(metrics, axis_name)


def segmenter_step(state: TrainState, gen_params, *, method: Method,
                   axis_name: Optional[str] = None):
  """One update of the segmenter on freshly annotated generator samples.

  The annotator is frozen here (eval mode); soft labels are its softmax.

  Returns:
    (new state with `step` incremented, metrics dict).
  """
  shared, local = _step_keys(state, _SEG, 3, axis_name)
  z = sample_latents(shared[0], method.seg_batch, method.z_dim, axis_name)
  images, feats = _generate(method, gen_params, z, local[0])
  logits, _ = annotate(method, state.ann_params, state.ann_stats, feats,
                       images.shape[1:3], train=False)
  probs = lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
  images, probs = _with_transform(method, images, probs)

  def loss_fn(params):
    out, stats = apply_model(method.segmenter, params, state.seg_stats, images,
                             train=True, rng=local[1])
    return losses.soft_cross_entropy(out, probs), stats

  state, metrics = _update_segmenter(state, loss_fn, method, axis_name, "seg")
  metrics["seg/label_confidence"] = _pmean(
      jnp.mean(jnp.max(probs, axis=-1)), axis_name)
  return state, metrics


def supervised_step(state: TrainState, batch: dict, *, method: Method,
                    axis_name: Optional[str] = None):
  """Baseline: one update of the segmenter on the labelled batch alone.

  Args:
    batch: `image` `[B, H, W, 3]` in [-1, 1], `label` `[B, H, W]`.
  Returns:
    (new state with `step` incremented, metrics dict).
  """
  _, local = _step_keys(state, _SUP, 1, axis_name)

  def loss_fn(params):
    out, stats = apply_model(method.segmenter, params, state.seg_stats,
                             batch["image"], train=True, rng=local[0])
    return losses.hard_cross_entropy(out, batch["label"]), stats

  return _update_segmenter(state, loss_fn, method, axis_name, "sup")


def _apply_grads(grads, params, opt_state, tx, axis_name, prefix):
  """Device mean, the paper's clean-up (NaN -> 0, +-inf -> +-1e5), optax update.

  Returns:
    (new params, new opt_state, {grad_norm, update_norm, nonfinite} metrics).
  """
  grads = _pmean(grads, axis_name)
  grads, nonfinite = matching.sanitize(grads)
  updates, opt_state = tx.update(grads, opt_state, params)
  metrics = {
      f"{prefix}/grad_norm": matching.global_norm(grads),
      f"{prefix}/update_norm": matching.global_norm(updates),
      f"{prefix}/nonfinite": nonfinite.astype(jnp.float32),
  }
  return optax.apply_updates(params, updates), opt_state, metrics


def _update_segmenter(state, loss_fn, method, axis_name, prefix):
  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.seg_params)
  params, opt_state, metrics = _apply_grads(
      grads, state.seg_params, state.seg_opt_state, method.seg_tx, axis_name, prefix)
  metrics[f"{prefix}/loss"] = loss
  state = state.replace(seg_params=params, seg_opt_state=opt_state,
                        seg_stats=_pmean(stats, axis_name),
                        step=state.step + 1)
  return state, _pmean(metrics, axis_name)


def predict(method: Method, seg_params, seg_stats, images: jax.Array) -> jax.Array:
  """Segmenter logits `[B, H, W, C]` in eval mode (running statistics)."""
  return apply_model(method.segmenter, seg_params, seg_stats, images,
                     train=False)[0]


def annotate_samples(method: Method, state: TrainState, gen_params, z, rng):
  """Generator images and the annotator's soft labels for latents `z`.

  Returns:
    images `[B, H, W, 3]`, probs `[B, H, W, C]` (after `method.transform`).
  """
  images, feats = _generate(method, gen_params, z, rng)
  logits, _ = annotate(method, state.ann_params, state.ann_stats, feats,
                       images.shape[1:3], train=False)
  return _with_transform(method, images, jax.nn.softmax(logits, axis=-1))
