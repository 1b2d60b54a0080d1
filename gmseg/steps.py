"""The method's steps as pure functions: annotator (gradient matching),
segmenter (training on synthetic soft labels) and a supervised baseline step.

Each step is `(state, ..., *, method, axis_name=None) -> (state, metrics)`.
Wrap with `functools.partial(step, method=m)` and `jax.jit` (or pmap through
gmseg/parallel.py, which passes `axis_name`). Under an axis name, gradient
means and metrics go through `lax.pmean`, so the matching loss is that of the
global batch.

BatchNorm (GroupNorm, the default, needs none of this): in the annotator
step S runs in training mode; `method.seg_bn` says over what its statistics
are taken: 'across_batch' (the whole labelled, then the whole synthetic
batch: the paper's code) or 'per_example' (each example alone). Its running
statistics stay ('frozen', default) or move with both passes ('update', as
the paper's code), `method.ann_step_seg_stats`. The annotator uses batch
statistics and updates its running ones. In the segmenter step S uses batch
statistics of the synthetic batch and updates its running ones; the
annotator uses its running ones. Evaluation uses running statistics.

Precision and memory (`method.compute_dtype`, `method.remat`): with
'bfloat16' every model call of the training steps (G, A, S) casts its
parameters and inputs to bfloat16 and its outputs back to float32, so
softmaxes, losses, the matching distance, gradients (through the casts) and
optimiser updates stay float32 on float32 parameters; 'float32' adds no
operation. `remat` wraps S's forward pass inside the annotator step in
`jax.checkpoint` with that policy. `predict` (evaluation) runs in float32.

Mean gradients over a batch (`method.grad_path`): 'batch' differentiates the
batch loss once (the mean of per-example gradients, exactly, because every
loss here is a mean over examples: the hard cross-entropy divides by the
batch's labelled-pixel count); 'per_example' takes `vmap(grad)` and the
mean, materialising B copies of the matched gradients.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
import optax

from gmseg import losses
from gmseg import matching
from gmseg import views
from gmseg.models import layers
from gmseg.state import REMAT, Method, TrainState

# Tags folded into the per-step key so the two phases draw different samples.
_ANN, _SEG, _SUP, _VIEW, _SEG_VIEW = 0, 1, 2, 3, 4


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


REMAT_POLICIES = {name: getattr(jax.checkpoint_policies, name)
                  for name in REMAT if name != "none"}


def _cast(tree, dtype):
  """Floating leaves of `tree` in `dtype`; integer leaves (labels, keys) as they are."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x,
      tree)


def run_model(method: Method, module, params, stats, x, *, train: bool,
              rng: Optional[jax.Array] = None):
  """`apply_model` in `method.compute_dtype`; returns (float32 output, stats).

  Parameters and inputs are cast (the cast's transpose takes gradients back
  to the float32 parameters); BatchNorm running statistics stay float32
  (Flax computes batch statistics in at least float32).
  """
  if method.compute_dtype == "float32":
    return apply_model(module, params, stats, x, train=train, rng=rng)
  dtype = jnp.dtype(method.compute_dtype)
  out, stats = apply_model(module, _cast(params, dtype), stats, _cast(x, dtype),
                           train=train, rng=rng)
  return _cast(out, jnp.float32), stats


def _pmean(tree, axis_name):
  return tree if axis_name is None else lax.pmean(tree, axis_name)


def _step_key(state: TrainState, tag: int) -> jax.Array:
  """This step's key for one use: fold_in(rng, step), then the tag."""
  return jax.random.fold_in(jax.random.fold_in(state.rng, state.step), tag)


def _step_keys(state: TrainState, tag: int, n: int, axis_name):
  """`n` keys for this step and phase (from `_step_key`).

  Returns (shared keys, per-device keys): shared keys are equal on every
  device (for global-batch latents), per-device keys differ (dropout, noise).
  """
  key = _step_key(state, tag)
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
  logits, stats = run_model(method, method.annotator, ann_params, ann_stats, feats,
                            train=train)
  return layers.resize_to(logits, image_hw), stats


