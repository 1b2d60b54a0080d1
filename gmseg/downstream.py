"""Phase two: a synthetic labelled set from G + A, then a fresh segmenter on it.

`generate` restores the trained annotator from `<workdir>/checkpoints`,
samples `downstream.num_images` latents, labels each generated image with the
argmax of the annotator's softmax (after `gen_transform`, as the segmenter
saw them in phase one) and keeps the per-pixel confidence (max probability).
Optional filters drop images:

  'confidence': images whose mean max-probability is below
                `downstream.min_confidence`.
  'ensemble':   DatasetGAN's uncertainty filter. Several annotators (the chosen
                snapshot and the latest other saved ones, `downstream.
                ensemble_size` in all when the config has that key, else every
                saved one) label the same images; an image's uncertainty is
                the mean over pixels of the Jensen-Shannon divergence of their
                predictions, H(mean_k p_k) - mean_k H(p_k). The `keep_fraction`
                least uncertain images are kept.
  'gradient':   beyond the paper, per-example gradients put to work: at the
                phase-one segmenter S of the chosen snapshot, each image's
                gradient (hard cross-entropy on its labels, matched
                parameters) is compared with the gradient of the k labelled
                images by the method's own distance (per-row cosine); the
                `keep_fraction` images that agree best are kept.

Labels come from a label source (gmseg.label_sources): by default the
chosen annotator; the controls ('self_training': a segmenter trained on the
k labelled images; 'label_free': the untrained annotator) label the same
latents through the same code, so only the labels differ. The 'ensemble'
and 'gradient' filters need the annotator's snapshots. The set is written as the tfds
dataset `gmseg_synthetic` (gmseg.data.synthetic) in `<workdir>/downstream/
dataset`, with `generation.json` (what was generated, kept, and from which
annotator steps) and `grids/dataset.png` (kept examples: image, labels,
overlay, pixels under 0.9 confidence in magenta; `grids/dropped.png` for the
filtered ones).

`train` fits a fresh segmenter (`downstream.segmenter`, see
`restore.segmenter_config`) with hard cross-entropy on the set: optimiser
`downstream.optim`, batch `downstream.batch`, `downstream.epochs` epochs,
each a permutation seeded by (seed, epoch) with the last partial batch
dropped. After every epoch it scores `data.val_split` (and `data.test_split`
when different), writes metrics to `<workdir>/downstream/metrics.jsonl` and
TensorBoard, and checkpoints (checkpoint step = epoch; the latest 20 plus the
best validation FG-mIoU are kept, as the 5-fold CV protocol needs the last
20). A restarted `train` resumes from the latest epoch.

Devices and hosts: `downstream.batch` is the global batch. With several
devices the step is pmapped (gmseg.parallel.TrainStep; gradients, BatchNorm
running averages and metrics pmeaned, each device's BatchNorm normalising
with its own rows); every host reads and transforms the same global batch,
as one host would, and feeds its slice. Only process 0 writes metrics and
config.json; every process takes part in checkpoint saves.
"""
import functools
import json
import pathlib
import shutil
from typing import Optional, Union

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmseg import build
from gmseg import checkpoint
from gmseg import config_base
from gmseg import evaluate
from gmseg import label_sources
from gmseg import losses
from gmseg import matching
from gmseg import metric_writers
from gmseg import parallel
from gmseg import profiling
from gmseg import progress as progress_lib
from gmseg import restore
from gmseg import state as state_lib
from gmseg import steps
from gmseg import viz
from gmseg import workdir as workdir_lib
from gmseg.data import pipeline
from gmseg.data import synthetic

FILTERS = ("none", "confidence", "ensemble", "gradient")
KEEP_SNAPSHOTS = 20   # the 5-fold CV protocol uses the last 20 snapshots
_SHARD_IMAGES = 512   # images per staging shard (bounds host memory)
_LATENT_TAG = 0x5E7   # folded into the seed: phase-two latents differ from phase one's
_GRID_EXAMPLES = 8


def directory(workdir) -> pathlib.Path:
  """`<workdir>/downstream`."""
  return pathlib.Path(workdir) / "downstream"


def dataset_dir(workdir) -> pathlib.Path:
  """The tfds data_dir of the synthetic set."""
  return directory(workdir) / "dataset"


# ---------------------------------------------------------------- generation


