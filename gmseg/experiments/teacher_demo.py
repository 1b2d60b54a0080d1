"""Teacher recovery: the method working end to end where the truth is known.

A fixed random "teacher" annotator labels samples of a fixed random
generator. The learner sees only `k` teacher-labelled samples (its labelled
set) and runs alternating annotator (gradient matching) / segmenter steps.
On fresh samples we measure agreement with the teacher (mIoU) of the learnt
annotator A and of the phase-one segmenter S, next to a segmenter trained on
the k labelled samples alone for the same number of updates.

The teacher reads the generator's last feature map (1x1 laterals + a 3x3
classifier, no hidden layers), with logits standardised per class over many
samples so the classes are balanced; the learner's annotator has the same
architecture but its own initialisation and sees every feature map.
"""
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from gmseg import evaluate, steps
from gmseg import state as state_lib
from gmseg.models import annotator as annotator_lib
from gmseg.models import generators, layers, unet


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  num_classes: int = 4
  resolution: int = 32
  k: int = 4                    # teacher-labelled samples the learner gets
  steps: int = 200              # A/S iterations (= supervised updates)
  syn_batch: int = 4
  seg_batch: int = 4
  ann_lr: float = 1e-3          # Adam
  seg_lr: float = 3e-3          # Adam (both S: LAGM and supervised)
  matched: str = "unet:all"
  widths: tuple = (16, 16, 32, 32, 32)
  num_test: int = 64
  eval_every: int = 50
  eval_from: int = 0             # evaluate at 0 and every eval_every from here
  seed: int = 0


def make_teacher(gen: generators.Generator, cfg: DemoConfig):
  """Returns `label_fn(z) -> (images [B,R,R,3], labels [B,R,R])`."""
  teacher = annotator_lib.Annotator(cfg.num_classes, tmp_channels=16, num_layers=1)
  _, feats = gen(gen.sample_z(jax.random.PRNGKey(1000 + cfg.seed), 256))
  params = teacher.init(jax.random.PRNGKey(2000 + cfg.seed), feats[-1:])
  hw = (cfg.resolution, cfg.resolution)
  logits = layers.resize_to(teacher.apply(params, feats[-1:]), hw)
  mu, sd = logits.mean((0, 1, 2)), logits.std((0, 1, 2))

  @jax.jit
  def label_fn(z):
    images, f = gen.apply_fn(gen.params, z, None)
    lg = layers.resize_to(teacher.apply(params, f[-1:]), hw)
    return images, jnp.argmax((lg - mu) / sd, axis=-1)

  return label_fn


def run(cfg: DemoConfig = DemoConfig(), log=print) -> dict:
  """Runs LAGM and the supervised baseline; returns agreement curves.

  Returns:
    dict with `steps` and mIoU lists `annotator`, `segmenter`, `supervised`
    (evaluated on `num_test` fresh teacher-labelled samples), `seconds`.
  """
  gen = generators.random_conv(resolution=cfg.resolution, width=32, z_dim=16, seed=0)
  label_fn = make_teacher(gen, cfg)
  x_l, y_l = label_fn(gen.sample_z(jax.random.PRNGKey(10 + cfg.seed), cfg.k))
  z_test = gen.sample_z(jax.random.PRNGKey(20 + cfg.seed), cfg.num_test)
  x_t, y_t = label_fn(z_test)
  y_t = np.asarray(y_t)

  seg = unet.UNet(cfg.num_classes, widths=cfg.widths)
  method = state_lib.Method(
      gen_fn=gen.apply_fn, z_dim=gen.z_dim,
      annotator=annotator_lib.Annotator(cfg.num_classes, tmp_channels=16, num_layers=1),
      segmenter=seg, ann_tx=state_lib.make_optimizer("adam", cfg.ann_lr),
      seg_tx=state_lib.make_optimizer("adam", cfg.seg_lr), matched=(),
      syn_batch=cfg.syn_batch, seg_batch=cfg.seg_batch)
  state = state_lib.init_state(method, gen.params, cfg.seed)
  method = dataclasses.replace(method, matched=state_lib.matched_paths(
      state.seg_params, cfg.matched))
  a_step = jax.jit(functools.partial(steps.annotator_step, method=method))
  s_step = jax.jit(functools.partial(steps.segmenter_step, method=method))
  sup_step = jax.jit(functools.partial(steps.supervised_step, method=method))
  seg_pred = jax.jit(lambda p, x: jnp.argmax(steps.predict(method, p, {}, x), -1))
  ann_pred = jax.jit(lambda s: jnp.argmax(steps.annotate_samples(
      method, s, gen.params, z_test, jax.random.PRNGKey(0))[1], -1))

  def miou(pred):
    conf = evaluate.confusion_matrix_np(np.asarray(pred), y_t, cfg.num_classes)
    return float(evaluate.scores(conf)["miou"])

  batch = {"image": x_l, "label": y_l}
  sup = state
  out = {"steps": [], "annotator": [], "segmenter": [], "supervised": []}
  t0 = time.time()
  for i in range(cfg.steps + 1):
    if i == 0 or i == cfg.steps or (i >= cfg.eval_from and i % cfg.eval_every == 0):
      out["steps"].append(i)
      out["annotator"].append(miou(ann_pred(state)))
      out["segmenter"].append(miou(seg_pred(state.seg_params, x_t)))
      out["supervised"].append(miou(seg_pred(sup.seg_params, x_t)))
      log(f"step {i}: mIoU vs teacher: annotator {out['annotator'][-1]:.3f}, "
          f"LAGM segmenter {out['segmenter'][-1]:.3f}, supervised "
          f"{out['supervised'][-1]:.3f} ({time.time() - t0:.0f}s)")
    if i == cfg.steps:
      break
    state, _ = a_step(state, batch, gen.params)
    state, _ = s_step(state, gen.params)
    sup, _ = sup_step(sup, batch)
  out["seconds"] = time.time() - t0
  return out
