"""Baseline: a segmenter trained on the labelled images alone.

The same segmenter, input size and evaluation as the method, trained with
hard cross-entropy on the k labelled images (flip / zoom / colour
augmentation, `pipeline.augment`) for a given number of updates. Its
checkpoints use the phase-one layout (`<workdir>/checkpoints`, a TrainState
with empty annotator fields), so `restore.evaluate_checkpoint(workdir,
which='annotate')` scores it like any phase-one segmenter.

Devices and hosts: `batch.labelled` is the global batch. With several
devices the step is pmapped (gmseg.parallel.TrainStep: gradients, BatchNorm
running averages and metrics pmeaned; each device normalises with its own
rows' batch statistics); every host draws and augments the same global
batch, as one host would, and feeds its slice of it. Only process 0 writes
config.json and metrics; every process takes part in checkpoint saves.
"""
import functools
import pathlib
from typing import Optional

from absl import logging
import jax
import numpy as np

from gmseg import build, checkpoint, config_base, metric_writers, progress as progress_lib
from gmseg import parallel
from gmseg import state as state_lib
from gmseg import steps as steps_lib
from gmseg.data import pipeline

_TAG = 7  # seed offset: the baseline's S starts from its own initialisation


def train(config, workdir, num_steps: Optional[int] = None,
          augment: bool = True, init: Optional[tuple] = None, ema: float = 0.0) -> dict:
  """Trains the baseline segmenter; resumes from `<workdir>/checkpoints`.

  Args:
    config: an experiment config (segmenter, seg_optim, data, batch.labelled).
    workdir: run directory.
    num_steps: updates (default `config.train.steps`, the number of
      segmenter updates of phase one).
    augment: flip / zoom / colour jitter of each labelled batch.
    init: (seg_params, seg_stats) to start from instead of a fresh
      initialisation (fine-tuning, e.g. a segmenter pre-trained on LAGM's
      synthetic set: `downstream.finetune`); a saved checkpoint still wins.
    ema: decay of a moving average of the weights kept in the optimiser
      state (`state.with_weight_average`, started at the initial weights;
      0 = none). `restore.restore_segmenter` then returns the average: it is
      the model.
  Returns:
    {'step': updates done, 'loss': mean loss of the last log window}.
  """
  config_base.check(config)
  workdir = pathlib.Path(workdir)
  num_steps = int(num_steps or config.train.steps)
  # The global batch splits evenly over every device (checked before setup).
  parallel.check_global_batch(int(config.batch.labelled), "batch.labelled")
  labelled = build.split_arrays(config, config.data.labelled_split,
                                limit=config.data.num_labelled)
  sampler = pipeline.Sampler({"image": labelled["image"], "label": labelled["label"]},
                             config.batch.labelled, config.seed)
  module = build.segmenter(config.segmenter, build.num_classes(config))
  tx = state_lib.make_optimizer(config.seg_optim.name, config.seg_optim.lr,
                                momentum=config.seg_optim.momentum)
  if ema:
    tx = state_lib.with_weight_average(tx, float(ema))
  # supervised_step reads only the segmenter and its optimiser.
  method = state_lib.Method(gen_fn=None, z_dim=0, annotator=None, segmenter=module,
                            ann_tx=None, seg_tx=tx, matched=())
  step_fn = parallel.TrainStep(functools.partial(steps_lib.supervised_step, method=method))
  state = state_lib.segmenter_state(module, jax.random.PRNGKey(config.seed + _TAG), tx=tx,
                                    image_shape=labelled["image"].shape[1:],
                                    load=functools.partial(build.pretrained_segmenter,
                                                           config.segmenter))
  if init is not None:
    # Copies: the step donates the state's buffers, and the caller keeps init.
    state = state.replace(seg_params=jax.tree.map(np.array, init[0]),
                          seg_stats=jax.tree.map(np.array, init[1]) or state.seg_stats)
    # The optimiser (and the weight average) start from the given weights.
    state = state.replace(seg_opt_state=tx.init(state.seg_params))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=1)
  state, meta = ckpt.maybe_restore(state)
  is_main = jax.process_index() == 0
  if is_main:
    metric_writers.write_config(workdir, config)
  writer = metric_writers.MetricWriter(workdir, enabled=is_main)
  progress = progress_lib.Progress(num_steps, start_step=int(state.step), log=is_main)
  losses = []
  step = int(state.step)
  aug = pipeline.augmenter(config)
  state = step_fn.put(state)
  try:
    while step < num_steps:
      batch = sampler.batch(step)
      if augment:
        batch = aug(batch, np.random.default_rng([config.seed, step]))
      # The global batch, augmented as on one host; this host feeds its rows.
      batch = parallel.host_slice({"image": np.asarray(batch["image"], np.float32),
                                   "label": np.asarray(batch["label"], np.int32)})
      state, metrics = step_fn(state, batch)
      step += 1
      losses.append(metrics["sup/loss"])
      progress.update(step)
      if step % config.train.log_every == 0 or step == num_steps:
        loss = float(np.mean(jax.device_get(losses)))
        progress_lib.check_finite({"sup/loss": loss}, step)
        writer.write_scalars(step, {"loss": loss}, prefix="supervised")
        losses.clear()
      if step % config.train.ckpt_every == 0 or step == num_steps:
        ckpt.save(step, jax.device_get(step_fn.get(state)),
                  meta={"config": config.to_dict(), "step": step})
  finally:
    writer.close()
    ckpt.wait()
    ckpt.close()
  logging.info("supervised baseline: %d updates in %s", step, workdir)
  return {"step": step}