def _js_divergence(probs: jax.Array) -> jax.Array:
  """Jensen-Shannon divergence of an ensemble, per pixel.

  Args:
    probs: `[K, B, H, W, C]` member probabilities.
  Returns:
    `[B, H, W]` H(mean_k p_k) - mean_k H(p_k) (nats; 0 when all agree).
  """
  def entropy(p):
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-12)), 0.0), axis=-1)
  return entropy(jnp.mean(probs, axis=0)) - jnp.mean(entropy(probs), axis=0)


def sample_batch(gen_params, members, key, batch_index, *, method: state_lib.Method,
                 batch: int, label_fn=label_sources.annotator_labels) -> dict:
  """One batch of generated images labelled by the first of `members`.

  Latents and generator noise come from `fold_in(key, batch_index)`, so image
  i of the set depends only on (key, i // batch, i % batch), whatever labels it.

  Args:
    members: tuple of parameters for `label_fn` (the annotator's: (ann_params,
      ann_stats)); the first labels, all of them score disagreement (one
      member: score = mean confidence).
    label_fn: `(method, params, images, feats) -> (x, probs [B, H, W, C])`, a
      `label_sources.LabelSource.fn`.
  Returns:
    image uint8 `[B, H, W, 3]`, label uint8 `[B, H, W]`, confidence uint8
    `[B, H, W]` (max prob * 255), mean_confidence `[B]`, uncertainty `[B]`
    (mean Jensen-Shannon divergence; 0 with one member).
  """
  k_z, k_noise = jax.random.split(jax.random.fold_in(key, batch_index))
  z = jax.random.normal(k_z, (batch, method.z_dim), jnp.float32)
  images, feats = method.gen_fn(gen_params, z, k_noise)
  member_probs = []
  for params in members:
    x, probs = label_fn(method, params, images, feats)
    member_probs.append(probs)
  probs = member_probs[0]
  conf = jnp.max(probs, axis=-1)
  uncertainty = (jnp.mean(_js_divergence(jnp.stack(member_probs)), axis=(1, 2))
                 if len(member_probs) > 1 else jnp.zeros((batch,)))
  return {
      "image": jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8),
      "label": jnp.argmax(probs, axis=-1).astype(jnp.uint8),
      "confidence": jnp.round(conf * 255.0).astype(jnp.uint8),
      "mean_confidence": jnp.mean(conf, axis=(1, 2)),
      "uncertainty": uncertainty,
  }


def _ensemble_steps(ckpt_dir, main_step: int, size: int) -> list[int]:
  """The main step first, then the latest other saved steps (`size` in all; 0 = all)."""
  ckpt = checkpoint.Checkpointer(ckpt_dir, async_save=False)
  saved = ckpt.all_steps()
  ckpt.close()
  others = [s for s in reversed(saved) if s != main_step]
  chosen = [main_step] + (others if size <= 0 else others[:size - 1])
  if len(chosen) < 2:
    raise ValueError(f"downstream.filter='ensemble' needs at least 2 annotator checkpoints; "
                     f"{ckpt_dir} has {saved}. Keep more (train.keep) or use filter="
                     "'confidence' / 'none'.")
  return chosen


def gradient_distances(seg_params, seg_stats, images, labels, g_real, *,
                       method: state_lib.Method) -> jax.Array:
  """Per-example gradient-matching distance to the labelled-set gradient.

  Args:
    images: uint8 `[B, H, W, 3]` generated images (as the set stores them).
    labels: `[B, H, W]` their class ids.
    g_real: flat dict path -> gradient of S's hard cross-entropy on the
      labelled images (see `steps.labelled_grads`).
  Returns:
    `[B]` distances (the method's metric; lower = agrees better).
  """
  x = images.astype(jnp.float32) / 127.5 - 1.0
  matched, rest = matching.split(seg_params, method.matched)

  def example_loss(m, image, label):
    logits, _ = steps.apply_model(method.segmenter, matching.merge(m, rest), seg_stats,
                                  image[None], train=False)
    return losses.hard_cross_entropy(logits, label[None])

  g = matching.per_example_grads(example_loss, matched, x, labels.astype(jnp.int32))
  dist = functools.partial(matching.matching_distance, metric=method.metric,
                           row_reduction=method.row_reduction,
                           tensor_reduction=method.tensor_reduction, vectors=method.vectors)
  return jax.vmap(lambda gi: dist(gi, g_real))(g)