def _generate(method: Method, gen_params, z, rng):
  if method.compute_dtype == "float32":
    images, feats = method.gen_fn(gen_params, z, rng)
  else:
    dtype = jnp.dtype(method.compute_dtype)
    images, feats = _cast(method.gen_fn(_cast(gen_params, dtype), _cast(z, dtype), rng),
                          jnp.float32)
  # G is frozen: nothing flows back into it.
  return lax.stop_gradient(images), lax.stop_gradient(feats)


def _with_transform(method: Method, images, probs):
  if method.transform is None:
    return images, probs
  return method.transform(images, probs)


def _segmenter_apply(method: Method, params, stats, images, rng):
  """S in training mode inside the annotator step: `run_model`, under
  `jax.checkpoint(policy=method.remat)` unless remat is 'none' (activations
  recomputed in the backward passes instead of kept)."""
  fn = lambda p, s, x, r: run_model(method, method.segmenter, p, s, x, train=True, rng=r)
  if method.remat != "none":
    fn = jax.checkpoint(fn, policy=REMAT_POLICIES[method.remat])
  return fn(params, stats, images, rng)


def _segmenter_forward(method: Method, params, stats, images, rng):
  """S in training mode on `images` `[B, H, W, 3]` as the annotator step sees
  them; returns (logits `[B, H, W, C]`, new batch_stats).

  seg_bn='across_batch': one batch (BatchNorm statistics over all of it).
  seg_bn='per_example': every example alone (vmapped batch of one, its own
  dropout key), exactly as the per-example gradient path runs it.
  """
  if method.seg_bn == "across_batch":
    return _segmenter_apply(method, params, stats, images, rng)

  def one(image, key):
    logits, new = _segmenter_apply(method, params, stats, image[None], key)
    return logits[0], new

  keys = jax.random.split(rng, images.shape[0])
  logits, _ = jax.vmap(one)(images, keys)
  # Per-example running statistics have no single update: keep the old ones
  # (Method forbids ann_step_seg_stats='update' here).
  return logits, stats


def _segmenter_grads(method: Method, state: TrainState, loss_fn, images,
                     targets, rng, axis_name):
  """Mean over the (global) batch of the gradient of S's loss with respect to
  the matched parameters; differentiable in `targets`.

  `loss_fn(logits [b, H, W, C], targets [b, ...])` must be a mean over the
  examples it is given (any b), so that the mean of per-example gradients is
  the gradient of the batch loss. grad_path='batch' takes that one gradient
  (exact whenever S normalises each example alone, or with seg_bn=
  'across_batch' where the batch loss is the definition); 'per_example'
  takes `vmap(grad)` and averages (the method's explicit primitive; S then
  sees each example alone).

  Returns:
    (flat dict path -> gradient, S's batch_stats after the forward pass).
  """
  seg_matched, seg_rest = matching.split(state.seg_params, method.matched)
  if method.grad_path == "batch":
    def batch_loss(matched):
      logits, stats = _segmenter_forward(method, matching.merge(matched, seg_rest),
                                         state.seg_stats, images, rng)
      return loss_fn(logits, targets), stats

    g, stats = jax.grad(batch_loss, has_aux=True)(seg_matched)
  else:
    if state.seg_stats and method.seg_bn != "per_example":
      raise ValueError(
          "matching.grad_path='per_example' normalises every example alone, but "
          "matching.seg_bn='across_batch' asks for BatchNorm statistics over the "
          "batch: set matching.seg_bn='per_example' or matching.grad_path='batch'.")

    def example_loss(matched, image, target, key):
      params = matching.merge(matched, seg_rest)
      logits, _ = _segmenter_apply(method, params, state.seg_stats, image[None], key)
      return loss_fn(logits, target[None])

    rngs = jax.random.split(rng, images.shape[0])
    g = matching.per_example_grads(example_loss, seg_matched, images, targets, rngs)
    g = jax.tree.map(lambda x: jnp.mean(x, axis=0), g)
    stats = state.seg_stats
  return _pmean(g, axis_name), stats


