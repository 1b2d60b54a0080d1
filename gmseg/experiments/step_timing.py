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
import json
import subprocess
import sys
import time
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from gmseg import build
from gmseg import config_base
from gmseg import host_memory
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
  # Jitted: one compiled program instead of one per Flax op, whose compiler
  # memory (~400 MB) the process kept.
  params = jax.jit(sg.init_params, static_argnums=0)(arch, jax.random.PRNGKey(seed))
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


def _setup(config, gen, batch):
  method = build.method(config, gen, devices=1)
  gen_params = jax.device_put(gen.params)
  batch = jax.device_put({"image": np.asarray(batch["image"], np.float32),
                          "label": np.asarray(batch["label"], np.int32)})
  state = jax.jit(lambda p: state_lib.init_state(method, p, config.seed))(gen_params)
  args = {"annotator": (batch, gen_params), "segmenter": (gen_params,),
          "supervised": (batch,), "iteration": (batch, gen_params)}
  return method, state, args


_STEP_FNS = {"annotator": steps.annotator_step, "segmenter": steps.segmenter_step,
             "supervised": steps.supervised_step, "iteration": steps.iteration_step}


def program_memory(config, gen: generators.Generator, batch: dict, program: str,
                   runs: int = 3) -> dict:
  """Host memory of one program, measured in this process (call it in a
  fresh one: `memory_in_subprocess`).

  Setup (generator, method, initial state) is done first; its compiled
  helpers are dropped and the heap trimmed before `program` is compiled, as
  a training run would keep only its step programs.

  Returns:
    MiB: 'after_setup' (resident after setup and trimming; JAX's own
    baseline is `peak_rss_mb` of a process that only imported it),
    'compile_peak', 'after_runs' (resident after `runs` runs, trimmed),
    'peak_rss_mb' (the process peak); 'xla_temp_mb' (XLA's scratch buffers
    of the program), 'state_mb' (the TrainState), 'compile_s'.
  """
  method, state, args = _setup(config, gen, batch)
  jax.block_until_ready(state)
  nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree)) / 2**20
  out = {"program": program, "state_mb": nbytes(state)}
  jax.clear_caches()
  host_memory.release()
  out["after_setup"] = host_memory.rss_mb()
  t = time.perf_counter()
  compiled = jax.jit(functools.partial(_STEP_FNS[program], method=method),
                     donate_argnums=0).lower(state, *args[program]).compile()
  out["compile_s"] = time.perf_counter() - t
  out["compile_peak"] = host_memory.peak_rss_mb()
  analysis = compiled.memory_analysis()
  out["xla_temp_mb"] = (analysis.temp_size_in_bytes / 2**20 if analysis is not None
                        else float("nan"))
  host_memory.release()
  for _ in range(runs):
    state, metrics = compiled(state, *args[program])
    jax.block_until_ready((state, metrics))
  host_memory.release()
  out["after_runs"] = host_memory.rss_mb()
  out["peak_rss_mb"] = host_memory.peak_rss_mb()
  return out


