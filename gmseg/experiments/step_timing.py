"""What one step of the method costs: annotator, segmenter, supervised, iteration.

`time_steps(config, gen, batch)` compiles the jitted annotator step
(gradient matching), segmenter step, supervised step (the same segmenter on
the labelled batch) and the whole iteration (`steps.iteration_step`, one
program), then runs `reps` interleaved rounds of the four in one process,
blocking on every result, and reports medians, ratios to the supervised
step, compile seconds and peak host memory. Ratios measured this way are
comparable across machines; absolute seconds are not (a shared CPU).

Presets (`preset_config`), the setups of issue 10:
  a: tiny random StyleGAN2 64x64 (z/w 32, channels <= 64, as the reference
     fixture sg2_tiny64), FPN annotator 128 channels, 6 classes, UNet widths
     64..512 (13.4M parameters, all matched), GroupNorm, SGD, batches 2/2/2;
  b: as a with UNet widths / 4;
  c: as a with batches 8/8/8;
  faces: configs/faces.py (the DCGAN faces job).
The labelled batch is random (images in [-1, 1], labels with an ignored
block): the cost does not depend on the content.
"""
import functools
import resource
import sys
import time
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from gmseg import build
from gmseg import config_base
from gmseg import state as state_lib
from gmseg import steps
from gmseg.experiments import config_files
from gmseg.models import generators

PRESETS = ("a", "b", "c", "faces")
PAPER_WIDTHS = (64, 128, 256, 512, 512)
STEP_NAMES = ("annotator", "segmenter", "supervised", "iteration")


def tiny_stylegan2(resolution: int = 64, seed: int = 0) -> generators.Generator:
  """A randomly initialised StyleGAN2-ADA generator of the reference fixtures'
  size (z/w 32, 2 mapping layers, channel_base 1024, channel_max 64)."""
  from gmseg.models import stylegan2 as sg  # lazy: only the presets need it
  arch = sg.Arch(z_dim=32, w_dim=32, resolution=resolution, channel_base=1024,
                 channel_max=64, mapping_layers=2)
  params = sg.init_params(arch, jax.random.PRNGKey(seed))
  return sg.make_generator(params, arch, noise_mode="random",
                           name=f"stylegan2_tiny{resolution}_random")