def _labelled_target(config, method, ckpt_dir, step: int):
  """(phase-one S params, stats, labelled-set gradient) at annotator snapshot `step`."""
  seg_params = checkpoint.restore_subtree(ckpt_dir, ("seg_params",), step=step)
  seg_stats = restore.restore_stats(ckpt_dir, ("seg_stats",), step)
  data = build.split_arrays(config, config.data.labelled_split, limit=config.data.num_labelled)
  matched, rest = matching.split(seg_params, method.matched)

  def loss(m):  # the mean over every labelled pixel, as the method's target
    logits, _ = steps.apply_model(method.segmenter, matching.merge(m, rest), seg_stats,
                                  jnp.asarray(data["image"]), train=False)
    return losses.hard_cross_entropy(logits, jnp.asarray(data["label"], jnp.int32))
  return seg_params, seg_stats, jax.jit(jax.grad(loss))(matched)


def _select(filter_name: str, d, mean_conf: np.ndarray, uncertainty: np.ndarray) -> np.ndarray:
  """Boolean keep mask over the generated images ('ensemble' and 'gradient':
  the `keep_fraction` lowest `uncertainty`, which holds their score)."""
  n = len(mean_conf)
  if filter_name == "none":
    return np.ones(n, bool)
  if filter_name == "confidence":
    return mean_conf >= d.min_confidence
  if not 0.0 < d.keep_fraction <= 1.0:
    raise ValueError(f"downstream.keep_fraction={d.keep_fraction}: use a fraction in (0, 1].")
  k = max(1, int(round(n * d.keep_fraction)))
  # Stable sort: ties keep the earlier latent, so the result is deterministic.
  order = np.argsort(uncertainty, kind="stable")
  keep = np.zeros(n, bool)
  keep[order[:k]] = True
  return keep


def _settings(config, annotator_steps, source_name: str = "annotator") -> dict:
  d = config.downstream
  return {"label_source": source_name, "num_images": int(d.num_images), "filter": d.filter,
          "min_confidence": float(d.min_confidence), "keep_fraction": float(d.keep_fraction),
          "seed": int(config.seed), "annotator_steps": [int(s) for s in annotator_steps],
          "gen_transform": config.gen_transform, "resolution": int(config.data.resolution),
          "gen_resize": config.get("gen_resize", "bilinear")}


