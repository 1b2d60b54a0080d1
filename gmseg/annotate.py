"""Phase one: learn the annotator by gradient matching, alongside a segmenter.

`train_and_evaluate(config, workdir)` runs the paper's loop. At iteration i:
  - if i % train.ann_every == 0: an annotator step on the labelled batch
    `sampler.batch(i)` (gradient matching against the segmenter);
  - if i % train.seg_every == 0: a segmenter step on freshly generated,
    annotated samples.

Step counting: `state.step` is the number of finished iterations, and
iteration i runs with `state.step == i`, so the steps' randomness
(`fold_in(rng, step)`) and the labelled batch (`Sampler.batch(i)`) are
functions of i alone. `segmenter_step` increments `state.step`; on iterations
without a segmenter step (seg_every > 1) the loop increments it instead.
Everything logged or saved "at step s" is the state after s iterations.

Resume: checkpoints go to `workdir/checkpoints` (items `state`: the
unreplicated TrainState; `meta`: config, step, best validation). Rerunning the
same command continues from the latest one; because the state, the per-step
keys and the sampler are all that the loop depends on, a run killed at any
moment and restarted ends with the parameters of an uninterrupted run
(bitwise, on the same machine and device count).

Evaluation: every train.eval_every steps (and at the end) the segmenter is
scored on `data.val_split` (pACC, mIoU, FG-mIoU, per-class IoU, gmseg.evaluate);
each evaluated step is checkpointed with its FG-mIoU, and the best one is
kept by the Checkpointer whatever `train.keep` says.

Outputs in `workdir`: metrics.jsonl and TensorBoard events (prefixes 'train'
and 'val'), config.json, grids/<step>_labelled.png (labelled images: image,
label, overlay rows) and grids/<step>_generated.png (generated images: image,
annotator label, overlay, and the label with pixels of max probability < 0.9
in magenta), written at the start and every train.grid_every steps.

Devices and hosts: the steps are pmapped over the local devices (one device
runs the same code); batches in the config are global and split over all
devices of all processes. With several processes each reads its own slice of
the labelled batch (Sampler(process_index, process_count)); only process 0
writes metrics, grids, config.json and logs, while every process takes part
in (collective) checkpoint saves.
"""
import dataclasses
import pathlib
from typing import Any, Optional

from absl import logging
import jax
import numpy as np

from gmseg import build
from gmseg import checkpoint
from gmseg import evaluate
from gmseg import host_memory
from gmseg import metric_writers
from gmseg import parallel
from gmseg import profiling
from gmseg import progress as progress_lib
from gmseg import state as state_lib
from gmseg import steps
from gmseg import viz
from gmseg import warm_start
from gmseg import workdir as workdir_lib
from gmseg.data import pipeline

BEST_KEY = "fg_miou"
GRID_SAMPLES = 8
_GRID_TAG = 0x67726964  # folded into the seed for the fixed grid latents
_RESTART_TAG = 0x72737472  # folded into the seed for S's restart initialisations


def labelled_arrays(config) -> dict[str, np.ndarray]:
  """The labelled set: the first `data.num_labelled` ids of the labelled split.

  Returns:
    {'image': float32 `[N, R, R, 3]` in [-1, 1], 'label': int32 `[N, R, R]`}.
  """
  d = config.data
  arrays = build.split_arrays(config, d.labelled_split, limit=d.num_labelled)
  if d.num_labelled and len(arrays["image"]) < d.num_labelled:
    raise ValueError(f"data.num_labelled={d.num_labelled} but {d.dataset!r} split "
                     f"{d.labelled_split!r} has {len(arrays['image'])} examples; "
                     "lower data.num_labelled.")
  return {"image": arrays["image"], "label": arrays["label"].astype(np.int32)}


def val_arrays(config) -> dict[str, np.ndarray]:
  arrays = build.val_arrays(config)
  return {"image": arrays["image"], "label": arrays["label"]}


def make_predict_fn(method: state_lib.Method):
  """jitted `(seg_params, seg_stats, images [B, H, W, 3]) -> logits [B, H, W, C]`."""
  return jax.jit(lambda p, s, x: steps.predict(method, p, s, x))


