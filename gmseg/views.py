"""Siamese views for gradient matching (beyond the paper): one random
flip / zoom / colour view per iteration, applied alike to the labelled batch
behind the target gradient and to the annotated synthetic batch.

Dataset Condensation with Differentiable Siamese Augmentation (Zhao & Bilen,
2021; the matching this method borrows) matches gradients of the two sets
seen through the same random transformation: the distance then compares the
sets' content, not their framing, and the target changes every iteration. The
faces' labelled images are k frontal faces in one framing; V3's heads sit
smaller and turned. With `matching.augment='siamese'` the annotator's labels
must give S the gradient the real faces give it under zoom-outs and flips too.

The operations follow `gmseg.data.pipeline.augment` (the supervised
baseline's augmentation) in JAX: a window of side R/s at a random place,
sampled back to R x R at pixel centres (edges repeat for s < 1), bilinear for
images and soft labels (linear, so differentiable in the labels and still
summing to one), nearest for integer labels; brightness, contrast and
saturation factors in [1 - jitter, 1 + jitter] on the images only. One view
per iteration for every image of both batches (the batch sizes may differ);
its parameters come from the step's shared key, so every device and a resumed
run draw the same view.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

JITTER = 0.2  # as gmseg.data.pipeline.augment


class View(NamedTuple):
  """One view's parameters (float32 scalars)."""
  flip: jax.Array        # 1.0 = mirror left-right
  scale: jax.Array       # zoom s: the window's side is R / s
  top: jax.Array         # window offset in [0, 1] of its range of positions
  left: jax.Array
  brightness: jax.Array  # colour factors
  contrast: jax.Array
  saturation: jax.Array


def identity() -> View:
  """The view that changes nothing (zoom 1, no flip, colour factors 1)."""
  one, zero = jnp.float32(1.0), jnp.float32(0.0)
  return View(zero, one, zero, zero, one, one, one)


def sample(key: jax.Array, zoom: tuple[float, float], jitter: float = JITTER) -> View:
  """A random view: flip with p=0.5, s ~ U(zoom), offsets and colour factors uniform."""
  lo, hi = float(zoom[0]), float(zoom[1])
  if not 0.0 < lo <= hi:
    raise ValueError(f"Zoom range {zoom}: need 0 < min <= max (data.augment_zoom).")
  k = jax.random.split(key, 7)
  u = lambda i, a, b: jax.random.uniform(k[i], (), jnp.float32, a, b)
  return View(flip=(u(0, 0.0, 1.0) < 0.5).astype(jnp.float32), scale=u(1, lo, hi),
              top=u(2, 0.0, 1.0), left=u(3, 0.0, 1.0),
              brightness=u(4, 1 - jitter, 1 + jitter), contrast=u(5, 1 - jitter, 1 + jitter),
              saturation=u(6, 1 - jitter, 1 + jitter))


def _coords(n: int, scale, offset):
  """Source coordinates of the n output pixel centres along one axis."""
  side = n / scale
  # Positions from min(0, n - side) to max(0, n - side): the window slides
  # inside the image (zoom in) or the image inside the window (zoom out).
  start = jnp.minimum(0.0, n - side) + offset * jnp.abs(n - side)
  return start + (jnp.arange(n, dtype=jnp.float32) + 0.5) * (side / n) - 0.5


def _flip(x, view: View):
  return jnp.where(view.flip > 0.5, x[:, :, ::-1], x)


def _weights(coords, n: int):
  """`[len(coords), n]` linear-interpolation matrix (edges repeated)."""
  c0 = jnp.clip(jnp.floor(coords), 0, n - 1).astype(jnp.int32)
  c1 = jnp.minimum(c0 + 1, n - 1)
  f = jnp.clip(coords - c0, 0.0, 1.0)[:, None]
  return jax.nn.one_hot(c0, n) * (1 - f) + jax.nn.one_hot(c1, n) * f


def _bilinear(x, ys, xs):
  """`x` `[B, H, W, C]` sampled at rows `ys` `[H]` and columns `xs` `[W]`,
  edges repeated. Separable: two small matrix products, which XLA runs
  faster than gathers and differentiates as plainly."""
  h, w = x.shape[1:3]
  wy, wx = _weights(ys, h).astype(x.dtype), _weights(xs, w).astype(x.dtype)
  # HIGHEST: TPUs would otherwise multiply float32 in bfloat16 passes.
  return jnp.einsum("ih,bhwc,jw->bijc", wy, x, wx, precision=jax.lax.Precision.HIGHEST)


def _geometry(view: View, shape):
  h, w = shape
  return _coords(h, view.scale, view.top), _coords(w, view.scale, view.left)


def apply_images(view: View, images: jax.Array) -> jax.Array:
  """The view of `images` `[B, H, W, 3]` in [-1, 1]: flip, zoom, colour."""
  ys, xs = _geometry(view, images.shape[1:3])
  x = (_bilinear(_flip(images, view), ys, xs) + 1.0) / 2.0
  x = x * view.brightness
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)  # per image, as the numpy version
  x = (x - mean) * view.contrast + mean
  grey = jnp.mean(x, axis=-1, keepdims=True)
  x = (x - grey) * view.saturation + grey
  return jnp.clip(x, 0.0, 1.0) * 2.0 - 1.0


def apply_probs(view: View, probs: jax.Array) -> jax.Array:
  """The view of soft labels `[B, H, W, C]` (bilinear; linear in `probs`)."""
  ys, xs = _geometry(view, probs.shape[1:3])
  return _bilinear(_flip(probs, view), ys, xs)


def apply_labels(view: View, labels: jax.Array) -> jax.Array:
  """The view of integer labels `[B, H, W]` (nearest; 255 = ignore stays)."""
  h, w = labels.shape[1:3]
  ys, xs = _geometry(view, (h, w))
  yi = jnp.clip(jnp.round(ys), 0, h - 1).astype(jnp.int32)
  xi = jnp.clip(jnp.round(xs), 0, w - 1).astype(jnp.int32)
  return _flip(labels, view)[:, yi][:, :, xi]
