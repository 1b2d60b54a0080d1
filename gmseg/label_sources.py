"""Where phase two's labels come from: the annotator, or a control.

A label source turns generated images into soft labels. `downstream.generate`
draws the same latents, applies the same filters and writes the same set
whatever the source, so the controls differ from LAGM only in their labels:

  'annotator'      the trained annotator (LAGM; the paper's phase two);
                   beyond the paper, optionally with its logits shifted by a
                   per-class offset before the softmax (`logit_offset`: the
                   correction of the class weights' prior shift);
  'annotator_mean' beyond the paper: the mean of several annotator
                   snapshots' soft labels (an ensemble along phase one);
  'self_training'  a segmenter trained on the k labelled images alone labels
                   the generated images (pseudo-labels);
  'label_free'     the untrained annotator LAGM starts from (phase one's
                   initialisation for the config's seed): pre-training on
                   generated images with labels that owe nothing to matching;
  'mixture'        beyond the paper: a weighted mean of other sources' soft
                   labels (e.g. the annotator and the self-training model).

`LabelSource.fn(method, params, images, feats) -> (x, probs)`: `images` are
the generator's `[B, H, W, 3]` in [-1, 1], `feats` its features; `x` the
images as the downstream segmenter sees them (after `method.transform`) and
`probs` `[B, h, w, C]` their soft labels. `members` are the parameter sets
`fn` runs with: the first labels, all of them score disagreement (the
'ensemble' filter).
"""
import dataclasses
import functools
import pathlib
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from gmseg import build
from gmseg import checkpoint
from gmseg import restore
from gmseg import state as state_lib
from gmseg import steps

SOURCES = ("annotator", "annotator_mean", "self_training", "label_free", "mixture")


@dataclasses.dataclass(frozen=True)
class LabelSource:
  """A label source (see the module docstring).

  Attributes:
    name: one of SOURCES (recorded in generation.json); a mixture's names
      its parts and weights.
    fn: `(method, params, images, feats) -> (x, probs)`; jitted by the caller.
    members: tuple of parameter pytrees for `fn` (the first labels).
    annotator_steps: the annotator snapshots of `members` (annotator source
      only; [] otherwise), for generation.json.
  """
  name: str
  fn: Callable
  members: tuple
  annotator_steps: list = dataclasses.field(default_factory=list)


def _transform(method: state_lib.Method, images, probs):
  return (images, probs) if method.transform is None else method.transform(images, probs)


def annotator_labels(method: state_lib.Method, params, images, feats, offset=None):
  """The annotator's soft labels; `params` = (ann_params, ann_stats).

  `offset`: optional `[C]` subtracted from the logits before the softmax
  (see `logit_offset`).
  """
  logits, _ = steps.annotate(method, params[0], params[1], feats, images.shape[1:3],
                             train=False)
  if offset is not None:
    logits = logits - jnp.asarray(offset, logits.dtype)
  return _transform(method, images, jax.nn.softmax(logits, axis=-1))


def logit_offset(config) -> Optional[np.ndarray]:
  """`[C]` tau * log(matching.class_weights), tau = `downstream.logit_adjust`;
  None when tau = 0 (the paper's labels).

  Why: the target gradient is that of a loss whose class c weighs w_c, so the
  labels that match it best are those of a class prior multiplied by w_c
  (small parts painted larger). Subtracting log w_c from the logits divides
  that prior back out (logit adjustment, Menon et al. 2021) at tau = 1.
  """
  tau = float(config.downstream.get("logit_adjust", 0.0))
  if tau == 0.0:
    return None
  weights = tuple(config.matching.get("class_weights", ()))
  if tau < 0:
    raise ValueError(f"downstream.logit_adjust={tau}: use tau >= 0 (1 divides the class "
                     "weights' prior out of the labels, 0 is off).")
  if not weights:
    raise ValueError("downstream.logit_adjust corrects the labels for matching.class_weights, "
                     "but the config has none: set downstream.logit_adjust=0.")
  if config.matching.get("class_weights_on", "labelled") != "labelled":
    raise ValueError("downstream.logit_adjust corrects the prior shift of class weights on "
                     "the labelled loss alone; with matching.class_weights_on="
                     f"{config.matching.class_weights_on!r} both losses carry them and "
                     "there is none: set downstream.logit_adjust=0.")
  return tau * np.log(np.asarray(weights, np.float32))


