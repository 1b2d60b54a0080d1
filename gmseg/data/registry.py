"""Dataset names -> (builder class, config, class names), importing modules lazily.

Each dataset module exposes `DATASETS: dict[str, common.DatasetSpec]`; this
table only says which module holds which name, so looking a name up imports
one module (and tfds) and nothing else.
"""
import importlib
import os

from gmseg.data import common

_MODULES = {
    "fasseg/frontal01": "gmseg.data.fasseg",
    "fasseg/frontal02": "gmseg.data.fasseg",
    "fasseg/multipose01": "gmseg.data.fasseg",
    "rendered_faces": "gmseg.data.rendered_faces",
    "celebamask8": "gmseg.data.celebamask",
    "pascal_horse": "gmseg.data.pascal_part",
    "pascal_aeroplane": "gmseg.data.pascal_part",
    "datasetgan_car20": "gmseg.data.datasetgan",
    "datasetgan_cat16": "gmseg.data.datasetgan",
    "datasetgan_face34": "gmseg.data.datasetgan",
    "cgpart_car": "gmseg.data.cgpart",
}


def names() -> list[str]:
  """All registered dataset names."""
  return sorted(_MODULES)


def get(name: str) -> common.DatasetSpec:
  """The spec of dataset `name`; an error listing the known names otherwise."""
  if name not in _MODULES:
    raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}.")
  module = importlib.import_module(_MODULES[name])
  datasets = getattr(module, "DATASETS", {})
  if name not in datasets:
    raise KeyError(f"{_MODULES[name]}.DATASETS has no entry {name!r} "
                   f"(it has {sorted(datasets)}); the registry and the module disagree.")
  return datasets[name]


def builder(name: str, data_dir: os.PathLike | str):
  """The tfds builder of dataset `name` in `data_dir` (not prepared yet:
  `common.prepare` / `common.read_split` build it when needed)."""
  spec = get(name)
  return spec.builder(config=spec.config, data_dir=os.fspath(data_dir),
                      file_format=common.FILE_FORMAT)


def module_name(name: str) -> str:
  """The module that defines dataset `name` (without importing it)."""
  if name not in _MODULES:
    raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}.")
  return _MODULES[name]


def class_names(name: str) -> tuple[str, ...]:
  """Class names of dataset `name`, by class id."""
  return tuple(get(name).class_names)
