"""The training state pytree and the static description of one method setup.

`TrainState` is everything that changes during training (checkpointed).
`Method` is everything static the steps need (modules, optimisers, matched
parameter paths, batch sizes); steps close over it with functools.partial, so
it is never traced.
"""
import dataclasses
from typing import Callable, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gmseg import matching
from gmseg.models.generators import GeneratorFn
from gmseg.typing import Params, PyTree

GRAD_PATHS = ("batch", "per_example")
SEG_BN = ("across_batch", "per_example")
SEG_STATS = ("frozen", "update")
WEIGHTS_ON = ("labelled", "both")
AUGMENT = ("none", "siamese", "siamese_train")
COMPUTE_DTYPES = ("float32", "bfloat16")
# jax.checkpoint policies by name (steps.REMAT_POLICIES holds the objects).
REMAT = ("none", "nothing_saveable", "dots_saveable",
         "dots_with_no_batch_dims_saveable", "everything_saveable")

# (images [B,H,W,3], probs [B,H,W,C]) -> the same, resized/cropped jointly.
PairTransform = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@flax.struct.dataclass
class TrainState:
  """Annotator and segmenter parameters, optimiser states, norm statistics.

  `rng` is a raw uint32[2] key; per-step keys are `fold_in(rng, step)`, so a
  resumed run repeats the randomness of an uninterrupted one. `*_stats` hold
  BatchNorm running statistics (`{}` for GroupNorm models).
  """
  step: jax.Array
  rng: jax.Array
  ann_params: Params
  ann_stats: PyTree
  ann_opt_state: optax.OptState
  seg_params: Params
  seg_stats: PyTree
  seg_opt_state: optax.OptState


