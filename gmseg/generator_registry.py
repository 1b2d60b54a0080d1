"""Generators by name: `get('stylegan1', path=..., ...)` -> `generators.Generator`.

The registry sits above `gmseg.models` and `gmseg.convert`: a name maps to a
factory that may read foreign checkpoints (the converters) and build a model,
so the models never import the converters (tests/test_layout.py). Factories
are imported on first use, which keeps `import gmseg` cheap.

Built in: 'random_conv' (tests, demos), 'dcgan_faces' (gan-face-generate),
'stylegan2' (an official stylegan2-ada-pytorch .pkl or a converted folder),
'stylegan1' (DatasetGAN's .for_g_all.pt files and their average latent).
"""
from typing import Callable

from gmseg.models import generators


def _random_conv():
  return generators.random_conv


def _dcgan_faces():
  from gmseg.models import dcgan
  return dcgan.load_pretrained


def _stylegan2():
  from gmseg.convert import stylegan2_pkl
  return stylegan2_pkl.load


def _stylegan1():
  from gmseg.convert import stylegan1_pt
  return stylegan1_pt.load


# name -> a function returning the factory (its module imported then).
_BUILT_IN: dict[str, Callable[[], Callable[..., generators.Generator]]] = {
    "random_conv": _random_conv,
    "dcgan_faces": _dcgan_faces,
    "stylegan1": _stylegan1,
    "stylegan2": _stylegan2,
}
_REGISTERED: dict[str, Callable[..., generators.Generator]] = {}


def register(name: str, factory_fn: Callable[..., generators.Generator]) -> None:
  """Adds (or replaces) a generator factory: `factory_fn(**kwargs) -> Generator`."""
  _REGISTERED[name] = factory_fn


def names() -> list[str]:
  """Every generator name `get` knows."""
  return sorted(set(_BUILT_IN) | set(_REGISTERED))


def factory(name: str) -> Callable[..., generators.Generator]:
  """The factory registered as `name` (its module imported on first use).

  `inspect.signature(factory(name))` lists its keyword arguments without
  building the generator (launch/sample.py maps its flags so).
  """
  if name in _REGISTERED:
    return _REGISTERED[name]
  if name in _BUILT_IN:
    return _BUILT_IN[name]()
  raise ValueError(f"Unknown generator {name!r}; known: {names()}.")


def get(name: str, **kwargs) -> generators.Generator:
  """Builds a registered generator by name, e.g. `get('random_conv')`."""
  return factory(name)(**kwargs)
