"""Experiment config files: load one, override keys from the command line.

`load_config(path, arg)` runs a `configs/*.py` file's `get_config(arg)` and
returns an unlocked copy; `apply_overrides(config, ['key=value', ...])` sets
dotted keys typed like their current values (the benchmark's and the step
timing's `--override`).
"""
import ast
import importlib.util
import pathlib
from typing import Any, Sequence

import ml_collections

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "faces.py"


def load_config(path=DEFAULT_CONFIG, arg: str = "") -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, as an unlocked copy to override."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Config file {path} not found; pass the path of a "
                            "configs/*.py file (e.g. configs/faces.py).")
  spec = importlib.util.spec_from_file_location(f"_bench_cfg_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return ml_collections.ConfigDict(module.get_config(arg or None).to_dict())


def _parse_value(text: str, current: Any, key: str) -> Any:
  """`text` converted to the type of the key's current value."""
  if isinstance(current, bool):
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"--override {key}={text}: expected a boolean (true/false).")
  if isinstance(current, (int, float)):
    try:
      return type(current)(float(text) if isinstance(current, float) else int(text))
    except ValueError:
      raise ValueError(f"--override {key}={text}: expected {type(current).__name__}.") from None
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise ValueError(f"--override {key}={text}: expected a Python tuple such as "
                       "'(16,32,64)'.") from None
    return type(current)(value if isinstance(value, (tuple, list)) else (value,))
  if isinstance(current, str):
    return text
  raise ValueError(f"--override {key}: a {type(current).__name__} value cannot be set "
                   "from the command line; edit the config file.")


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Sets dotted keys from `key=value` strings, typed like the current values.

  E.g. `ann_optim.name=adam`, `downstream.epochs=1`, `segmenter.widths=(8,8,16,16,16)`.
  Unknown keys are errors naming the known keys at that level.
  """
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"--override {item!r} is not key=value (e.g. ann_optim.name=adam).")
    key, text = item.split("=", 1)
    *parents, leaf = key.strip().split(".")
    node = config
    for i, part in enumerate(parents + [leaf]):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        where = ".".join((parents + [leaf])[:i]) or "the config"
        raise ValueError(f"--override {item!r}: {part!r} is not a key of {where}; "
                         f"known: {known}.")
      if i < len(parents):
        node = node[part]
    node[leaf] = _parse_value(text, node[leaf], key)
  return config