@dataclasses.dataclass(frozen=True)
class Method:
  """Static pieces of one gradient-matching setup.

  Attributes:
    gen_fn: generator `(params, z, rng) -> (images, features)`.
    z_dim: latent size.
    annotator: Flax module `(features, train) -> logits`.
    segmenter: Flax module `(images, train) -> logits`.
    ann_tx, seg_tx: optax optimisers of A and S.
    matched: segmenter parameter paths whose gradients are matched.
    metric, row_reduction, tensor_reduction, vectors: see
      `matching.matching_distance`.
    syn_batch: synthetic samples per device in an annotator step.
    seg_batch: synthetic samples per device in a segmenter step.
    transform: optional joint transform of (images, soft labels) before S.
    grad_path: how the annotator step takes S's mean gradients: 'batch' (one
      `jax.grad` of the batch loss; exact, the fast path) or 'per_example'
      (`vmap(grad)`, then the mean: the explicit primitive).
    seg_bn: S's BatchNorm in the annotator step: 'across_batch' (statistics
      over the whole labelled / synthetic batch, the paper's code) or
      'per_example' (each example normalised alone). No effect on GroupNorm.
    ann_step_seg_stats: S's BatchNorm running statistics in the annotator
      step: 'frozen' (kept) or 'update' (moved by the labelled, then the
      synthetic forward pass, as the paper's code does in training mode).
    class_weights: per-class weights of the labelled loss that gives the
      target gradient (beyond the paper; () = none, the paper).
    class_weights_on: 'labelled' (only that loss is weighted) or 'both' (the
      synthetic soft cross-entropy in the matching is weighted alike).
    anchor: optional teacher `(images, features) -> soft labels [B, h, w, C]`
      (after `transform`), closed over with its parameters (beyond the paper).
    anchor_weight: the annotator's loss is the matching distance plus
      `anchor_weight` times the soft cross-entropy of its labels against
      `anchor`'s on the same samples (0 = the paper's loss).
    augment: 'none' (the paper) or 'siamese' (beyond the paper, gmseg.views:
      the annotator step sees the labelled and the synthetic batch through
      one random flip / zoom / colour view per iteration); 'siamese_train'
      also shows the segmenter step's batch through a view of its own.
    augment_zoom: the views' zoom range (s < 1 zooms out).
    compute_dtype: dtype of the training steps' forward passes of G, A and
      S ('float32' | 'bfloat16'). Parameters, optimiser states, losses,
      gradients and the matching distance stay float32: parameters and
      inputs are cast at each model call, outputs cast back.
    remat: `jax.checkpoint` policy of S's forward pass inside the annotator
      step ('none' = no rematerialisation; else a `jax.checkpoint_policies`
      name): S's activations are recomputed in the backward passes instead
      of stored.
  """
  gen_fn: GeneratorFn
  z_dim: int
  annotator: nn.Module
  segmenter: nn.Module
  ann_tx: optax.GradientTransformation
  seg_tx: optax.GradientTransformation
  matched: tuple[str, ...]
  metric: str = "cosine"
  row_reduction: str = "mean"
  tensor_reduction: str = "mean"
  vectors: str = "zero"
  syn_batch: int = 2
  seg_batch: int = 2
  transform: Optional[PairTransform] = None
  grad_path: str = "batch"
  seg_bn: str = "across_batch"
  ann_step_seg_stats: str = "frozen"
  class_weights: tuple[float, ...] = ()
  class_weights_on: str = "labelled"
  anchor: Optional[Callable[[jax.Array, tuple], jax.Array]] = None
  anchor_weight: float = 0.0
  augment: str = "none"
  augment_zoom: tuple[float, float] = (1.0, 1.0)
  compute_dtype: str = "float32"
  remat: str = "none"

  def __post_init__(self):
    for name, allowed in (("grad_path", GRAD_PATHS), ("seg_bn", SEG_BN),
                          ("ann_step_seg_stats", SEG_STATS),
                          ("compute_dtype", COMPUTE_DTYPES), ("remat", REMAT),
                          ("class_weights_on", WEIGHTS_ON), ("augment", AUGMENT)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name}={getattr(self, name)!r}; use one of {allowed}.")
    if self.ann_step_seg_stats == "update" and (
        self.seg_bn != "across_batch" or self.grad_path != "batch"):
      raise ValueError(
          "ann_step_seg_stats='update' moves S's running statistics by the batch "
          "statistics of the whole labelled / synthetic batch; it needs "
          "seg_bn='across_batch' and grad_path='batch' (got seg_bn="
          f"{self.seg_bn!r}, grad_path={self.grad_path!r}).")
    if self.anchor_weight < 0 or (self.anchor_weight > 0 and self.anchor is None):
      raise ValueError(f"anchor_weight={self.anchor_weight} needs anchor_weight >= 0 and, "
                       "when > 0, a teacher `anchor` (set matching.anchor=0 for none).")


def init_variables(module: nn.Module, rng: jax.Array, *inputs) -> tuple[Params, PyTree]:
  """Initialises a module; returns (params, batch_stats or {})."""
  variables = module.init({"params": rng, "dropout": rng}, *inputs, train=False)
  return variables["params"], variables.get("batch_stats", {})


def init_state(method: Method, gen_params: Params, seed: int) -> TrainState:
  """Builds the initial state for `method` on its generator.

  Shapes come from tracing the generator (and `method.transform`) once, so
  the annotator and segmenter are initialised for exactly what they will see.

  Args:
    gen_params: the generator's parameters.
    seed: base seed; its key is split for A, S and the per-step randomness.
  """
  images, feats = _example_inputs(method, gen_params)
  k_a, k_s, k_run = jax.random.split(jax.random.PRNGKey(seed), 3)
  ann_params, ann_stats = init_variables(method.annotator, k_a, feats)
  seg_params, seg_stats = init_variables(method.segmenter, k_s, images)
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=k_run,
      ann_params=ann_params, ann_stats=ann_stats,
      ann_opt_state=method.ann_tx.init(ann_params),
      seg_params=seg_params, seg_stats=seg_stats,
      seg_opt_state=method.seg_tx.init(seg_params))


