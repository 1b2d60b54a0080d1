"""compute_dtype='bfloat16' and matching.remat on a tiny setup, and the
device check (`launch/device_check.py --small`) on 2 fake CPU devices.

bfloat16: the annotator step compiles bfloat16 convolutions while every
parameter, optimiser state and metric stays float32, close to float32's
step (launch/precision_report.py gives the full comparison; README "Memory
and precision"). remat: the same function (to float32 rounding) under a
`jax.checkpoint`.
"""
import dataclasses
import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FAST_COMPILE
from gmseg import build
from gmseg import state as state_lib
from gmseg import steps
from gmseg.experiments import config_files
from gmseg.experiments import step_timing

REPO = pathlib.Path(__file__).resolve().parents[1]


def _labelled_grads(method):
  return jax.jit(functools.partial(steps.labelled_grads, method=method))


@pytest.fixture(scope="module")
def tiny():
  """configs/tiny.py's method, state, batch and its float32 target gradient."""
  config = config_files.load_config(REPO / "configs" / "tiny.py")
  config.lock()
  gen = build.generator(config)
  method = build.method(config, gen)
  batch = {k: jnp.asarray(v) for k, v in step_timing.random_batch(config).items()}
  state = jax.jit(lambda p: state_lib.init_state(method, p, 0))(gen.params)
  return gen, method, batch, state, _labelled_grads(method)(state, batch)


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_bfloat16_annotator_step(tiny):
  """bfloat16 convolutions; float32 parameters, optimiser states, metrics;
  the target gradient's norm near float32's (measured: 7% larger here; its
  cosine to float32's 0.893, launch/precision_report.py)."""
  gen, method, batch, state, g32 = tiny
  step = jax.jit(functools.partial(steps.annotator_step,
                                   method=dataclasses.replace(method, compute_dtype="bfloat16")))
  hlo = step.lower(state, batch, gen.params).as_text()
  assert "bf16" in hlo and "convolution" in hlo
  new, met = step(state, batch, gen.params)
  for tree in (new.ann_params, new.ann_opt_state, new.seg_params, new.seg_opt_state):
    dtypes = {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes <= {jnp.dtype(jnp.float32)}, dtypes
  assert all(jnp.asarray(v).dtype == jnp.float32 and np.isfinite(float(v)) for v in met.values())
  assert np.abs(_flat(new.ann_params) - _flat(state.ann_params)).max() > 0
  ratio = float(met["ann/g_real_norm"]) / np.linalg.norm(_flat(g32))
  assert 0.8 < ratio < 1.25 and abs(ratio - 1) > 1e-4, ratio  # close, not float32


def test_remat_same_gradient(tiny):
  """nothing_saveable recomputes S's forward: the same gradient to float32
  rounding; the annotator step's program holds the checkpoint."""
  gen, method, batch, state, g32 = tiny
  m = dataclasses.replace(method, remat="nothing_saveable")
  jaxpr = str(jax.make_jaxpr(functools.partial(steps.annotator_step, method=m))(
      state, batch, gen.params))
  assert "checkpoint" in jaxpr or "remat" in jaxpr
  np.testing.assert_allclose(_flat(_labelled_grads(m)(state, batch)), _flat(g32),
                             rtol=1e-4, atol=1e-7)


def test_bad_values_name_the_options(tiny):
  method = tiny[1]
  with pytest.raises(ValueError, match="bfloat16"):
    dataclasses.replace(method, compute_dtype="float16")
  with pytest.raises(ValueError, match="nothing_saveable"):
    dataclasses.replace(method, remat="all")


def test_device_check_small_two_devices():
  """The device check's --small run on 2 fake CPU devices, cut to its
  phase-two comparison and one timed step: N == 1 within the stated
  tolerance (measured 2.2e-5), one JSON line. The full --small run (phase
  one too, measured 1.4e-5; four steps in two dtypes) took 30 min on the
  loaded 2-core CPU; phase one's N == 1 is tests/test_parallel.py's."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "launch/device_check.py", "--small", "--batches=2", "--reps=1",
       "--dtypes=bfloat16", "--programs=supervised", "--checks=phase_two_step"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  assert proc.returncode == 0 and len(lines) == 1, proc.stderr[-3000:]
  r = json.loads(lines[0])
  assert r["devices"] == 2 and r["ok"], r["equivalence"]
  assert "phase_one_iteration" not in r["equivalence"]
  part = r["equivalence"]["phase_two_step"]
  assert 0 < part["update_rel_err"] < r["equivalence"]["tolerance"]["update_rtol"], part
  [t] = r["timing"]
  assert (t["batch"], t["compute_dtype"]) == (2, "bfloat16")
  assert t["supervised"]["s"] > 0 and t["supervised"]["finite"]
  assert t["supervised"]["xla_peak_mb"] > 0