def _labelled_grads(state: TrainState, batch: dict, method: Method, axis_name):
  """(detached target gradient, S's batch_stats after the labelled pass)."""
  _, local = _step_keys(state, _ANN, 4, axis_name)
  labels = batch["label"]
  # The paper's reduction: the mean over every labelled pixel of the (global)
  # batch. Any part of it (an example, a device's share) divides its pixel
  # sum by its share of the global count, so the parts' mean is that mean.
  per_example = _pmean(losses.labelled_count(labels), axis_name) / labels.shape[0]
  weights = jnp.asarray(method.class_weights) if method.class_weights else None
  loss_fn = lambda logits, y: losses.hard_cross_entropy(
      logits, y, count=per_example * y.shape[0], weights=weights)
  g, stats = _segmenter_grads(method, state, loss_fn, batch["image"], labels,
                              local[0], axis_name)
  return lax.stop_gradient(g), stats


def labelled_grads(state: TrainState, batch: dict, *, method: Method,
                   axis_name: Optional[str] = None) -> dict:
  """The target gradient: gradient of the hard cross-entropy of S on the
  labelled batch (mean over its labelled pixels), over the matched
  parameters (detached).

  Returns:
    flat dict path -> gradient, shaped like the matched parameters.
  """
  return _labelled_grads(state, batch, method, axis_name)[0]


def matching_loss(ann_params, state: TrainState, g_real: dict, gen_params, *,
                  method: Method, axis_name: Optional[str] = None,
                  generated=None, view: Optional[views.View] = None):
  """Gradient-matching loss of the annotator at the current segmenter.

  z -> G -> (images, features) -> A -> soft labels -> mean gradient of S's
  soft cross-entropy over the batch -> distance to `g_real`.

  Args:
    ann_params: annotator parameters (the variable differentiated).
    g_real: the target gradient from `labelled_grads`.
    generated: optional (images, features) of this step's latents, as
      `generate_for_step` returns them (else G runs here).
    view: optional Siamese view (gmseg.views) of the synthetic images and
      soft labels after `method.transform`, the one `g_real`'s batch was seen
      through (`annotator_step` draws it with `step_view`).
  With `method.anchor_weight` > 0 (beyond the paper) the loss adds that
  weight times the soft cross-entropy of the annotator's labels against the
  teacher's (`method.anchor`, detached) on the same samples: matching
  refines the teacher's labels instead of walking away from them.

  Returns:
    (loss, (new annotator batch_stats, synthetic gradient, S's batch_stats
    after the synthetic pass, {'match': distance, 'anchor': cross-entropy
    (0 without an anchor)})).
  """
  _, local = _step_keys(state, _ANN, 4, axis_name)
  if generated is None:
    generated = _generate_ann(method, state, gen_params, axis_name)
  images, feats = generated
  logits, ann_stats = annotate(method, ann_params, state.ann_stats, feats,
                               images.shape[1:3], train=True)
  x, p = _with_transform(method, images, jax.nn.softmax(logits, axis=-1))
  if view is not None:
    x, p = views.apply_images(view, x), views.apply_probs(view, p)
  # class_weights_on='both': the synthetic loss carries the labelled loss's
  # class weights, so the distance is smallest at labels of the real parts'
  # sizes ('labelled' alone rewards painting weighted parts larger).
  weights = (jnp.asarray(method.class_weights)
             if method.class_weights and method.class_weights_on == "both" else None)
  loss_fn = lambda logits, probs: losses.soft_cross_entropy(logits, probs, weights)
  g_syn, seg_stats = _segmenter_grads(method, state, loss_fn, x, p, local[3], axis_name)
  dist = matching.matching_distance(
      g_syn, g_real, method.metric, method.row_reduction,
      method.tensor_reduction, method.vectors)
  anchor = jnp.zeros((), jnp.float32)
  if method.anchor_weight > 0:
    target = method.anchor(images, feats).astype(jnp.float32)
    if view is not None:  # compared where the annotator's labels are
      target = views.apply_probs(view, target)
    target = lax.stop_gradient(target)
    anchor = losses.distillation_cross_entropy(p.astype(jnp.float32), target)
  loss = dist + method.anchor_weight * anchor
  return loss, (ann_stats, g_syn, seg_stats, {"match": dist, "anchor": anchor})


