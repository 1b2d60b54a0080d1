"""Gradient matching: parameter selection, per-example gradients, distances.

Parameters are addressed by their `/`-joined Flax paths (e.g.
`down3/c1_conv/kernel`, `classifier/aspp/b1_conv/kernel`). A matched subset is
chosen by a regex over those paths or by a named preset per segmenter.
"""
import re
from typing import Callable, Sequence

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp

from gmseg.typing import Params

# Presets per segmenter family: name -> regex over '/'-joined param paths.
# UNet names: inc, down1..4, up1..4, outc (gmseg/models/unet.py).
# DeepLab names: backbone/{stem,layer1..4}, classifier (gmseg/models/deeplab.py).
PRESETS: dict[str, dict[str, str]] = {
    "unet": {
        "all": r".*",
        "out": r"^outc/",
        "down": r"^(inc|down\d)/",
        "up": r"^up\d/",
        "inc": r"^inc/",
        "down12_up12": r"^(down[12]|up[12])/",
        "down34_up34": r"^(down[34]|up[34])/",
        "convs": r"_conv/",
        "norms": r"_norm/",
        "outermost": r"^(outc|down1|up4)/",
        "second": r"^(outc|down2|up3)/",
    },
    "deeplab": {
        "head": r"^classifier/",
        "head_layer4": r"^(classifier|backbone/layer4)/",
        "head_layer3_4": r"^(classifier|backbone/layer[34])/",
        "head_layer2_4": r"^(classifier|backbone/layer[234])/",
        "head_layer1_4": r"^(classifier|backbone/layer[1234])/",
    },
}

METRICS = ("cosine", "l2", "dot")
VECTOR_MODES = ("zero", "exclude", "match")


def flatten(params: Params) -> dict[str, jax.Array]:
  """`{'a': {'b': x}}` -> `{'a/b': x}`."""
  return traverse_util.flatten_dict(params, sep="/")


def unflatten(flat: dict[str, jax.Array]) -> Params:
  return traverse_util.unflatten_dict(flat, sep="/")


def resolve_pattern(selection: str, family: str | None = None) -> str:
  """Turns a preset name (`unet:outermost`, or `outermost` with `family`) or a
  raw regex (`re:<regex>`) into a regex."""
  if selection.startswith("re:"):
    return selection[3:]
  fam, _, name = selection.rpartition(":")
  fam = fam or family
  if fam not in PRESETS:
    raise ValueError(f"Unknown segmenter family {fam!r} in selection "
                     f"{selection!r}; families: {sorted(PRESETS)}. Write "
                     "'<family>:<preset>' or 're:<regex>'.")
  if name not in PRESETS[fam]:
    raise ValueError(f"Unknown preset {name!r} for {fam}; presets: "
                     f"{sorted(PRESETS[fam])} (or pass 're:<regex>').")
  return PRESETS[fam][name]


def select_paths(params: Params, pattern: str) -> tuple[str, ...]:
  """Sorted parameter paths matched (re.search) by `pattern`.

  Raises:
    ValueError listing the existing paths when nothing matches.
  """
  paths = sorted(flatten(params))
  rx = re.compile(pattern)
  chosen = tuple(p for p in paths if rx.search(p))
  if not chosen:
    raise ValueError(f"Parameter regex {pattern!r} matches no parameter. "
                     f"Existing paths:\n  " + "\n  ".join(paths))
  return chosen


def split(params: Params, paths: Sequence[str]):
  """Splits params into (matched flat dict, rest flat dict)."""
  flat = flatten(params)
  chosen = set(paths)
  return ({k: v for k, v in flat.items() if k in chosen},
          {k: v for k, v in flat.items() if k not in chosen})


def merge(matched: dict, rest: dict) -> Params:
  return unflatten({**rest, **matched})


def per_example_grads(loss_fn: Callable, matched: dict, *batch) -> dict:
  """Per-example gradients with `vmap(grad)`.

  Args:
    loss_fn: `(matched, *example) -> scalar`, one example without batch axis.
    matched: the parameters to differentiate (a flat dict).
    *batch: arrays with a leading batch axis `[B, ...]`, split per example.
  Returns:
    gradients shaped like `matched` with a leading `[B]` axis.
  """
  return jax.vmap(jax.grad(loss_fn), in_axes=(None,) + (0,) * len(batch))(
      matched, *batch)


def _rows(g: jax.Array) -> jax.Array:
  """`[..., out]` -> `[out, -1]`: Flax keeps the output channel last (conv
  kernels HWIO, dense `[in, out]`); the paper's code puts it first."""
  return jnp.moveaxis(g, -1, 0).reshape(g.shape[-1], -1)