def generate(config, workdir, annotator_step: Union[str, int] = "best",
             source: Optional[label_sources.LabelSource] = None) -> pathlib.Path:
  """Writes the synthetic set; returns its tfds data_dir.

  A set already generated with the same settings and annotator steps is
  reused (so a restarted `run` does not regenerate); different settings are
  an error, since downstream checkpoints would belong to the old set.

  Args:
    config: the run's config (`downstream.*`, generator, annotator).
    workdir: the annotation run's directory (`checkpoints/` inside; with
      another `source`, any directory: the set goes to its `downstream/`).
    annotator_step: 'best' (validation FG-mIoU), 'latest' or a saved step
      (annotator source only).
    source: the labels (gmseg.label_sources); None = the annotator of
      `workdir` at `annotator_step`.

  Devices and hosts: with several devices each labels whole batches of its
  own (`_parallel_batches`: image i still comes from batch i // gen_batch's
  latents, so the set is a single device's); with several processes each
  writes its shards of the staging folder (on a filesystem every host sees,
  as the checkpoints need) and process 0 filters and builds the set.
  """
  d = config.downstream
  if d.filter not in FILTERS:
    raise ValueError(f"downstream.filter={d.filter!r}: use one of {FILTERS}.")
  if d.num_images < 1 or d.gen_batch < 1:
    raise ValueError(f"downstream.num_images={d.num_images} and gen_batch={d.gen_batch} "
                     "must be positive.")
  out, data_dir = directory(workdir), dataset_dir(workdir)
  ckpt_dir = restore.checkpoint_dir(workdir, "annotate")
  offset = None  # the annotator's logit adjustment; a given source carries its own labels
  if source is None:
    offset = label_sources.logit_offset(config)
    main_step = restore.resolve_step(ckpt_dir, annotator_step)
    annotator_steps = [main_step]
    if d.filter == "ensemble":
      annotator_steps = _ensemble_steps(ckpt_dir, main_step, int(d.get("ensemble_size", 0)))
  elif d.filter in ("ensemble", "gradient"):
    raise ValueError(f"downstream.filter={d.filter!r} needs the annotator's phase-one "
                     f"snapshots; the {source.name!r} label source has none: use filter="
                     "'none' or 'confidence'.")
  else:
    annotator_steps = list(source.annotator_steps)
  settings = _settings(config, annotator_steps, source.name if source is not None else
                       label_sources.annotator_name(offset))
  info_path = out / "generation.json"
  if synthetic.is_prepared(data_dir) and info_path.is_file():
    old = json.loads(info_path.read_text())
    old.setdefault("label_source", "annotator")  # sets written before label sources
    if {k: old.get(k) for k in settings} != settings:
      raise ValueError(f"{data_dir} holds a synthetic set generated with {old} but the config asks "
                       f"for {settings}: delete {out} (or use another workdir) to regenerate.")
    logging.info("Reusing the synthetic set in %s (%d images).", data_dir, old["num_kept"])
    return data_dir
  hosts, is_main = jax.process_count(), jax.process_index() == 0
  if data_dir.exists() and is_main:
    shutil.rmtree(data_dir)  # a partial earlier attempt

  gen = build.generator(config)
  method = build.method(config, gen)
  if source is None:
    source = label_sources.annotator(ckpt_dir, annotator_steps, offset)
  members = source.members
  sample = jax.jit(functools.partial(sample_batch, method=method, batch=int(d.gen_batch),
                                     label_fn=source.fn))
  if d.filter == "gradient":
    seg_params, seg_stats, g_real = _labelled_target(config, method, ckpt_dir, main_step)
    grad_dist = jax.jit(functools.partial(gradient_distances, method=method))
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _LATENT_TAG)

  staging = out / "staging"
  if staging.exists() and is_main:
    shutil.rmtree(staging)
  parallel.sync_hosts("gmseg_generate_start")  # no-op with one process
  staging.mkdir(parents=True, exist_ok=True)
  n, b = int(d.num_images), int(d.gen_batch)
  num_batches = -(-n // b)
  batches_per_shard = max(1, _SHARD_IMAGES // b)
  shards, buffer = [], []
  mean_conf, uncertainty = [], []
  prog = progress_lib.Progress(num_batches, log=is_main)
  # Hosts write their own shards (one folder: a filesystem all hosts share,
  # as the checkpoints need); process 0 gathers and builds the set.
  shard_prefix = "shard_" if hosts == 1 else f"shard_h{jax.process_index():04d}_"
  gradient_fn = None
  if d.filter == "gradient":
    gradient_fn = lambda images, labels: np.asarray(grad_dist(  # pylint: disable=g-long-lambda
        seg_params, seg_stats, images, labels, g_real))
  if parallel.is_data_parallel():
    batches = _parallel_batches(gen.params, members, key, num_batches, method=method, batch=b,
                                label_fn=source.fn,
                                target=(seg_params, seg_stats, g_real) if gradient_fn else None)
    gradient_fn = None  # computed on the devices with each batch
  else:  # one device: the batches one by one, as before generation was data-parallel
    batches = ((i, jax.device_get(sample(gen.params, members, key, i)))
               for i in range(num_batches))

  def flush():
    arrays = {k: np.concatenate([x[k] for x in buffer]) for k in buffer[0]}
    name = f"{shard_prefix}{len(shards):05d}.npz"
    np.savez(staging / name, **arrays)
    shards.append(name)
    buffer.clear()

  logging.info("Generating %d images labelled by %s %s.", n, source.name, annotator_steps)
  for i, out_batch in batches:
    real = min(b, n - i * b)  # the last batch is generated whole and trimmed
    out_batch = {k: v[:real] for k, v in out_batch.items()}
    if gradient_fn is not None:  # stored where the ensemble keeps its uncertainty
      out_batch["uncertainty"] = gradient_fn(out_batch["image"], out_batch["label"])
    out_batch["index"] = np.arange(i * b, i * b + real)
    buffer.append(out_batch)
    mean_conf.append(out_batch["mean_confidence"])
    uncertainty.append(out_batch["uncertainty"])
    if len(buffer) == batches_per_shard:
      flush()
    prog.update(i + 1)
  if buffer:
    flush()
  if hosts > 1:
    parallel.sync_hosts("gmseg_generate_shards")
    if not is_main:  # process 0 filters, builds and writes the set
      parallel.sync_hosts("gmseg_generate_built")
      return data_dir
    shards, mean_conf, uncertainty = _gather_scores(staging, n)
  else:
    mean_conf, uncertainty = np.concatenate(mean_conf), np.concatenate(uncertainty)
  keep = _select(d.filter, d, mean_conf, uncertainty)
  if not keep.any():
    raise ValueError(
        f"The {d.filter!r} filter dropped all {n} images (mean confidence ranges "
        f"{mean_conf.min():.3f}..{mean_conf.max():.3f}, downstream.min_confidence="
        f"{d.min_confidence}): lower min_confidence or train the annotator longer.")
  score = uncertainty if d.filter in ("ensemble", "gradient") else mean_conf
  # The builder reads `score` from the shards: add it once keep/score are known.
  for name in shards:
    with np.load(staging / name) as data:
      arrays = dict(data)
    arrays["score"] = score[arrays["index"]].astype(np.float32)
    np.savez(staging / name, **arrays)
  (staging / synthetic.MANIFEST).write_text(json.dumps(
      {"shards": shards, "keep": np.flatnonzero(keep).tolist()}))
  synthetic.build(data_dir, staging)
  _write_grids(out / "grids", staging, shards, keep, viz.palette_for(config.class_names))
  shutil.rmtree(staging)

  info = dict(settings, num_generated=n, num_kept=int(keep.sum()),
              mean_confidence=float(mean_conf.mean()),
              kept_mean_confidence=float(mean_conf[keep].mean()),
              mean_uncertainty=float(uncertainty.mean()),
              kept_max_uncertainty=float(uncertainty[keep].max()))
  info_path.write_text(json.dumps(info, indent=2) + "\n")
  logging.info("Synthetic set: kept %d of %d images in %s.", info["num_kept"], n, data_dir)
  parallel.sync_hosts("gmseg_generate_built")
  return data_dir


def _parallel_batches(gen_params, members, key, num_batches: int, *, method, batch: int,
                      label_fn, target=None):
  """This host's generated batches, `sample_batch` pmapped over its devices.

  Round r labels global batches `parallel.work_indices(r)`, one whole batch
  of `batch` per device from `fold_in(key, index)`: the latents, noise and
  labels a single device draws for that index. Indices past the end are
  generated and dropped.

  Args:
    target: (seg_params, seg_stats, g_real) of the 'gradient' filter, whose
      distances then come with each batch as its `uncertainty`.
  Yields:
    (global batch index, host arrays of `sample_batch`), indices increasing.
  """
  p_sample = jax.pmap(functools.partial(sample_batch, method=method, batch=batch,
                                        label_fn=label_fn))
  r_gen, r_members, r_key = parallel.replicate((gen_params, members, key))
  if target is not None:
    p_grad = jax.pmap(functools.partial(gradient_distances, method=method))
    r_target = parallel.replicate(target)
  for r in range(-(-num_batches // jax.device_count())):
    indices = parallel.work_indices(r)
    outs = p_sample(r_gen, r_members, r_key, indices)
    if target is not None:  # on whole batches: each example's distance is its own
      outs["uncertainty"] = p_grad(r_target[0], r_target[1], outs["image"], outs["label"],
                                   r_target[2])
    outs = jax.device_get(outs)
    for j, i in enumerate(indices):
      if i < num_batches:
        yield int(i), {k: v[j] for k, v in outs.items()}


def _gather_scores(staging, n: int):
  """Every host's shard names, and mean confidence and uncertainty `[n]` by
  global image index, read from the shards in `staging`."""
  shards = sorted(p.name for p in staging.glob("shard_*.npz"))
  mean_conf, uncertainty = np.zeros(n, np.float32), np.zeros(n, np.float32)
  for name in shards:
    with np.load(staging / name) as data:
      mean_conf[data["index"]] = data["mean_confidence"]
      uncertainty[data["index"]] = data["uncertainty"]
  return shards, mean_conf, uncertainty


def _write_grids(grid_dir, staging, shards, keep, pal):
  """grids/dataset.png (first kept) and grids/dropped.png (first dropped, if any)."""
  picks = {True: [], False: []}
  for name in shards:
    with np.load(staging / name) as data:
      for i, index in enumerate(data["index"]):
        group = picks[bool(keep[index])]
        if len(group) < _GRID_EXAMPLES:
          group.append((data["image"][i], data["label"][i], data["confidence"][i]))
    if all(len(g) == _GRID_EXAMPLES for g in picks.values()):
      break
  for kept, fname in ((True, "dataset.png"), (False, "dropped.png")):
    if not picks[kept]:
      continue
    images, labels, conf = (np.stack(x) for x in zip(*picks[kept]))
    # label_grid reads only the max over the last axis: confidence as one "class".
    viz.save_png(grid_dir / fname, viz.label_grid(
        images, labels, probs=conf[..., None].astype(np.float32) / 255.0, pal=pal))


# ------------------------------------------------------------------ training


class _Mixer:
  """Appends `per_step` augmented labelled images to each synthetic batch."""

  def __init__(self, config, per_step: int):
    self.per_step, self.seed = per_step, int(config.seed)
    self._augment = pipeline.augmenter(config)
    labelled = build.split_arrays(config, config.data.labelled_split,
                                  limit=config.data.num_labelled)
    self.sampler = pipeline.Sampler({"image": labelled["image"], "label": labelled["label"]},
                                    per_step, self.seed)

  def __call__(self, data: dict, step: int) -> dict:
    extra = self._augment(self.sampler.batch(step), np.random.default_rng([self.seed, step, 1]))
    return {"image": np.concatenate([data["image"], extra["image"]]).astype(np.float32),
            "label": np.concatenate([data["label"], extra["label"].astype(data["label"].dtype)])}


def _mixer(config):
  d = config.downstream
  m = int(d.get("mix_labelled", 0))
  if m <= 0:
    return None
  if m >= int(d.batch):
    raise ValueError(f"downstream.mix_labelled={m} leaves no place for synthetic images in "
                     f"a batch of downstream.batch={d.batch}; use fewer.")
  return _Mixer(config, m)


def batch_transform(config):
  """How a phase-two batch is made from the synthetic images read for it.

  Returns `(transform, labelled_per_step)`: `transform(data, step)` augments
  the synthetic batch (`downstream.augment`: flip / zoom / colour jitter,
  `data.augment_zoom`; rng `[seed, step, 2]`), then appends the mixed labelled
  images (`downstream.mix_labelled`, augmented alike); `data` is
  {'image': float32 `[b, H, W, 3]`, 'label': uint8 `[b, H, W]`} and the
  output has `b + labelled_per_step` rows.
  """
  mix = _mixer(config)
  augment = pipeline.augmenter(config) if config.downstream.get("augment", False) else None
  seed = int(config.seed)

  def transform(data: dict, step: int) -> dict:
    if augment is not None:  # the mixer augments its labelled images itself
      data = augment(data, np.random.default_rng([seed, step, 2]))
    return mix(data, step) if mix else data

  return transform, (mix.per_step if mix else 0)


def _load_batch(source, indices) -> dict:
  examples = [source[int(i)] for i in indices]
  return {"image": np.stack([ex["image"] for ex in examples]).astype(np.float32) / 127.5 - 1.0,
          "label": np.stack([ex["label"][..., 0] for ex in examples])}


def init_state(config, image_shape, tx) -> state_lib.TrainState:
  """A TrainState holding only a fresh downstream segmenter (annotator fields empty).

  The same pytree type as phase one, so `restore.restore_segmenter` reads
  both phases' checkpoints the same way.

  Args:
    image_shape: `(height, width, 3)` of the synthetic images.
  """
  module = restore.segmenter_module(config, "downstream")
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), _LATENT_TAG + 1)
  load = functools.partial(build.pretrained_segmenter,
                           restore.segmenter_config(config, "downstream"))
  return state_lib.segmenter_state(module, rng, image_shape, tx, load)


@functools.lru_cache(maxsize=4)
def _compiled(seg_json: str, n_classes: int, optim: str, lr: float, momentum: float):
  """(tx, train step, jitted predict) for one segmenter/optimiser setup; the
  step is a `parallel.TrainStep` (jitted on one device, pmapped on several).

  Cached on the setup's value, so repeated `train` calls in one process
  (resume, notebooks, tests) reuse the compiled functions.
  """
  module = build.segmenter(ml_collections.ConfigDict(json.loads(seg_json)), n_classes)
  tx = state_lib.make_optimizer(optim, lr, momentum=momentum)
  # supervised_step reads only the segmenter and its optimiser from the Method.
  method = state_lib.Method(gen_fn=None, z_dim=0, annotator=None, segmenter=module,
                            ann_tx=None, seg_tx=tx, matched=())
  step_fn = parallel.TrainStep(functools.partial(steps.supervised_step, method=method))
  return tx, step_fn, restore.predict_fn(module)


def _eval_sets(config) -> dict:
  d = config.data
  sets = {"val": build.val_arrays(config)}
  if not build.test_is_val(config):
    sets["test"] = build.eval_arrays(config, d.test_split)
  return sets


def train(config, workdir, profile_steps: Optional[profiling.Window] = None) -> dict:
  """Trains the downstream segmenter on the generated set (resuming if possible).

  Args:
    profile_steps: `(a, b)`: a jax.profiler trace of updates a+1..b (those
      starting with a..b-1 done) in `<workdir>/downstream/profile/`.
  Returns:
    dict(epochs, steps, dataset_size, best_epoch, val=scores of the last
    epoch[, test=...]); scores without the confusion matrix.
  """
  config_base.check(config)
  d = config.downstream
  out = directory(workdir)
  source = synthetic.source(dataset_dir(workdir))
  n, batch = len(source), int(d.batch)
  if n < batch:
    raise ValueError(f"The synthetic set has {n} images, fewer than downstream.batch={batch}: "
                     "generate more (downstream.num_images) or filter less.")
  parallel.check_global_batch(batch, "downstream.batch")
  # Beyond the paper: `mix_labelled` of each batch's places go to the k
  # labelled images (augmented as the supervised baseline), the rest to the set.
  transform, labelled_per_step = batch_transform(config)
  syn_per_step = batch - labelled_per_step
  steps_per_epoch = n // syn_per_step
  profiling.check_window(profile_steps, d.epochs * steps_per_epoch)
  tx, step_fn, predict = _compiled(
      json.dumps(metric_writers.to_jsonable(restore.segmenter_config(config, "downstream")),
                 sort_keys=True),
      build.num_classes(config), d.optim.name, float(d.optim.lr), float(d.optim.momentum))
  state = init_state(config, source[0]["image"].shape, tx)

  ckpt = checkpoint.Checkpointer(out / "checkpoints", keep=KEEP_SNAPSHOTS, best_key="fg_miou")
  # Compared before restoring: a changed segmenter or optimiser stops here.
  saved_step, saved_config = ckpt.saved_config()
  changes = workdir_lib.check_resume(out, saved_config, config, saved_step or 0,
                                     blocking=workdir_lib.DOWNSTREAM_BLOCKING,
                                     what="downstream training")
  state, meta = ckpt.maybe_restore(state)
  state = step_fn.put(state)
  start_epoch = int(meta["epoch"]) if meta else 0
  is_main = jax.process_index() == 0
  # One history: rows after the restored epoch's last step are dropped.
  writer = metric_writers.MetricWriter(out, enabled=is_main,
                                       resume_step=start_epoch * steps_per_epoch)
  if is_main:
    workdir_lib.record_config(out, config, resumed_step=start_epoch if meta else None,
                              changes=changes, saved_config=saved_config)
  sets = _eval_sets(config)
  n_classes = build.num_classes(config)
  log_every = max(1, int(config.train.log_every))
  prog = progress_lib.Progress(d.epochs * steps_per_epoch, start_step=start_epoch * steps_per_epoch)
  profiler = profiling.StepProfiler(profile_steps, out / "profile", enabled=is_main)
  summary = {}
  logging.info("Downstream: %d images, %d steps/epoch, epochs %d..%d.", n, steps_per_epoch,
               start_epoch + 1, d.epochs)
  for epoch in range(start_epoch, d.epochs):
    order = np.random.default_rng([int(config.seed), epoch]).permutation(n)
    for i in range(steps_per_epoch):
      data = _load_batch(source, order[i * syn_per_step:(i + 1) * syn_per_step])
      step = epoch * steps_per_epoch + i + 1
      # Every host builds the global batch (augmented, mixed) as one host
      # would; each feeds its rows of it.
      data = parallel.host_slice(transform(data, step))
      profiler.at(step - 1)
      state, metrics = step_fn(state, data)
      profiler.at(step, (state, metrics))
      if step % log_every == 0 or i == steps_per_epoch - 1:
        metrics = jax.device_get(metrics)
        progress_lib.check_finite(metrics, step)
        writer.write_scalars(step, dict(metrics, epoch=epoch + 1), prefix="train")
      prog.update(step)
    with prog.paused():
      summary = {}
      single = step_fn.get(state)
      for name, data in sets.items():
        result = evaluate.evaluate_segmenter(
            lambda x: predict(single.seg_params, single.seg_stats, x), data["image"],
            data["label"], n_classes, batch_size=config.train.eval_batch)
        result.pop("confusion")
        summary[name] = metric_writers.to_jsonable(result)
        writer.write_scalars(step, dict(result, epoch=epoch + 1), prefix=name)
      logging.info("epoch %d/%d: val FG-mIoU %.4f mIoU %.4f", epoch + 1, d.epochs,
                   summary["val"]["fg_miou"], summary["val"]["miou"])
      if (epoch + 1) % max(1, int(d.ckpt_every_epoch)) == 0 or epoch + 1 == d.epochs:
        ckpt.save(epoch + 1, jax.device_get(single),
                  meta={"config": config.to_dict(), "epoch": epoch + 1, "step": step,
                        "dataset_size": n, "val": summary["val"]},
                  metrics={"fg_miou": summary["val"]["fg_miou"]})
  profiler.close(state)  # a window reaching past the last update ends here
  ckpt.wait()
  best_epoch = ckpt.best_step()
  ckpt.close()
  writer.close()
  if not summary:  # nothing left to train: report the last logged evaluation
    for name in ("val", "test"):
      records = [r for r in metric_writers.read_jsonl(out, prefix=name) if "miou" in r]
      if records:
        summary[name] = {k: v for k, v in records[-1].items()
                         if k not in ("step", "time", "prefix", "epoch")}
  return dict(summary, epochs=int(d.epochs), steps=int(d.epochs) * steps_per_epoch,
              dataset_size=n, best_epoch=best_epoch)


def finetune_dir(workdir) -> pathlib.Path:
  """`<workdir>/downstream/finetune`: a phase-one-layout run (`checkpoints/`)."""
  return directory(workdir) / "finetune"


def finetune(config, workdir, num_steps: Optional[int] = None, out_dir=None) -> dict:
  """Beyond the paper: fine-tunes the downstream segmenter (latest epoch) on
  the k labelled images for `downstream.finetune_steps` updates, as the
  supervised baseline trains (gmseg.supervised: `seg_optim`, augmentation,
  `batch.labelled`). "LAGM + labelled": do LAGM's samples add to the k faces?
  With `downstream.finetune_ema` > 0 the run keeps a moving average of the
  weights, which `restore.restore_segmenter` returns as the model.

  Args:
    num_steps: updates; None = `downstream.finetune_steps`.
    out_dir: the fine-tuning run's folder; None = `finetune_dir(workdir)`.
      Calling again with more steps and the same folder resumes that run
      (gmseg.experiments.finetune_curve scores it along the way).
  Returns:
    {} when the number of steps is 0, else supervised.train's summary. The
    result is scored with `restore.restore_segmenter(out_dir, 'annotate')`.
  """
  n = int(config.downstream.get("finetune_steps", 0) if num_steps is None else num_steps)
  if n <= 0:
    return {}
  if (json.dumps(restore.segmenter_config(config, "downstream").to_dict(), sort_keys=True)
      != json.dumps(config.segmenter.to_dict(), sort_keys=True)):
    raise ValueError("downstream.finetune_steps > 0 fine-tunes with the phase-one segmenter "
                     "config; set downstream.segmenter='' (same as segmenter).")
  from gmseg import supervised  # pylint: disable=g-import-not-at-top
  _, params, stats = restore.restore_segmenter(workdir, "downstream", "latest", config)
  out_dir = finetune_dir(workdir) if out_dir is None else out_dir
  return supervised.train(config, out_dir, num_steps=n, init=(params, stats),
                          ema=float(config.downstream.get("finetune_ema", 0.0)))


def run(config, workdir, annotator_step: Union[str, int] = "best",
        source: Optional[label_sources.LabelSource] = None,
        profile_steps: Optional[profiling.Window] = None) -> dict:
  """Phase two end to end: `generate` (or reuse; labels from `source`, default
  the annotator), `train` (traced over `profile_steps`, see `train`), and
  `finetune` when `downstream.finetune_steps` > 0.

  Holds `workdir` exclusively (gmseg.workdir), as phase one does: phase two
  reads phase one's checkpoints, which a concurrent run would change.
  """
  with workdir_lib.hold(workdir):
    generate(config, workdir, annotator_step, source)
    result = train(config, workdir, profile_steps)
    if int(config.downstream.get("finetune_steps", 0)) > 0:
      result["finetune"] = finetune(config, workdir)
    return result
