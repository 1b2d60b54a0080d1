"""Beyond the paper: a warm start for phase one from a teacher's labels.

Before gradient matching, `distill_annotator` fits the annotator to a
teacher's soft labels on generated images (soft cross-entropy, its own Adam
at `warm_start.lr`, `warm_start.batch` fresh latents per step, for
`warm_start.distill_steps` steps). With the supervised k-shot segmenter as
the teacher (`label_sources.segmenter`), matching starts from the
self-training labels, so the self-training control measures whether
gradient matching improves on its starting point. `warm_start.segmenter`
also starts phase one's S from the teacher's parameters.

The annotator's optimiser state is left fresh: matching starts as it would
from a random annotator, only from other parameters.
"""
import functools

from absl import logging
import jax
import jax.numpy as jnp
import optax

from gmseg import label_sources
from gmseg import losses
from gmseg import state as state_lib

_TAG = 0x3A4  # folded into the seed: distillation latents differ from phase one's


def distill_loss(ann_params, ann_stats, teacher_params, gen_params, key, *,
                 method: state_lib.Method, teacher_fn, batch: int) -> jax.Array:
  """Soft cross-entropy of the annotator's labels against the teacher's on
  `batch` generated images (both after `method.transform`, `[B, h, w, C]`)."""
  k_z, k_noise = jax.random.split(key)
  z = jax.random.normal(k_z, (batch, method.z_dim), jnp.float32)
  images, feats = method.gen_fn(gen_params, z, k_noise)
  _, target = teacher_fn(method, teacher_params, images, feats)
  _, probs = label_sources.annotator_labels(method, (ann_params, ann_stats), images, feats)
  return losses.distillation_cross_entropy(probs, jax.lax.stop_gradient(target))


def distill_step(ann_params, opt_state, ann_stats, teacher_params, gen_params, key, *,
                 method: state_lib.Method, teacher_fn, tx, batch: int):
  """One Adam step of `distill_loss`; returns (ann_params, opt_state, loss)."""
  loss, grads = jax.value_and_grad(distill_loss)(
      ann_params, ann_stats, teacher_params, gen_params, key, method=method,
      teacher_fn=teacher_fn, batch=batch)
  updates, opt_state = tx.update(grads, opt_state, ann_params)
  return optax.apply_updates(ann_params, updates), opt_state, loss


def distill_annotator(state: state_lib.TrainState, gen_params, teacher, *,
                      method: state_lib.Method, steps: int, lr: float, batch: int,
                      seed: int) -> tuple[state_lib.TrainState, list[float]]:
  """`state` with its annotator distilled from `teacher` (a LabelSource).

  Returns:
    (state, losses: the mean loss of each tenth of the steps).
  """
  tx = optax.adam(lr)
  step_fn = jax.jit(functools.partial(distill_step, method=method, teacher_fn=teacher.fn,
                                      tx=tx, batch=batch))
  params, opt_state = state.ann_params, tx.init(state.ann_params)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), _TAG)
  losses, window = [], []
  for i in range(steps):
    params, opt_state, loss = step_fn(params, opt_state, state.ann_stats, teacher.members[0],
                                      gen_params, jax.random.fold_in(key, i))
    window.append(loss)
    if len(window) == max(1, steps // 10) or i == steps - 1:
      losses.append(float(jnp.mean(jnp.stack(window))))
      window.clear()
      logging.info("warm start: distillation step %d/%d, loss %.4f", i + 1, steps, losses[-1])
  return state.replace(ann_params=params), losses


def apply(config, method: state_lib.Method, state: state_lib.TrainState, gen_params,
          teacher) -> state_lib.TrainState:
  """The configured warm start of a fresh phase-one state (`warm_start.*`)."""
  w = config.warm_start
  if w.segmenter:
    params, stats = teacher.members[0]
    state = state.replace(seg_params=params, seg_stats=stats or state.seg_stats)
  if w.distill_steps > 0:
    state, _ = distill_annotator(state, gen_params, teacher, method=method,
                                 steps=int(w.distill_steps), lr=float(w.lr),
                                 batch=int(w.batch), seed=int(config.seed))
  return state


def wanted(config) -> bool:
  """Whether the config asks for a warm start (it then needs a teacher)."""
  w = config.get("warm_start")
  return bool(w is not None and (w.distill_steps > 0 or w.segmenter))