def evaluate_state(predict_fn, state: state_lib.TrainState, val: dict,
                   num_classes: int, batch_size: int) -> dict:
  """Scores the (unreplicated) state's segmenter on `val`; see gmseg.evaluate."""
  return evaluate.evaluate_segmenter(
      lambda x: predict_fn(state.seg_params, state.seg_stats, x),
      val["image"], val["label"], num_classes, batch_size=batch_size)


def write_grids(workdir: pathlib.Path, step: int, batch: dict, images, probs,
                writer: metric_writers.MetricWriter, pal=None) -> None:
  """Saves the labelled and the generated/annotated grids of `step`.

  `pal`: label colours `[C, 3]` (default: viz.palette sized to the labels).
  """
  grids = {
      "labelled": viz.label_grid(batch["image"], batch["label"], pal=pal),
      "generated": viz.label_grid(images, np.argmax(probs, axis=-1), probs=probs,
                                  conf_threshold=0.9, pal=pal),
  }
  for name, grid in grids.items():
    viz.save_png(workdir / "grids" / f"{step:07d}_{name}.png", grid)
    writer.write_images(step, f"grids/{name}", grid)


def summarize_metrics(history: list[tuple]) -> dict[str, float]:
  """NaN/Inf guard and mean of the metrics of several steps.

  Args:
    history: (step, metrics) in step order; metric values are `[devices]`
      arrays (pmeaned, so device 0 stands for all) as the pmapped steps return.
      An entry (step, metrics, n) holds n iterations ending at `step`
      (`parallel.pmap_iterations`): values `[devices, n]`.
  Returns:
    {name: mean over the steps that have it}.
  Raises:
    FloatingPointError naming the first step with a NaN/Inf metric.
  """
  host = []
  for entry in jax.device_get(history):
    step, metrics, n = entry if len(entry) == 3 else (*entry, None)
    if n is None:
      host.append((step, {k: np.asarray(v)[0] for k, v in metrics.items()}))
    else:
      host += [(step - n + 1 + j, {k: np.asarray(v)[0, j] for k, v in metrics.items()})
               for j in range(n)]
  for s, m in host:
    progress_lib.check_finite(m, s)
  keys = sorted({k for _, m in host for k in m})
  return {k: float(np.mean([m[k] for _, m in host if k in m])) for k in keys}


def restart_due(step: int, tc) -> bool:
  """Whether S is re-initialised before iteration `step`
  (`train.seg_restart_every`; never at step 0)."""
  every = int(tc.get("seg_restart_every", 0))
  return every > 0 and step > 0 and step % every == 0


def host_action_due(step: int, tc) -> bool:
  """Whether the loop stops on the host after `step` finished iterations
  (log, evaluation, checkpoint, grid, S restart, or the end)."""
  return step == tc.steps or restart_due(step, tc) or any(step % tc[k] == 0 for k in (
      "log_every", "eval_every", "ckpt_every", "grid_every"))


def dispatch_length(step: int, tc) -> int:
  """Iterations the loop runs in one dispatch from `step`:
  `train.steps_per_dispatch` when both steps are due every iteration and no
  host action falls before the chunk's end, else 1.

  A function of the step alone, so a resumed run (which restarts at a
  checkpoint step, where no chunk ends inside) runs the same programs on the
  same iterations as an uninterrupted one: resume stays bitwise. Only two
  lengths occur (`steps_per_dispatch` and 1), i.e. two compiled programs.
  """
  n = tc.steps_per_dispatch
  if n <= 1 or tc.ann_every != 1 or tc.seg_every != 1 or step + n > tc.steps:
    return 1
  if any(host_action_due(s, tc) for s in range(step + 1, step + n)):
    return 1
  return n


def _val_record(result: dict, class_names) -> dict:
  record = {k: result[k] for k in ("pacc", "miou", "fg_miou")}
  record.update({f"iou/{name}": float(v) for name, v in zip(class_names, result["iou"])})
  return record


def _summary(result: dict, step: int) -> dict:
  return {"step": int(step), "pacc": float(result["pacc"]), "miou": float(result["miou"]),
          "fg_miou": float(result["fg_miou"]),
          "iou": [float(v) for v in np.asarray(result["iou"])]}