def _clamped_norm(x: jax.Array, eps: float) -> jax.Array:
  """max(|x_r|, eps) per row of `[rows, n]`, as sqrt(max(|x_r|^2, eps^2)):
  the same value, but the gradient at a zero row is 0, not NaN (|x| has no
  derivative at 0, and max passes a 0 * NaN back)."""
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), eps * eps))


def tensor_distance(gs: jax.Array, gr: jax.Array, metric: str = "cosine",
                    row_reduction: str = "mean", eps: float = 1e-6) -> jax.Array:
  """Distance between two gradients of one tensor, per output-channel row.

  cosine: sum_rows (1 - cos) with the paper's (torch's cosine_similarity)
  clamped norms, cos = <x, y> / (max(|x|, eps) * max(|y|, eps)): exact
  unless a row norm is below eps. l2: sum_rows ||gs_r - gr_r||; dot:
  -sum_rows <gs_r, gr_r>. `row_reduction='mean'` divides by the number of rows.
  """
  xs, xr = _rows(gs), _rows(gr)
  if metric == "cosine":
    num = jnp.sum(xs * xr, axis=-1)
    per_row = 1.0 - num / (_clamped_norm(xs, eps) * _clamped_norm(xr, eps))
  elif metric == "l2":
    # sqrt of a sum with a tiny floor: the gradient of |x| at 0 is NaN otherwise.
    per_row = jnp.sqrt(jnp.sum((xs - xr) ** 2, axis=-1) + 1e-20)
  elif metric == "dot":
    per_row = -jnp.sum(xs * xr, axis=-1)
  else:
    raise ValueError(f"Unknown matching metric {metric!r}; one of {METRICS}.")
  if row_reduction == "mean":
    return jnp.mean(per_row)
  if row_reduction == "sum":
    return jnp.sum(per_row)
  raise ValueError(f"row_reduction must be 'mean' or 'sum', got {row_reduction!r}.")


def matching_distance(g_syn: dict, g_real: dict, metric: str = "cosine",
                      row_reduction: str = "mean",
                      tensor_reduction: str = "mean",
                      vectors: str = "zero") -> jax.Array:
  """Gradient-matching distance between two gradient dicts (same keys).

  Args:
    g_syn, g_real: flat dicts path -> gradient (no batch axis).
    metric: 'cosine' (paper), 'l2' or 'dot'.
    row_reduction: 'mean' (paper) or 'sum' over output-channel rows.
    tensor_reduction: 'mean' (paper) or 'sum' over matched tensors.
    vectors: how 1-D tensors (biases, norm scales) count. 'zero' (paper):
      distance 0 but counted in the mean over tensors; 'exclude': neither;
      'match': matched as one row each.
  Returns:
    scalar distance.
  """
  if vectors not in VECTOR_MODES:
    raise ValueError(f"vectors must be one of {VECTOR_MODES}, got {vectors!r}.")
  if set(g_syn) != set(g_real):
    raise ValueError("Gradient dicts differ in keys: "
                     f"{sorted(set(g_syn) ^ set(g_real))}.")
  total, count = 0.0, 0
  for k in sorted(g_syn):
    gs, gr = g_syn[k], g_real[k]
    if gs.ndim <= 1:
      if vectors == "exclude":
        continue
      count += 1
      if vectors == "zero":
        continue
      gs, gr = gs.reshape(-1, 1), gr.reshape(-1, 1)  # one row of n values
    else:
      count += 1
    total = total + tensor_distance(gs, gr, metric, row_reduction)
  if count == 0:
    raise ValueError("No tensor to match (all were 1-D and vectors='exclude').")
  if tensor_reduction == "mean":
    return total / count
  if tensor_reduction == "sum":
    return total
  raise ValueError(f"tensor_reduction must be 'mean' or 'sum', got {tensor_reduction!r}.")


def sanitize(grads, posinf: float = 1e5):
  """The paper's gradient clean-up: NaN -> 0, +-inf -> +-1e5.

  Returns:
    (clean grads, number of non-finite entries as int32).
  """
  leaves = jax.tree.leaves(grads)
  bad = sum(jnp.sum(~jnp.isfinite(g)).astype(jnp.int32) for g in leaves)
  clean = jax.tree.map(
      lambda g: jnp.nan_to_num(g, nan=0.0, posinf=posinf, neginf=-posinf), grads)
  return clean, bad


def global_norm(tree) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))
