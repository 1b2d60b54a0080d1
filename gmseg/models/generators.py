"""The generator interface the method runs on, and a registry by name.

A generator is a frozen, pretrained network. gmseg only needs a pure function

    apply_fn(params, z, rng) -> (images, features)

  z:        `[B, z_dim]` latents.
  rng:      a PRNG key for per-call randomness (StyleGAN noise); may be unused.
  images:   `[B, H, W, 3]`, roughly in [-1, 1].
  features: tuple of `[B, h_i, w_i, c_i]` maps, low to high resolution.

plus its (frozen) params and metadata that configs and the annotator read.
Params are passed as a traced argument (never closed over), so jitted steps
do not embed large constants and compile once. Names -> factories live a layer
up, in `gmseg.generator_registry` (factories may read checkpoints through the
converters, which the models never import).
"""
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

GeneratorFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, tuple[jax.Array, ...]]]


@dataclasses.dataclass(frozen=True)
class Generator:
  """A frozen generator: pure `apply_fn`, its `params` and metadata.

  Attributes:
    name: registry name.
    apply_fn: `(params, z [B, z_dim], rng) -> (images [B,H,W,3], features)`.
    params: the generator's parameters (a pytree; never trained here).
    z_dim: latent size.
    resolution: image side H (= W).
    feature_shapes: `(h, w, c)` of each feature map, low to high resolution.
  """
  name: str
  apply_fn: GeneratorFn
  params: Any
  z_dim: int
  resolution: int
  feature_shapes: tuple[tuple[int, int, int], ...]

  def sample_z(self, rng: jax.Array, batch: int) -> jax.Array:
    """Standard normal latents `[batch, z_dim]`."""
    return jax.random.normal(rng, (batch, self.z_dim), jnp.float32)

  def __call__(self, z: jax.Array, rng: jax.Array | None = None):
    """Convenience call with the stored params (for notebooks)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return self.apply_fn(self.params, z, rng)


def describe(apply_fn: GeneratorFn, params, z_dim: int, name: str) -> Generator:
  """Builds a Generator, reading resolution and feature shapes by tracing."""
  images, feats = jax.eval_shape(
      apply_fn, params, jax.ShapeDtypeStruct((1, z_dim), jnp.float32),
      jax.ShapeDtypeStruct((2,), jnp.uint32))
  return Generator(name=name, apply_fn=apply_fn, params=params, z_dim=z_dim,
                   resolution=images.shape[1],
                   feature_shapes=tuple(tuple(f.shape[1:]) for f in feats))


class RandomConvGenerator(nn.Module):
  """A small randomly initialised convolutional generator.

  Not a GAN: a fixed random network with the generator interface, used by
  tests and by the teacher-recovery demo where no pretrained weights exist.
  Features come from every upsampling stage (4x4 up to `resolution`).
  """
  resolution: int = 32
  width: int = 64

  @nn.compact
  def __call__(self, z):
    b = z.shape[0]
    x = nn.Dense(4 * 4 * self.width, name="fc")(z).reshape(b, 4, 4, self.width)
    x = jax.nn.leaky_relu(x, 0.2)
    feats = [x]
    res, width = 4, self.width
    while res < self.resolution:
      res *= 2
      width = max(width // 2, 16)
      x = jax.image.resize(x, (b, res, res, x.shape[-1]), "bilinear")
      x = nn.Conv(width, (3, 3), padding=1, name=f"conv{res}")(x)
      x = jax.nn.leaky_relu(x, 0.2)
      feats.append(x)
    img = jnp.tanh(nn.Conv(3, (1, 1), name="to_rgb")(x))
    return img, tuple(feats)


def random_conv(resolution: int = 32, width: int = 64, z_dim: int = 32,
                seed: int = 0) -> Generator:
  """The RandomConvGenerator with fixed random weights (seed)."""
  module = RandomConvGenerator(resolution=resolution, width=width)
  params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, z_dim)))["params"]

  def apply_fn(params, z, rng):
    del rng  # deterministic
    return module.apply({"params": params}, z)

  return describe(apply_fn, params, z_dim, f"random_conv{resolution}")