def _better(value: float, best: Optional[dict]) -> bool:
  if np.isnan(value):
    return False
  return best is None or value > best[BEST_KEY]


def train_and_evaluate(config, workdir,
                       profile_steps: Optional[profiling.Window] = None,
                       teacher=None) -> dict[str, Any]:
  """Trains annotator and segmenter; evaluates, checkpoints, resumes.

  The run holds `workdir` exclusively (gmseg.workdir: another run on it stops
  at once). On resume the checkpoint's config is compared with `config`
  before anything heavy happens: changes to the state or its meaning stop
  with one message, harmless ones are warned about and recorded in
  config_history.jsonl (config.json stays the config of the run's start).

  Args:
    config: a ConfigDict with the keys of gmseg.config_base.
    workdir: run directory (created; an existing checkpoint is resumed).
    profile_steps: `(a, b)`: a jax.profiler trace of iterations a..b-1 in
      `workdir/profile/` (gmseg.profiling; process 0 only).
    teacher: a `label_sources.LabelSource` for the warm start (`warm_start.*`,
      gmseg.warm_start; applied to a fresh run only, before iteration 0) and
      the anchor of the annotator's loss (`matching.anchor` > 0).
  Returns:
    {'step': final step, 'final': validation scores at the end,
     'best': the best validation scores (with their 'step'), 'table': text}.
    Scores hold pacc, miou, fg_miou (floats) and iou (per-class list).
  """
  profiling.check_window(profile_steps, config.train.steps)
  with workdir_lib.hold(workdir):
    return _train_and_evaluate(config, pathlib.Path(workdir), profile_steps, teacher)


def anchor_weight(config) -> float:
  """`matching.anchor` (0 = the paper's loss)."""
  # .get: configs saved before the key existed had no anchor.
  return float(config.matching.get("anchor", 0.0))


def with_anchor(config, method: state_lib.Method, teacher) -> state_lib.Method:
  """`method` with the teacher's labels as the anchor of the annotator's loss
  when `matching.anchor` > 0 (beyond the paper; see `steps.matching_loss`).

  The teacher's parameters are closed over: constants of the compiled
  iteration, the same on every device.
  """
  weight = anchor_weight(config)
  if weight <= 0:
    return method
  if teacher is None:
    raise ValueError(f"matching.anchor={weight} needs a teacher: pass train_and_evaluate(..., "
                     "teacher=...) (gmseg.label_sources; the faces job passes the supervised "
                     "k-shot segmenter), or set matching.anchor=0.")
  member = teacher.members[0]
  return dataclasses.replace(method, anchor_weight=weight,
                             anchor=lambda images, feats: teacher.fn(method, member, images,
                                                                     feats)[1])


def check_resume(config, ckpt: checkpoint.Checkpointer, workdir) -> None:
  """Stops a resume that cannot continue, before any heavy setup.

  Raises:
    workdir.ConfigChangeError: the config changes the state (widths, norm,
      optimiser, classes, matched parameters, batches, seed, ...), or
      train.steps is below the checkpoint's step.
  """
  step, saved = ckpt.saved_config()
  if step is None:
    return
  if step > config.train.steps:
    raise workdir_lib.ConfigChangeError(
        f"The run in {workdir} is already at step {step}, past train.steps="
        f"{config.train.steps}: nothing to train. Evaluate a saved step (launch/evaluate.py "
        f"--workdir={workdir} --step=...; saved: {ckpt.all_steps()}), raise train.steps, "
        "or use a new --workdir.")
  workdir_lib.check_resume(workdir, saved, config, step,
                           harmless=workdir_lib.annotate_harmless(config), warn=False)


