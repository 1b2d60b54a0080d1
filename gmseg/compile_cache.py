"""JAX's persistent compilation cache, on for every gmseg program.

A rerun of the same program (tests, tiny runs, launchers) then loads compiled
XLA programs from disk instead of compiling them again. The folder is
`$GMSEG_JAX_CACHE` (default `~/.cache/gmseg/jax`; '' or 'off' disables), so a
user or CI can move or keep it. Thresholds are zero: on CPU most of our
programs compile in seconds and are small, and JAX's defaults (1 s, and a
minimum entry size) would skip some of them.
"""
import os
import pathlib
from typing import Optional

import jax

ENV = "GMSEG_JAX_CACHE"
DEFAULT_DIR = "~/.cache/gmseg/jax"


def enable(path: Optional[str] = None) -> Optional[str]:
  """Points JAX's compilation cache at `path` (default: $GMSEG_JAX_CACHE or
  ~/.cache/gmseg/jax); call before the first compilation.

  Returns:
    The cache folder, or None when disabled ('' or 'off').
  """
  if path is None:
    path = os.environ.get(ENV, DEFAULT_DIR)
  if path.strip().lower() in ("", "off"):
    return None
  folder = pathlib.Path(path).expanduser()
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return str(folder)