def annotator_name(offset=None, base: str = "annotator") -> str:
  """The recorded name of an annotator source ('annotator' without offset)."""
  if offset is None:
    return base
  return f"{base}(logits - [{', '.join(f'{v:.4g}' for v in np.asarray(offset))}])"


def restore_annotator(ckpt_dir, step: int) -> tuple[Any, Any]:
  """(ann_params, ann_stats) of a phase-one snapshot."""
  params = checkpoint.restore_subtree(ckpt_dir, ("ann_params",), step=step)
  stats = restore.restore_stats(ckpt_dir, ("ann_stats",), step)
  return params, stats


def annotator(ckpt_dir, annotator_steps, offset=None) -> LabelSource:
  """The trained annotator at `annotator_steps` (the first labels); `offset`
  (`[C]` or None) is subtracted from its logits (`logit_offset`)."""
  members = tuple(restore_annotator(ckpt_dir, s) for s in annotator_steps)
  fn = annotator_labels if offset is None else functools.partial(annotator_labels,
                                                                 offset=offset)
  return LabelSource(annotator_name(offset), fn, members,
                     [int(s) for s in annotator_steps])


def annotator_mean(ckpt_dir, annotator_steps, offset=None) -> LabelSource:
  """The mean soft labels of the annotator snapshots `annotator_steps`
  (one member holding them all, so the filters see one labeller); `offset` as
  in `annotator`."""
  snapshots = tuple(restore_annotator(ckpt_dir, s) for s in annotator_steps)

  def fn(method, member, images, feats):
    outs = [annotator_labels(method, m, images, feats, offset) for m in member]
    return outs[0][0], sum(p for _, p in outs) / len(outs)

  return LabelSource(annotator_name(offset, "annotator_mean"), fn, (snapshots,),
                     [int(s) for s in annotator_steps])


def label_free(config, gen) -> LabelSource:
  """The untrained annotator: phase one's initial annotator for `config.seed`
  (`state.init_state`), i.e. where LAGM starts."""
  method = build.method(config, gen)
  state = jax.jit(lambda p: state_lib.init_state(method, p, config.seed))(gen.params)
  return LabelSource("label_free", annotator_labels, ((state.ann_params, state.ann_stats),))


def segmenter(config, seg_workdir, step: Union[str, int] = "latest",
              name: str = "self_training") -> LabelSource:
  """A phase-one-layout segmenter (e.g. the supervised k-shot baseline in
  `seg_workdir`) labels the generated images it would see downstream.

  Its softmax on `x` (the transformed images) is the soft label.
  """
  module, params, stats = restore.restore_segmenter(pathlib.Path(seg_workdir), "annotate",
                                                    step, config)

  def fn(method, member, images, feats):
    del feats
    # The transform is joint; the labels it would move are the segmenter's own.
    dummy = jnp.zeros(images.shape[:3] + (build.num_classes(config),), images.dtype)
    x, _ = _transform(method, images, dummy)
    logits, _ = steps.apply_model(module, member[0], member[1], x, train=False)
    return x, jax.nn.softmax(logits, axis=-1)

  return LabelSource(name, fn, ((params, stats),))


def mixture(sources, weights) -> LabelSource:
  """The weighted mean of `sources`' soft labels (weights sum to 1).

  One member holding every source's first member, so the filters see one
  labeller; the images are the first source's (every source applies the
  same `method.transform`).
  """
  sources, weights = tuple(sources), tuple(float(w) for w in weights)
  if len(sources) != len(weights) or not sources:
    raise ValueError(f"mixture: {len(sources)} sources but {len(weights)} weights.")
  if min(weights) < 0 or abs(sum(weights) - 1.0) > 1e-6:
    raise ValueError(f"mixture weights {weights} must be >= 0 and sum to 1.")

  def fn(method, member, images, feats):
    outs = [src.fn(method, m, images, feats) for src, m in zip(sources, member)]
    return outs[0][0], sum(w * p for w, (_, p) in zip(weights, outs))

  steps_ = [s for src in sources for s in src.annotator_steps]
  # The weights are in the name, so generation.json tells mixtures apart.
  name = "mixture(" + " + ".join(f"{w:g}*{src.name}" for src, w in zip(sources, weights)) + ")"
  return LabelSource(name, fn, (tuple(src.members[0] for src in sources),), steps_)
