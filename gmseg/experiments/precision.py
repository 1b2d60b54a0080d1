"""How far bfloat16 compute (`compute_dtype='bfloat16'`) moves the method
from float32: one annotator step, then `iterations` loop iterations.

`compare(config, gen, batch)` builds the method twice (float32, bfloat16),
same initial state, same labelled batch and keys, and reports:

  one step (from the same state): cosine between the two runs' target
  gradients g_real and synthetic gradients g_syn (all matched tensors as one
  vector, and the smallest per-tensor cosine), the matching losses, cosine of
  the annotator's gradient, and the annotator's soft labels (mean / max
  absolute difference, argmax agreement);
  after `iterations` iterations of each run from the same start: the mean
  matching loss of the last tenth of the iterations, the annotator's soft
  labels on fixed latents (as above), and the relative distance of the
  annotator's parameters between the runs next to how far float32 training
  moved them from the start (the scale of the difference).

The comparison runs on this machine's default backend; on CPU, XLA runs
bfloat16 convolutions slower than float32 (no native support), so only the
numbers, not the times, carry over to accelerators.
"""
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from gmseg import build
from gmseg import state as state_lib
from gmseg import steps


def _flat(tree) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _cosine(a, b) -> float:
  a, b = _flat(a), _flat(b)
  return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def _min_tensor_cosine(a: dict, b: dict) -> float:
  """Smallest cosine over the tensors (non-zero ones) of two gradient dicts."""
  out = []
  for k in a:
    na, nb = float(jnp.linalg.norm(a[k])), float(jnp.linalg.norm(b[k]))
    if na > 0 and nb > 0:
      out.append(float(jnp.vdot(jnp.ravel(a[k]), jnp.ravel(b[k])) / (na * nb)))
  return min(out)


def _labels_diff(p32: jax.Array, p16: jax.Array) -> dict:
  """Soft labels `[B, H, W, C]` of the two runs: |difference| and argmax agreement."""
  d = jnp.abs(p32 - p16)
  return {"mean_abs": float(jnp.mean(d)), "max_abs": float(jnp.max(d)),
          "argmax_agree": float(jnp.mean(jnp.argmax(p32, -1) == jnp.argmax(p16, -1)))}


def _one_step(method, state, batch, gen_params):
  """(g_real, g_syn, matching loss, annotator grads, soft labels) at `state`."""
  g_real = steps.labelled_grads(state, batch, method=method)
  (dist, (_, g_syn, _, _)), grads = jax.value_and_grad(steps.matching_loss, has_aux=True)(
      state.ann_params, state, g_real, gen_params, method=method)
  return g_real, g_syn, dist, grads


def _soft_labels(method, state, gen_params, z):
  return steps.annotate_samples(method, state, gen_params, z, jax.random.PRNGKey(7))[1]


def compare(config, gen, batch: dict, iterations: int = 100) -> dict:
  """bfloat16 against float32 on `config` (see the module docstring).

  Args:
    config: a locked config (its compute_dtype is ignored: both are run).
    gen: the frozen generator.
    batch: labelled batch `{'image': [B, R, R, 3], 'label': [B, R, R]}`.
    iterations: loop iterations of each run (0 = the one-step figures only).
  Returns:
    JSON-able dict: 'one_step', 'after' (when iterations > 0), 'seconds'.
  """
  m32 = dataclasses.replace(build.method(config, gen), compute_dtype="float32")
  m16 = dataclasses.replace(m32, compute_dtype="bfloat16")
  gen_params = jax.device_put(gen.params)
  batch = jax.device_put({"image": jnp.asarray(batch["image"], jnp.float32),
                          "label": jnp.asarray(batch["label"], jnp.int32)})
  start = jax.jit(lambda p: state_lib.init_state(m32, p, config.seed))(gen_params)
  z = jax.random.normal(jax.random.PRNGKey(3), (8, m32.z_dim))

  one = {}
  for name, m in (("f32", m32), ("bf16", m16)):
    one[name] = jax.jit(functools.partial(_one_step, m))(start, batch, gen_params)
  (r32, s32, d32, a32), (r16, s16, d16, a16) = one["f32"], one["bf16"]
  labels = {name: jax.jit(functools.partial(_soft_labels, m))(start, gen_params, z)
            for name, m in (("f32", m32), ("bf16", m16))}
  out = {"one_step": {
      "g_real_cosine": _cosine(r32, r16), "g_real_min_tensor_cosine": _min_tensor_cosine(r32, r16),
      "g_syn_cosine": _cosine(s32, s16), "g_syn_min_tensor_cosine": _min_tensor_cosine(s32, s16),
      "match_loss_f32": float(d32), "match_loss_bf16": float(d16),
      "annotator_grad_cosine": _cosine(a32, a16),
      "soft_labels": _labels_diff(labels["f32"], labels["bf16"]),
  }, "iterations": iterations, "seconds": {}}
  if not iterations:
    return out

  finals, losses = {}, {}
  for name, m in (("f32", m32), ("bf16", m16)):
    step = jax.jit(functools.partial(steps.iteration_step, method=m))
    state, history = start, []
    t = time.perf_counter()
    for _ in range(iterations):
      state, metrics = step(state, batch, gen_params)
      history.append(metrics["ann/match_loss"])
    jax.block_until_ready(state)
    out["seconds"][name] = time.perf_counter() - t
    finals[name] = state
    losses[name] = np.asarray(history)
  tail = max(1, iterations // 10)
  p0, p32, p16 = (_flat(s.ann_params) for s in (start, finals["f32"], finals["bf16"]))
  labels = {name: jax.jit(functools.partial(_soft_labels, m32))(finals[name], gen_params, z)
            for name in ("f32", "bf16")}
  out["after"] = {
      "match_loss_f32": float(np.mean(losses["f32"][-tail:])),
      "match_loss_bf16": float(np.mean(losses["bf16"][-tail:])),
      "match_loss_first_f32": float(losses["f32"][0]),
      # Annotator parameters: distance between the runs / norm, and how far
      # float32 training moved them (distance from the start / norm).
      "ann_params_rel_diff": float(jnp.linalg.norm(p32 - p16) / jnp.linalg.norm(p32)),
      "ann_params_rel_moved_f32": float(jnp.linalg.norm(p32 - p0) / jnp.linalg.norm(p32)),
      "ann_update_cosine": _cosine(p32 - p0, p16 - p0),
      # Both final annotators labelled in float32: the training difference alone.
      "soft_labels": _labels_diff(labels["f32"], labels["bf16"]),
      "g_norms_finite": bool(np.isfinite(losses["bf16"]).all()),
  }
  return out