def preset_config(name: str) -> ml_collections.ConfigDict:
  """The unlocked config of preset `name` (see the module docstring)."""
  if name not in PRESETS:
    raise ValueError(f"Unknown preset {name!r}; use one of {PRESETS}.")
  if name == "faces":
    return config_files.load_config(config_files.DEFAULT_CONFIG, "num=2")
  c = config_base.get_base()
  c.class_names = config_base.FASSEG_CLASSES
  c.generator = ml_collections.ConfigDict({"name": "stylegan2_tiny_random",
                                           "kwargs": {"resolution": 64}})
  c.data.resolution = 64
  c.gen_transform = "none"
  c.annotator.tmp_channels = 128
  c.annotator.num_layers = 3
  c.segmenter.arch = "unet"
  c.segmenter.widths = (tuple(w // 4 for w in PAPER_WIDTHS) if name == "b"
                        else PAPER_WIDTHS)
  c.matching.params = "unet:all"
  size = 8 if name == "c" else 2
  c.batch.labelled = c.batch.synthetic = c.batch.segmenter = size
  return c


def preset_generator(config) -> generators.Generator:
  """The generator of a preset config (the tiny random StyleGAN2 is built
  here, not from a checkpoint)."""
  if config.generator.name == "stylegan2_tiny_random":
    return tiny_stylegan2(**dict(config.generator.kwargs))
  return build.generator(config)


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
  """A labelled batch of `batch.labelled` random images and labels.

  Returns:
    {'image': float32 `[B, R, R, 3]` in [-1, 1], 'label': int32 `[B, R, R]`
    with the top-left eighth of every image ignored (255)}.
  """
  rng = np.random.default_rng(seed)
  b, r = config.batch.labelled, config.data.resolution
  labels = rng.integers(0, build.num_classes(config), (b, r, r)).astype(np.int32)
  labels[:, :r // 8, :r // 8] = 255
  return {"image": rng.uniform(-1, 1, (b, r, r, 3)).astype(np.float32),
          "label": labels}


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far, MiB (ru_maxrss)."""
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return (rss if sys.platform == "darwin" else rss * 1024) / 2**20


def rss_mb() -> float:
  """Resident memory of this process now, MiB (Linux /proc; nan elsewhere)."""
  try:
    pages = int(open("/proc/self/statm").read().split()[1])
  except (OSError, IndexError, ValueError):
    return float("nan")
  return pages * resource.getpagesize() / 2**20


def time_steps(config, gen: generators.Generator, batch: dict, reps: int = 5) -> dict:
  """Times the four jitted programs side by side (see the module docstring).

  Args:
    config: a config with the keys of gmseg.config_base.
    gen: the frozen generator.
    batch: labelled batch `{'image': [B, R, R, 3], 'label': [B, R, R]}`.
    reps: interleaved timed rounds (after one untimed run of each).
  Returns:
    {'annotator_s', 'segmenter_s', 'supervised_s', 'iteration_s' (medians),
     'a_over_sup', 's_over_sup', 'gflops' (XLA's count per program),
     'a_over_sup_flops', 's_over_sup_flops', 'compile_s' (lower + compile),
     'compile_total_s', 'first_run_s', 'min_max_s', 'peak_rss_mb',
     'rss_after_mb', 'reps',
     'setup'}.
  """
  if reps < 1:
    raise ValueError(f"reps={reps} must be >= 1.")
  method = build.method(config, gen, devices=1)
  gen_params = jax.device_put(gen.params)
  batch = jax.device_put({"image": np.asarray(batch["image"], np.float32),
                          "label": np.asarray(batch["label"], np.int32)})
  state = jax.jit(lambda p: state_lib.init_state(method, p, config.seed))(gen_params)
  jit = lambda fn: jax.jit(functools.partial(fn, method=method), donate_argnums=0)
  args = {"annotator": (batch, gen_params), "segmenter": (gen_params,),
          "supervised": (batch,), "iteration": (batch, gen_params)}
  fns = {"annotator": steps.annotator_step, "segmenter": steps.segmenter_step,
         "supervised": steps.supervised_step, "iteration": steps.iteration_step}

  compiled, compile_s, flops = {}, {}, {}
  for name in STEP_NAMES:
    t = time.perf_counter()
    compiled[name] = jit(fns[name]).lower(state, *args[name]).compile()
    compile_s[name] = time.perf_counter() - t
    flops[name] = _flops(compiled[name])

  def run(name, st):
    st, metrics = compiled[name](st, *args[name])
    return jax.block_until_ready((st, metrics))[0]

  first_run_s = {}
  for name in STEP_NAMES:
    t = time.perf_counter()
    state = run(name, state)
    first_run_s[name] = time.perf_counter() - t
  times = {name: [] for name in STEP_NAMES}
  for _ in range(reps):
    for name in STEP_NAMES:
      t = time.perf_counter()
      state = run(name, state)
      times[name].append(time.perf_counter() - t)

  med = {name: float(np.median(v)) for name, v in times.items()}
  count = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
  return {
      **{f"{name}_s": med[name] for name in STEP_NAMES},
      "a_over_sup": med["annotator"] / med["supervised"],
      "s_over_sup": med["segmenter"] / med["supervised"],
      # XLA's operation count of each compiled program: a ratio that does not
      # depend on the machine's load (timings on a shared CPU do).
      "gflops": {n: f / 1e9 for n, f in flops.items()},
      "a_over_sup_flops": flops["annotator"] / flops["supervised"],
      "s_over_sup_flops": flops["segmenter"] / flops["supervised"],
      "compile_s": compile_s,
      "compile_total_s": sum(compile_s.values()),
      "first_run_s": first_run_s,
      "min_max_s": {n: [float(min(v)), float(max(v))] for n, v in times.items()},
      "peak_rss_mb": peak_rss_mb(),  # compilation included
      "rss_after_mb": rss_mb(),       # the four programs compiled and run
      "reps": reps,
      "setup": {
          "generator": gen.name, "resolution": config.data.resolution,
          "batch": dict(config.batch), "segmenter": config.segmenter.arch,
          "segmenter_widths": list(config.segmenter.widths),
          "segmenter_norm": config.segmenter.norm,
          "annotator_tmp_channels": config.annotator.tmp_channels,
          "optimizers": [config.ann_optim.name, config.seg_optim.name],
          "matching": config.matching.to_dict(),
          "matched_tensors": len(method.matched),
          "annotator_params": count(state.ann_params),
          "segmenter_params": count(state.seg_params),
          "backend": jax.default_backend(), "jax": jax.__version__,
      },
  }


def _flops(compiled) -> float:
  """Floating-point operations XLA counts in a compiled program (nan if none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", float("nan")))


def run_preset(name: str, reps: int = 5, overrides: Sequence[str] = ()) -> dict:
  """`time_steps` of a preset (with `key=value` config overrides)."""
  config = config_files.apply_overrides(preset_config(name), overrides).lock()
  result = time_steps(config, preset_generator(config), random_batch(config), reps)
  return {"preset": name, "overrides": list(overrides), **result}


TABLE_HEADER = ("| preset | annotator s | segmenter s | supervised s | iteration s | "
                "A/sup | S/sup | A/sup flops | S/sup flops | compile s (A, S, sup, iter) "
                "| peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_row(r: dict, label: Optional[str] = None) -> str:
  """One row of the step-timing table (TABLE_HEADER) for a `run_preset` result."""
  c = r["compile_s"]
  comp = ", ".join(f"{c[n]:.0f}" for n in STEP_NAMES)
  return (f"| {label or r['preset']} | {r['annotator_s']:.3f} | {r['segmenter_s']:.3f} | "
          f"{r['supervised_s']:.3f} | {r['iteration_s']:.3f} | {r['a_over_sup']:.2f} | "
          f"{r['s_over_sup']:.2f} | {r['a_over_sup_flops']:.2f} | {r['s_over_sup_flops']:.2f} | "
          f"{comp} | {r['peak_rss_mb']:.0f} |")
