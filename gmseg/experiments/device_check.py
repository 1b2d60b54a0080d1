"""A device check for the first GPU or TPU at hand (issue 19 section 4).

`run(...)` on whatever devices are present:

 1. equivalence: one phase-one iteration (`steps.iteration_step`) and one
    phase-two step (`steps.supervised_step`, the step phase two, the
    supervised baseline and fine-tuning run) pmapped over all N local
    devices against the same step jitted on one device, same state and
    global batch, in float32. Compared: the parameter updates (new - old
    params) of A and S, relative error ||dN - d1|| / ||d1|| <= UPDATE_RTOL,
    and the metrics (losses, norms) to METRIC_RTOL. With N = 1 the pmapped
    program is still checked against the jitted one.
 2. timing: the annotator, segmenter, supervised and iteration steps
    (`step_timing`'s programs) for every (batch, compute dtype), medians of
    `reps` runs after one warm run, XLA's memory analysis of each compiled
    program, and the device's peak memory (`device.memory_stats()` where the
    backend has it: GPU, TPU) after each setup.
 3. one JSON-able dict (the launcher prints it on one line).

Setups: paper256 (StyleGAN2 256 with random weights of the real shapes +
UNet, device_memory.paper256_config) or, with `small`, a tiny StyleGAN2 32 +
small UNet that runs in seconds on CPU. Parameter updates rather than
parameters are compared: they are what the devices compute; the float32
reduction order differs between one device and N (the gradients are
pmeaned), which is what the tolerances allow, and GPUs run float32
convolutions in TF32 by default, so a GPU's figures are not bitwise.
"""
import functools
import time
from typing import Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmseg import build
from gmseg import config_base
from gmseg import parallel
from gmseg import state as state_lib
from gmseg import steps
from gmseg.experiments import device_memory
from gmseg.experiments import step_timing

UPDATE_RTOL = 1e-3   # relative error of the parameter updates, N devices vs 1
METRIC_RTOL = 1e-3   # of the scalar metrics (losses, gradient norms)
PROGRAMS = ("annotator", "segmenter", "supervised", "iteration")


def small_config(batch: int = 2, compute_dtype: str = "float32") -> ml_collections.ConfigDict:
  """A tiny setup of the paper256 shape: StyleGAN2 32x32 (step_timing's
  tiny), annotator 16 channels, UNet widths 8..32, 6 classes."""
  c = config_base.get_base()
  c.generator = ml_collections.ConfigDict({"name": "stylegan2_tiny_random",
                                           "kwargs": {"resolution": 32}})
  c.data.resolution = 32
  c.gen_transform = "none"
  c.annotator.tmp_channels = 16
  c.annotator.num_layers = 2
  c.segmenter.widths = (8, 16, 16, 32, 32)
  c.matching.params = "unet:all"
  c.compute_dtype = compute_dtype
  c.batch.labelled = c.batch.synthetic = c.batch.segmenter = batch
  return c.lock()


def _setup(small: bool, batch: int, compute_dtype: str = "float32"):
  if small:
    return small_config(batch, compute_dtype)
  return device_memory.paper256_config(batch, compute_dtype=compute_dtype)


def _generator(small: bool):
  """Tiny StyleGAN2 32, or StyleGAN2 256 (paper256) with random weights,
  initialised jitted on the default device."""
  if small:
    return step_timing.tiny_stylegan2(resolution=32)
  from gmseg.models import stylegan2 as sg  # pylint: disable=g-import-not-at-top
  arch = sg.Arch(resolution=256, channel_base=16384)
  params = jax.jit(sg.init_params, static_argnums=0)(arch, jax.random.PRNGKey(0))
  return sg.make_generator(params, arch, noise_mode="random", name="stylegan2_256_random")


def _rel(a, b) -> float:
  """||a - b|| / ||b|| over every leaf (a pytree)."""
  num = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  den = sum(float(jnp.sum(y ** 2)) for y in jax.tree.leaves(b))
  return float(np.sqrt(num / max(den, 1e-30)))


def _updates(new, old):
  return jax.tree.map(lambda n, o: np.asarray(n) - np.asarray(o),
                      (new.ann_params, new.seg_params), (old.ann_params, old.seg_params))


def _metrics_rel(m_n: dict, m_1: dict) -> float:
  worst = 0.0
  for k, v in m_1.items():
    v, w = float(v), float(np.ravel(m_n[k])[0])
    worst = max(worst, abs(w - v) / max(abs(v), 1e-6))
  return worst


CHECKS = ("phase_one_iteration", "phase_two_step")