def annotator_step(state: TrainState, batch: dict, gen_params, *,
                   method: Method, axis_name: Optional[str] = None,
                   generated=None):
  """One gradient-matching update of the annotator.

  With `method.augment='siamese'` the labelled batch and the synthetic one
  are both seen through this iteration's view (`step_view`).

  Args:
    state: the current TrainState.
    batch: the labelled batch (this device's share): `image` `[B, H, W, 3]`
      in [-1, 1], `label` `[B, H, W]` int (255 = ignore).
    gen_params: the frozen generator's parameters.
    method: static setup (closed over, not traced).
    axis_name: device axis under pmap, else None.
    generated: optional pre-generated samples (see `matching_loss`).
  Returns:
    (new state, metrics dict of scalars).
  """
  view = step_view(method, state)
  if view is not None:
    batch = dict(batch, image=views.apply_images(view, batch["image"]),
                 label=views.apply_labels(view, batch["label"]))
  g_real, seg_stats = _labelled_grads(state, batch, method, axis_name)
  # With ann_step_seg_stats='update' the synthetic pass starts from the
  # statistics the labelled pass left (the paper's order); else nothing moves.
  seen = state.replace(seg_stats=seg_stats) if method.ann_step_seg_stats == "update" else state
  (_, (ann_stats, g_syn, seg_stats, parts)), grads = jax.value_and_grad(
      matching_loss, has_aux=True)(state.ann_params, seen, g_real, gen_params,
                                   method=method, axis_name=axis_name,
                                   generated=generated, view=view)
  params, opt_state, metrics = _apply_grads(
      grads, state.ann_params, state.ann_opt_state, method.ann_tx, axis_name, "ann")
  metrics.update({
      "ann/match_loss": parts["match"],
      "ann/g_real_norm": matching.global_norm(g_real),
      "ann/g_syn_norm": matching.global_norm(g_syn),
  })
  if method.anchor_weight > 0:
    metrics["ann/anchor_loss"] = parts["anchor"]
  state = state.replace(ann_params=params, ann_opt_state=opt_state,
                        ann_stats=_pmean(ann_stats, axis_name))
  if method.ann_step_seg_stats == "update":
    state = state.replace(seg_stats=_pmean(seg_stats, axis_name))
  return state, _pmean(metrics, axis_name)


def step_view(method: Method, state: TrainState) -> Optional[views.View]:
  """The Siamese view of iteration `state.step` (None when
  `method.augment='none'`): drawn from the step's key, not the device's,
  so every device sees the same view."""
  return _view(method, state, _VIEW) if method.augment != "none" else None


def _view(method: Method, state: TrainState, tag: int) -> views.View:
  return views.sample(_step_key(state, tag), method.augment_zoom)


def _ann_latents(method: Method, state: TrainState, axis_name):
  """The annotator step's (latents, generator noise key) of (step, _ANN)."""
  shared, local = _step_keys(state, _ANN, 4, axis_name)
  return sample_latents(shared[1], method.syn_batch, method.z_dim, axis_name), local[2]


def _seg_latents(method: Method, state: TrainState, axis_name):
  """The segmenter step's (latents, generator noise key) of (step, _SEG)."""
  shared, local = _step_keys(state, _SEG, 3, axis_name)
  return sample_latents(shared[0], method.seg_batch, method.z_dim, axis_name), local[0]


def _generate_ann(method: Method, state: TrainState, gen_params, axis_name):
  """The annotator step's samples."""
  return _generate(method, gen_params, *_ann_latents(method, state, axis_name))


def _generate_seg(method: Method, state: TrainState, gen_params, axis_name):
  """The segmenter step's samples."""
  return _generate(method, gen_params, *_seg_latents(method, state, axis_name))


def generate_for_step(method: Method, state: TrainState, gen_params,
                      axis_name: Optional[str] = None):
  """The generator samples of both steps of iteration `state.step`, from one
  generator call where the two batches have the same size.

  G is frozen and the latents and noise keys depend only on (rng, step), so
  both batches can be generated before the annotator update. The call is
  `vmap`ped over the two (latents, noise key) pairs: every sample, StyleGAN's
  per-call noise included, is the one the two separate calls draw (a joint
  batch of 2B latents would draw different noise), while XLA runs each layer
  once on 2B examples.

  Returns:
    ((images, features) of the annotator step, (images, features) of the
    segmenter step), images `[B, H, W, 3]`.
  """
  if method.syn_batch != method.seg_batch:
    return (_generate_ann(method, state, gen_params, axis_name),
            _generate_seg(method, state, gen_params, axis_name))
  (z_ann, k_ann), (z_seg, k_seg) = (_ann_latents(method, state, axis_name),
                                     _seg_latents(method, state, axis_name))
  z, keys = jnp.stack([z_ann, z_seg]), jnp.stack([k_ann, k_seg])
  both = jax.vmap(lambda zz, k: _generate(method, gen_params, zz, k))(z, keys)
  return jax.tree.map(lambda x: x[0], both), jax.tree.map(lambda x: x[1], both)