def _example_inputs(method: Method, gen_params):
  """Zero (images as S sees them `[1, h, w, 3]`, generator features) of the
  shapes one generator sample gives (traced, not run)."""
  def example(gen_params):
    z = jnp.zeros((1, method.z_dim), jnp.float32)
    images, feats = method.gen_fn(gen_params, z, jax.random.PRNGKey(0))
    probs = jnp.zeros(images.shape[:3] + (method.annotator.num_classes,))
    if method.transform is not None:
      images, probs = method.transform(images, probs)
    return images, feats

  shapes = jax.eval_shape(example, gen_params)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def fresh_segmenter(method: Method, gen_params, key: jax.Array):
  """A newly initialised phase-one segmenter: (params, batch_stats, optimiser
  state) from `key` (for restarts of S along phase one)."""
  images, _ = _example_inputs(method, gen_params)
  params, stats = init_variables(method.segmenter, key, images)
  return params, stats, method.seg_tx.init(params)


def segmenter_state(module: nn.Module, rng: jax.Array, image_shape, tx,
                    load: Optional[Callable[[Params, PyTree], tuple[Params, PyTree]]] = None,
                    ) -> TrainState:
  """A TrainState holding only a fresh segmenter (annotator fields empty).

  The pytree type of phase one, so baselines and phase two checkpoint and
  restore like it (`restore.restore_segmenter`).

  Args:
    rng: split into the initialisation key and the run's base key.
    image_shape: `(height, width, 3)` of the training images.
    tx: the segmenter's optimiser.
    load: maps the fresh (params, batch_stats) to the starting ones, e.g. a
      pretrained backbone: `functools.partial(build.pretrained_segmenter,
      config.segmenter)` (the caller knows the config; this module does not).
  """
  k_init, k_run = jax.random.split(rng)
  params, stats = init_variables(module, k_init, jnp.zeros((1,) + tuple(image_shape)))
  if load is not None:
    params, stats = load(params, stats)
  return TrainState(step=jnp.zeros((), jnp.int32), rng=k_run, ann_params={},
                    ann_stats={}, ann_opt_state=(), seg_params=params,
                    seg_stats=stats, seg_opt_state=tx.init(params))


def make_optimizer(name: str, lr: float, momentum: float = 0.9,
                   b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
  """The paper's SGD (lr 1e-3, momentum 0.9) or Adam."""
  if name == "sgd":
    return optax.sgd(lr, momentum=momentum or None)
  if name == "adam":
    return optax.adam(lr, b1=b1, b2=b2)
  raise ValueError(f"Unknown optimizer {name!r}; use 'sgd' or 'adam'.")


class WeightAverage(NamedTuple):
  """State of `with_weight_average`: the inner optimiser's and the average.

  Checkpoints save it as {'inner': ..., 'average': ...}, so the average of a
  saved S is the subtree ('seg_opt_state', 'average') (restore.restore_segmenter).
  """
  inner: optax.OptState
  average: Params


def with_weight_average(tx: optax.GradientTransformation, decay: float
                        ) -> optax.GradientTransformation:
  """`tx` that also keeps an exponential moving average of the weights.

  After each update, average <- decay * average + (1 - decay) * new weights;
  `init(params)` starts it at `params`. The updates are `tx`'s, bitwise: the
  average never feeds back into training. Held in the optimiser state, it is
  checkpointed, resumed and replicated over devices with it (the weights are
  the same on every device, so is the average). Beyond the paper (used by
  `downstream.finetune_ema`).

  Args:
    decay: in [0, 1); e.g. 0.995 weighs the last ~200 updates.
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f"Weight-average decay {decay}: must be in [0, 1) (e.g. 0.995 weighs "
                     "the last ~200 updates).")

  def init(params):
    # A copy: a train step that donates the state may not see one buffer twice.
    return WeightAverage(tx.init(params), jax.tree.map(jnp.copy, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("with_weight_average needs the parameters in update(...).")
    updates, inner = tx.update(updates, state.inner, params)
    new = optax.apply_updates(params, updates)
    average = jax.tree.map(lambda a, p: decay * a + (1.0 - decay) * p, state.average, new)
    return updates, WeightAverage(inner, average)

  return optax.GradientTransformation(init, update)


def matched_paths(segmenter_params: Params, selection: str,
                  family: str | None = None) -> tuple[str, ...]:
  """Paths selected by a preset name or `re:<regex>` (see gmseg.matching)."""
  return matching.select_paths(segmenter_params,
                               matching.resolve_pattern(selection, family))
