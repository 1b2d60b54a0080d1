"""Type aliases shared across gmseg."""
from typing import Any

import jax

PyTree = Any
Params = Any  # a nested dict of arrays, as Flax returns it
Array = jax.Array