def iteration_step(state: TrainState, batch: dict, gen_params, *,
                   method: Method, axis_name: Optional[str] = None):
  """One loop iteration as one program: `annotator_step`, then
  `segmenter_step` (which increments `state.step`).

  The two steps in turn with the same keys and latents; one dispatch, one
  set of donated buffers, and one generator call for both latent batches
  (`generate_for_step`: the same samples, to float32 rounding of the
  batched layers).

  Returns:
    (new state, the metrics of both steps).
  """
  ann_samples, seg_samples = generate_for_step(method, state, gen_params, axis_name)
  state, m_ann = annotator_step(state, batch, gen_params, method=method,
                                axis_name=axis_name, generated=ann_samples)
  state, m_seg = segmenter_step(state, gen_params, method=method, axis_name=axis_name,
                                generated=seg_samples)
  return state, {**m_ann, **m_seg}


def unrolled_iterations(state: TrainState, batches: dict, gen_params, *,
                        method: Method, axis_name: Optional[str] = None):
  """`n` loop iterations in one program: `iteration_step` traced n times in
  a row (n = the batches' leading axis, static).

  Not `lax.scan`: on XLA's CPU backend the rolled while loop of this body
  ran 6.4x slower per iteration than the straight-line program (preset
  faces), and `scan(..., unroll=True)` compiles the body differently enough
  to move the results by float32 rounding (~1e-7 after one iteration). The
  traced loop gives the n single iterations' results bitwise (checked in
  tests/test_iteration_scan.py), at n times the compile time.

  Args:
    batches: the labelled batches of iterations state.step ... state.step +
      n - 1, stacked: `image` `[n, B, H, W, 3]`, `label` `[n, B, H, W]`.
  Returns:
    (state after n iterations, metrics with a leading axis `[n]`).
  """
  history = []
  for i in range(jax.tree.leaves(batches)[0].shape[0]):
    batch = jax.tree.map(lambda x: x[i], batches)
    state, metrics = iteration_step(state, batch, gen_params, method=method,
                                    axis_name=axis_name)
    history.append(metrics)
  return state, jax.tree.map(lambda *xs: jnp.stack(xs), *history)


def segmenter_step(state: TrainState, gen_params, *, method: Method,
                   axis_name: Optional[str] = None, generated=None):
  """One update of the segmenter on freshly annotated generator samples.

  The annotator is frozen here (eval mode); soft labels are its softmax.
  `generated`: optional (images, features) of this step's latents
  (`generate_for_step`), else G runs here.

  Returns:
    (new state with `step` incremented, metrics dict).
  """
  _, local = _step_keys(state, _SEG, 3, axis_name)
  if generated is None:
    generated = _generate_seg(method, state, gen_params, axis_name)
  images, feats = generated
  logits, _ = annotate(method, state.ann_params, state.ann_stats, feats,
                       images.shape[1:3], train=False)
  probs = lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
  images, probs = _with_transform(method, images, probs)
  if method.augment == "siamese_train":  # S trains on views like those it is matched on
    view = _view(method, state, _SEG_VIEW)
    images, probs = views.apply_images(view, images), views.apply_probs(view, probs)

  def loss_fn(params):
    out, stats = run_model(method, method.segmenter, params, state.seg_stats, images,
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
  # Devices may hold different numbers of ignored pixels: each divides its
  # pixel sum by the device-mean labelled count, so the pmeaned loss and
  # gradient are the global batch's (one device: the plain mean, as before).
  count = None if axis_name is None else _pmean(
      losses.labelled_count(batch["label"]), axis_name)

  def loss_fn(params):
    out, stats = run_model(method, method.segmenter, params, state.seg_stats,
                           batch["image"], train=True, rng=local[0])
    return losses.hard_cross_entropy(out, batch["label"], count=count), stats

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