def equivalence(small: bool = False, gen=None, checks: Sequence[str] = CHECKS) -> dict:
  """Part 1: N local devices against one, float32 (module docstring), for
  the steps named in `checks`.

  The global batch is the smallest multiple of N that is >= 2.
  """
  unknown = sorted(set(checks) - set(CHECKS))
  if unknown:
    raise ValueError(f"Unknown checks {unknown}; use some of {CHECKS}.")
  n = jax.local_device_count()
  global_batch = n * max(1, -(-2 // n))
  config = _setup(small, global_batch)
  gen = gen or _generator(small)
  batch = step_timing.random_batch(config)
  m1 = build.method(config, gen, devices=1)
  mn = build.method(config, gen, devices=n)
  gen_params = jax.device_put(gen.params)
  start = jax.device_get(jax.jit(lambda p: state_lib.init_state(m1, p, config.seed))(gen_params))
  out = {"devices": n, "global_batch": global_batch}

  programs = {
      "phase_one_iteration": (
          jax.jit(functools.partial(steps.iteration_step, method=m1)),
          parallel.pmap_iteration(mn), True),
      "phase_two_step": (
          jax.jit(functools.partial(steps.supervised_step, method=m1)),
          parallel.pmap_train_step(functools.partial(steps.supervised_step, method=mn)),
          False),
  }
  for name, (one_fn, many_fn, with_gen) in programs.items():
    if name not in checks:
      continue
    logging.info("device check: %s, 1 device against %d", name, n)
    st = start
    gen_args = (gen_params,) if with_gen else ()
    s1, met1 = one_fn(jax.device_put(st), jax.device_put(batch), *gen_args)
    rep_gen = (parallel.replicate(gen.params),) if with_gen else ()
    sn, metn = many_fn(parallel.replicate(st), parallel.shard_batch(batch, n), *rep_gen)
    sn = jax.device_get(parallel.unreplicate(sn))
    upd_rel = _rel(_updates(sn, st), _updates(jax.device_get(s1), st))
    met_rel = _metrics_rel(jax.device_get(metn), jax.device_get(met1))
    out[name] = {"update_rel_err": upd_rel, "metrics_rel_err": met_rel,
                 "ok": bool(upd_rel <= UPDATE_RTOL and met_rel <= METRIC_RTOL)}
  out["tolerance"] = {"update_rtol": UPDATE_RTOL, "metric_rtol": METRIC_RTOL}
  return out


def _peak_device_mb() -> Optional[float]:
  stats = jax.local_devices()[0].memory_stats()
  if not stats:
    return None
  return stats.get("peak_bytes_in_use", 0) / 2**20


def timing(small: bool = False, batches: Sequence[int] = (2, 8),
           dtypes: Sequence[str] = ("float32", "bfloat16"),
           programs: Sequence[str] = PROGRAMS, reps: int = 3,
           budget_s: float = 420.0, gen=None) -> list[dict]:
  """Part 2: step times and memory for every (batch, dtype) on one device.

  Setups are skipped (reported as such) once `budget_s` seconds have passed.
  """
  unknown = sorted(set(programs) - set(PROGRAMS))
  if unknown:
    raise ValueError(f"Unknown programs {unknown}; use some of {PROGRAMS}.")
  gen = gen or _generator(small)
  t0, rows = time.perf_counter(), []
  for b in batches:
    for dtype in dtypes:
      row = {"batch": b, "compute_dtype": dtype}
      if time.perf_counter() - t0 > budget_s:
        rows.append({**row, "skipped": f"over the {budget_s:.0f} s budget"})
        continue
      logging.info("device check: timing batch %d, %s", b, dtype)
      config = _setup(small, b, dtype)
      method = build.method(config, gen, devices=1)
      gen_params = jax.device_put(gen.params)
      batch = jax.device_put({k: jnp.asarray(v) for k, v in
                              step_timing.random_batch(config).items()})
      state = jax.jit(lambda p, m=method, c=config: state_lib.init_state(m, p, c.seed))(
          gen_params)
      args = {"annotator": (batch, gen_params), "segmenter": (gen_params,),
              "supervised": (batch,), "iteration": (batch, gen_params)}
      for name in programs:
        t = time.perf_counter()
        compiled = jax.jit(functools.partial(device_memory.PROGRAMS[name], method=method),
                           donate_argnums=0).lower(state, *args[name]).compile()
        compile_s = time.perf_counter() - t
        logging.info("device check: %s compiled in %.1f s", name, compile_s)
        times = []
        for _ in range(reps + 1):  # the first run is a warm-up
          t = time.perf_counter()
          state, metrics = compiled(state, *args[name])
          jax.block_until_ready((state, metrics))
          times.append(time.perf_counter() - t)
        row[name] = {"s": float(np.median(times[1:])), "compile_s": compile_s,
                     "xla_peak_mb": device_memory.compiled_memory(compiled)["peak_mb"],
                     "finite": bool(all(np.isfinite(float(v)) for v in metrics.values()))}
      row["device_peak_mb"] = _peak_device_mb()  # cumulative over the process
      rows.append(row)
  return rows


def run(small: bool = False, batches: Sequence[int] = (2, 8),
        dtypes: Sequence[str] = ("float32", "bfloat16"),
        programs: Sequence[str] = PROGRAMS, reps: int = 3,
        budget_s: float = 420.0, checks: Sequence[str] = CHECKS) -> dict:
  """Parts 1-3: the equivalence check and the timing table as one dict."""
  t = time.perf_counter()
  gen = _generator(small)
  dev = jax.local_devices()[0]
  out = {"backend": jax.default_backend(), "device_kind": dev.device_kind,
         "devices": jax.local_device_count(), "processes": jax.process_count(),
         "jax": jax.__version__, "setup": "small" if small else "paper256"}
  out["equivalence"] = equivalence(small, gen, checks)
  out["timing"] = timing(small, batches, dtypes, programs, reps, budget_s, gen)
  out["ok"] = all(v["ok"] for k, v in out["equivalence"].items()
                  if isinstance(v, dict) and "ok" in v)
  out["wall_s"] = time.perf_counter() - t
  return out