def memory_in_subprocess(preset: str, program: str = "iteration",
                         overrides: Sequence[str] = ()) -> dict:
  """`program_memory` of a preset in a fresh Python process (its own peak).

  Also measures JAX's baseline: a process that imports jax and initialises
  its CPU backend ('jax_baseline_mb').
  """
  code = ("import json, sys; from gmseg import compile_cache; compile_cache.enable(); "
          "from gmseg.experiments import step_timing as t; "
          "print('RESULT', json.dumps(t._memory_child(*json.loads(sys.argv[1]))))")
  base = ("import jax, json; jax.numpy.zeros(1).block_until_ready(); "
          "from gmseg import host_memory; "
          "print('RESULT', json.dumps({'jax_baseline_mb': host_memory.peak_rss_mb()}))")
  result = {}
  for src, argv in ((base, []), (code, [json.dumps([preset, program, list(overrides)])])):
    proc = subprocess.run([sys.executable, "-c", src, *argv], capture_output=True,
                          text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
      raise RuntimeError(f"memory measurement of {preset}/{program} failed:\n"
                         f"{proc.stderr[-2000:]}")
    result.update(json.loads(lines[-1][len("RESULT "):]))
  return result


def _memory_child(preset: str, program: str, overrides: Sequence[str]) -> dict:
  config = config_files.apply_overrides(preset_config(preset), overrides).lock()
  return program_memory(config, preset_generator(config), random_batch(config), program)


def time_steps(config, gen: generators.Generator, batch: dict, reps: int = 5) -> dict:
  """Times the four jitted programs side by side (see the module docstring).

  Args:
    config: a config with the keys of gmseg.config_base.
    gen: the frozen generator.
    batch: labelled batch `{'image': [B, R, R, 3], 'label': [B, R, R]}`.
    reps: interleaved timed rounds (after one untimed run of each).
  Returns:
    {'annotator_s', 'segmenter_s', 'supervised_s', 'iteration_s',
     'labelling_s' (G + A forward of a segmenter batch) (medians),
     'a_over_sup', 's_over_sup', 'labelling_over_sup', 'gflops' (XLA's count
     per program), 'a_over_sup_flops', 's_over_sup_flops',
     'labelling_over_sup_flops', 'compile_s' (lower + compile),
     'compile_total_s', 'first_run_s', 'min_max_s', 'benchmark_peak_rss_mb',
     'benchmark_rss_after_mb' (this process), 'reps', 'setup'}.
  """
  if reps < 1:
    raise ValueError(f"reps={reps} must be >= 1.")
  method, state, args = _setup(config, gen, batch)
  jit = lambda fn: jax.jit(functools.partial(fn, method=method), donate_argnums=0)
  fns = _STEP_FNS

  compiled, compile_s, flops = {}, {}, {}
  for name in STEP_NAMES:
    t = time.perf_counter()
    compiled[name] = jit(fns[name]).lower(state, *args[name]).compile()
    compile_s[name] = time.perf_counter() - t
    flops[name] = _flops(compiled[name])

  # What the segmenter step adds to a supervised step: its samples and their
  # labels (G and A forward of one segmenter batch, no update).
  gen_params = args["segmenter"][0]
  z = jax.random.normal(jax.random.PRNGKey(1), (method.seg_batch, method.z_dim))
  key = jax.random.PRNGKey(2)
  t = time.perf_counter()
  compiled["labelling"] = jax.jit(
      lambda st, gp: steps.annotate_samples(method, st, gp, z, key)).lower(
          state, gen_params).compile()
  compile_s["labelling"] = time.perf_counter() - t
  flops["labelling"] = _flops(compiled["labelling"])
  names = STEP_NAMES + ("labelling",)

  def run(name, st):
    if name == "labelling":
      jax.block_until_ready(compiled[name](st, gen_params))
      return st
    st, metrics = compiled[name](st, *args[name])
    return jax.block_until_ready((st, metrics))[0]

  first_run_s = {}
  for name in names:
    t = time.perf_counter()
    state = run(name, state)
    first_run_s[name] = time.perf_counter() - t
  times = {name: [] for name in names}
  for _ in range(reps):
    for name in names:
      t = time.perf_counter()
      state = run(name, state)
      times[name].append(time.perf_counter() - t)

  med = {name: float(np.median(v)) for name, v in times.items()}
  count = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
  return {
      **{f"{name}_s": med[name] for name in names},
      "a_over_sup": med["annotator"] / med["supervised"],
      "s_over_sup": med["segmenter"] / med["supervised"],
      # The segmenter step's floor over a supervised step: 1 + this.
      "labelling_over_sup": med["labelling"] / med["supervised"],
      "labelling_over_sup_flops": flops["labelling"] / flops["supervised"],
      # XLA's operation count of each compiled program: a ratio that does not
      # depend on the machine's load (timings on a shared CPU do).
      "gflops": {n: f / 1e9 for n, f in flops.items()},
      "a_over_sup_flops": flops["annotator"] / flops["supervised"],
      "s_over_sup_flops": flops["segmenter"] / flops["supervised"],
      "compile_s": compile_s,
      "compile_total_s": sum(compile_s.values()),
      "first_run_s": first_run_s,
      "min_max_s": {n: [float(min(v)), float(max(v))] for n, v in times.items()},
      # This benchmark process (five programs compiled and held): not the
      # method's memory; see memory_in_subprocess.
      "benchmark_peak_rss_mb": host_memory.peak_rss_mb(),
      "benchmark_rss_after_mb": host_memory.rss_mb(),
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


def run_preset(name: str, reps: int = 5, overrides: Sequence[str] = (),
               memory: bool = True) -> dict:
  """`time_steps` of a preset (with `key=value` config overrides) and, with
  `memory`, the iteration program's host memory in a fresh process:
  'peak_rss_mb' (the method's peak: setup, compile or cache load, runs) and
  'memory' (`memory_in_subprocess`)."""
  config = config_files.apply_overrides(preset_config(name), overrides).lock()
  result = time_steps(config, preset_generator(config), random_batch(config), reps)
  result = {"preset": name, "overrides": list(overrides), **result}
  if memory:
    mem = memory_in_subprocess(name, "iteration", overrides)
    result.update(peak_rss_mb=mem["peak_rss_mb"], memory=mem)
  return result


TABLE_HEADER = ("| preset | annotator s | segmenter s | supervised s | iteration s | "
                "A/sup | S/sup | A/sup flops | S/sup flops | G+A fwd / sup | "
                "compile s (A, S, sup, iter) | peak RSS MB |\n"
                "|---|---|---|---|---|---|---|---|---|---|---|---|")


def markdown_row(r: dict, label: Optional[str] = None) -> str:
  """One row of the step-timing table (TABLE_HEADER) for a `run_preset` result.

  Peak RSS: the iteration program in its own process where measured
  (`run_preset(memory=True)`), else this benchmark process's.
  """
  c = r["compile_s"]
  comp = ", ".join(f"{c[n]:.0f}" for n in STEP_NAMES)
  peak = r.get("peak_rss_mb", r["benchmark_peak_rss_mb"])
  return (f"| {label or r['preset']} | {r['annotator_s']:.3f} | {r['segmenter_s']:.3f} | "
          f"{r['supervised_s']:.3f} | {r['iteration_s']:.3f} | {r['a_over_sup']:.2f} | "
          f"{r['s_over_sup']:.2f} | {r['a_over_sup_flops']:.2f} | {r['s_over_sup_flops']:.2f} | "
          f"{r['labelling_over_sup']:.2f} | {comp} | {peak:.0f} |")