def _train_and_evaluate(config, workdir: pathlib.Path,
                        profile_steps: Optional[profiling.Window],
                        teacher=None) -> dict[str, Any]:
  tc = config.train
  is_main = jax.process_index() == 0
  num_classes = build.num_classes(config)
  for key in ("steps", "ann_every", "seg_every", "log_every", "eval_every",
              "ckpt_every", "grid_every", "steps_per_dispatch"):
    if tc[key] < 1:
      raise ValueError(f"train.{key}={tc[key]} must be >= 1.")
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=tc.keep, best_key=BEST_KEY)
  try:
    check_resume(config, ckpt, workdir)
  except BaseException:
    ckpt.close()
    raise

  gen = build.generator(config)
  # Per-device batches: the global batch over every device of every process.
  method = with_anchor(config, build.method(config, gen, devices=jax.device_count()), teacher)
  labelled = labelled_arrays(config)
  val = val_arrays(config)
  sampler = pipeline.Sampler(labelled, config.batch.labelled, config.seed,
                             process_index=jax.process_index(),
                             process_count=jax.process_count())
  if sampler.per_host % jax.local_device_count():
    raise ValueError(f"batch.labelled={config.batch.labelled} gives {sampler.per_host} "
                     f"per host, which does not divide over {jax.local_device_count()} "
                     "local devices; use a multiple of the total device count.")

  # jitted: one compiled (and cacheable) program instead of many eager ops.
  state = jax.jit(lambda p: state_lib.init_state(method, p, config.seed))(gen.params)
  seg_params, seg_stats = build.pretrained_segmenter(config.segmenter, state.seg_params,
                                                     state.seg_stats)
  state = state.replace(seg_params=seg_params, seg_stats=seg_stats)
  if warm_start.wanted(config) and ckpt.latest_step() is None:
    if teacher is None:
      raise ValueError("warm_start.* asks for a warm start but no teacher was given: pass "
                       "train_and_evaluate(..., teacher=...) (gmseg.label_sources), or set "
                       "warm_start.distill_steps=0 and warm_start.segmenter=False.")
    state = warm_start.apply(config, method, state, gen.params, teacher)
  state, meta = ckpt.maybe_restore(state)
  best = (meta or {}).get("best")
  start = int(state.step)
  if is_main:
    saved_config = (meta or {}).get("config")
    changes = workdir_lib.check_resume(workdir, saved_config, config, start,
                                       harmless=workdir_lib.annotate_harmless(config))
    workdir_lib.record_config(workdir, config, resumed_step=start if meta else None,
                              changes=changes, saved_config=saved_config)
    logging.info("%s at step %d of %d in %s.", "Resuming" if meta else "Starting",
                 start, tc.steps, workdir)
  # One history: rows (and TensorBoard events) after the restored step are dropped.
  writer = metric_writers.MetricWriter(workdir, enabled=is_main, resume_step=start)
  progress = progress_lib.Progress(tc.steps, start_step=start, log=is_main)
  profiler = profiling.StepProfiler(profile_steps, workdir / "profile", enabled=is_main)

  p_ann, p_seg, _ = parallel.pmap_steps(method)
  p_iter = parallel.pmap_iteration(method)  # compiled only when both steps are due
  p_multi = parallel.pmap_iterations(method)  # compiled only when steps_per_dispatch > 1
  predict_fn = make_predict_fn(method)
  samples_fn = jax.jit(lambda st, gp, z, r: steps.annotate_samples(method, st, gp, z, r))
  grid_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _GRID_TAG)
  grid_z = jax.random.normal(grid_key, (GRID_SAMPLES, method.z_dim))
  r_gen = parallel.replicate(gen.params)
  r_state = parallel.replicate(state)
  del state  # the replicated copy is donated step by step
  # Setup's compiles left freed heap pages resident; the step program's
  # compile would add its peak on top of them.
  host_memory.release()

  def grids(step):
    if not is_main:
      return
    single = parallel.unreplicate(r_state)
    images, probs = jax.device_get(samples_fn(single, gen.params, grid_z, grid_key))
    write_grids(workdir, step, sampler.batch(step), images, probs, writer,
                pal=viz.palette_for(config.class_names))

  restart_init = jax.jit(lambda gp, key: state_lib.fresh_segmenter(method, gp, key))
  restart_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _RESTART_TAG)

  def restart_segmenter(r_state, step):
    # A fresh S (and optimiser state) from a key of the step alone, so a run
    # resumed at a restart step restarts exactly as an uninterrupted one.
    params, stats, opt_state = restart_init(gen.params, jax.random.fold_in(restart_key, step))
    params, stats = build.pretrained_segmenter(config.segmenter, params, stats)
    single = parallel.unreplicate(r_state).replace(
        seg_params=params, seg_stats=stats, seg_opt_state=opt_state)
    if is_main:
      logging.info("step %d: S restarted (train.seg_restart_every=%d).", step,
                   tc.seg_restart_every)
    return parallel.replicate(single)

  pending = []  # (step, device metrics[, n]) not yet checked and written

  def flush():
    # A host sync: done at log, eval and checkpoint steps only, so a
    # non-finite state is never saved; the mean is written at the latest step.
    if pending:
      writer.write_scalars(pending[-1][0], summarize_metrics(pending), prefix="train")
      pending.clear()

  final = None
  step = start
  try:
    if step < tc.steps:
      grids(step)
    while step < tc.steps:
      if restart_due(step, tc):
        r_state = restart_segmenter(r_state, step)
      profiler.at(step)
      metrics = {}
      ann_due, seg_due = step % tc.ann_every == 0, step % tc.seg_every == 0
      n = dispatch_length(step, tc)
      if n > 1:  # n iterations, one dispatch; nothing on the host falls inside
        batches = parallel.stack_batches([sampler.batch(i) for i in range(step, step + n)])
        r_state, metrics = p_multi(r_state, batches, r_gen)
        step += n
        pending.append((step, metrics, n))
        progress.update(step)
      elif ann_due and seg_due:  # both steps as one program (one dispatch)
        batch = parallel.shard_batch(sampler.batch(step))
        r_state, metrics = p_iter(r_state, batch, r_gen)
      else:  # ann_every or seg_every > 1 at this iteration
        if ann_due:
          batch = parallel.shard_batch(sampler.batch(step))
          r_state, m = p_ann(r_state, batch, r_gen)
          metrics.update(m)
        if seg_due:
          r_state, m = p_seg(r_state, r_gen)
          metrics.update(m)
        else:
          r_state = r_state.replace(step=r_state.step + 1)
      if n == 1:
        step += 1
        pending.append((step, metrics))
        progress.update(step)
      profiler.at(step, (r_state, metrics))

      is_last = step == tc.steps
      eval_due = step % tc.eval_every == 0 or is_last
      ckpt_due = step % tc.ckpt_every == 0 or eval_due
      if step % tc.log_every == 0 or ckpt_due:
        flush()
      if not (eval_due or ckpt_due or step % tc.grid_every == 0):
        continue
      with progress.paused():
        single = parallel.unreplicate(r_state)
        ckpt_metrics = None
        if eval_due:
          result = evaluate_state(predict_fn, single, val, num_classes, tc.eval_batch)
          final = _summary(result, step)
          if _better(result[BEST_KEY], best):
            best = final
          record = _val_record(result, config.class_names)
          record["best_fg_miou"] = best[BEST_KEY] if best else float("nan")
          writer.write_scalars(step, record, prefix="val")
          ckpt_metrics = {BEST_KEY: result[BEST_KEY]}
          if is_main:
            logging.info("step %d: val pACC %.4f mIoU %.4f FG-mIoU %.4f (best %.4f)",
                         step, result["pacc"], result["miou"], result["fg_miou"],
                         record["best_fg_miou"])
        if ckpt_due:
          # Host copies: every process holds the full state, and orbax writes
          # host arrays from the primary process.
          ckpt.save(step, jax.device_get(single),
                    meta={"config": config.to_dict(), "step": step, "best": best},
                    metrics=ckpt_metrics)
        if step % tc.grid_every == 0:
          grids(step)
    profiler.close(r_state)  # a window reaching past train.steps ends here
    flush()
    if final is None:  # nothing ran: the run had already finished
      single = parallel.unreplicate(r_state)
      final = _summary(evaluate_state(predict_fn, single, val, num_classes,
                                       tc.eval_batch), step)
      if best is None:
        best = final
  finally:
    profiler.close()  # after an error: stop without waiting for the device
    writer.close()
    ckpt.wait()
    ckpt.close()

  table = _table(final, best, config.class_names)
  return {"step": step, "final": final, "best": best, "table": table}


def _table(final: dict, best: Optional[dict], class_names) -> str:
  out = [f"final (step {final['step']}):", evaluate.format_table(final, class_names)]
  if best is not None:
    out += [f"best by validation FG-mIoU (step {best['step']}):",
            evaluate.format_table(best, class_names)]
  return "\n".join(out)
