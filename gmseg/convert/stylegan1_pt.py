"""DatasetGAN's StyleGAN (v1) checkpoints, read without torch.

DatasetGAN releases its generators as `karras2019stylegan-*.for_g_all.pt`:
the state dict of `Sequential(g_mapping, truncation, g_synthesis)` saved by
`torch.save`, in the legacy (pre-1.6) format for the 2019-2020 files or the
zip format of later torch; both are read (`torch_legacy`, `torch_zip`, with
allow-listed globals: nothing from the file runs). The average latent comes
from the `.npy` beside it (`avg_latent_stylegan1.npy`); a
`truncation.avg_latent` entry in the checkpoint, when there is one, wins, as
in the paper's code. `load` is the generator registry's 'stylegan1'.
"""
import collections
import os
from typing import Optional

from absl import logging
import numpy as np

from gmseg import errors
from gmseg.convert import torch_legacy
from gmseg.convert import torch_zip
from gmseg.models import generators
from gmseg.models import stylegan1


class StyleGAN1CheckpointError(errors.UserError, ValueError):
  """A file that is not a usable StyleGAN (v1) checkpoint or average latent."""


class StyleGAN1FileNotFound(errors.UserError, FileNotFoundError):
  """A checkpoint or average-latent path that does not exist."""


# Names that only a StyleGAN2(-ADA) file holds: its snapshot pickles name
# these modules, its state dicts start with these prefixes.
_SG2_PICKLE_MARKS = (b"torch_utils", b"dnnlib")
_SG2_PREFIXES = ("mapping.", "synthesis.")


def _sg2_hint(path: str) -> str:
  return (f"{path} is a StyleGAN2 file, not a StyleGAN (v1) checkpoint: use the "
          "generator 'stylegan2' (generator.name='stylegan2', or configs/datasetgan.py "
          "with gen=stylegan2) for it.")


def read_state_dict(path: str | os.PathLike) -> "collections.OrderedDict[str, np.ndarray]":
  """The state dict of a `.for_g_all.pt` file (legacy or zip torch.save).

  Returns:
    name -> float32 array in the file's order, torch layouts (e.g.
    `g_synthesis.blocks.8x8.conv1.weight` `[out, in, 3, 3]`).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise StyleGAN1FileNotFound(
        f"No StyleGAN (v1) checkpoint at {path}: pass the path of DatasetGAN's "
        "karras2019stylegan-*.for_g_all.pt file.")
  with open(path, "rb") as f:
    head = f.read(1 << 16)
  if head[:2] == b"PK" or torch_legacy.is_legacy(path):
    try:
      obj = (torch_zip if head[:2] == b"PK" else torch_legacy).load(path)
    except torch_zip.TorchCheckpointError as e:  # truncated, corrupt, unknown globals
      raise StyleGAN1CheckpointError(str(e)) from None
  elif head[:1] == b"\x80" and any(m in head for m in _SG2_PICKLE_MARKS):
    raise StyleGAN1CheckpointError(_sg2_hint(path))
  else:
    raise StyleGAN1CheckpointError(
        f"{path} is not a torch.save checkpoint (neither the zip nor the legacy format; "
        f"first bytes {head[:8]!r}). TensorFlow StyleGAN .pkl files are not read: use "
        "DatasetGAN's converted .for_g_all.pt files.")
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    what = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {list(obj)[:5]}"
    raise StyleGAN1CheckpointError(
        f"{path} holds {what}, not a state dict of tensors: save "
        "`torch.save(g_all.state_dict(), path)`.")
  if any(k.startswith(_SG2_PREFIXES) for k in obj):
    raise StyleGAN1CheckpointError(_sg2_hint(path))
  return collections.OrderedDict((k, np.asarray(v, np.float32)) for k, v in obj.items())


def read_w_avg(path: str | os.PathLike) -> np.ndarray:
  """The average latent `[512]` from a `.npy` (shapes such as `[1, 512]` are
  flattened; anything else of another size is refused)."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise StyleGAN1FileNotFound(
        f"No average-latent file at {path}: pass the .npy that comes with the "
        "checkpoint (DatasetGAN: avg_latent_stylegan1.npy).")
  try:
    w = np.load(path, allow_pickle=False)
  except ValueError as e:
    raise StyleGAN1CheckpointError(f"{path} is not a plain .npy array ({e}).") from None
  if w.size != stylegan1.W_DIM or not np.issubdtype(w.dtype, np.floating):
    raise StyleGAN1CheckpointError(
        f"{path} holds a {w.dtype} array of shape {w.shape}; a StyleGAN (v1) average latent "
        f"is {stylegan1.W_DIM} floats (one w). Is it the w_avg of another generator, or a "
        "StyleGAN2 w_avg?")
  return w.reshape(stylegan1.W_DIM).astype(np.float32)


def read_params(path: str | os.PathLike, w_avg_path: Optional[str] = None,
                resolution: Optional[int] = None) -> tuple[dict, stylegan1.Arch]:
  """Checkpoint (+ average latent) -> (params, arch), names checked strictly.

  Args:
    path: the `.for_g_all.pt` file.
    w_avg_path: the average latent `.npy` (needed when the checkpoint has no
      `truncation.avg_latent`, as DatasetGAN's have not).
    resolution: the expected generator resolution (checked); None: read it
      from the checkpoint.
  """
  sd = read_state_dict(path)
  arch = stylegan1.infer_arch(sd)
  if resolution is not None and int(resolution) != arch.resolution:
    raise StyleGAN1CheckpointError(
        f"{path} holds a {arch.resolution}x{arch.resolution} generator, not the "
        f"{resolution}x{resolution} one asked for (DatasetGAN: face 1024, car 512, cat 256).")
  w_avg = read_w_avg(w_avg_path) if w_avg_path else None
  if w_avg is not None and stylegan1.AVG_LATENT in sd and not np.allclose(
      sd[stylegan1.AVG_LATENT], w_avg, atol=1e-6):
    logging.warning("%s has its own %s, which differs from %s; using the checkpoint's, as "
                    "the paper's code does.", path, stylegan1.AVG_LATENT, w_avg_path)
  try:
    params = stylegan1.params_from_state_dict(sd, arch, w_avg)
  except stylegan1.StateDictMismatch as e:
    raise StyleGAN1CheckpointError(f"{path}: {e}") from None
  return params, arch


def load(path: str, w_avg_path: Optional[str] = None, resolution: Optional[int] = None,
         truncation_psi: float = 0.7, truncation_cutoff: Optional[int] = 8,
         noise_mode: str = "random") -> generators.Generator:
  """Registry factory 'stylegan1': a DatasetGAN `.for_g_all.pt` and its
  average-latent `.npy` as a `generators.Generator` (see
  `stylegan1.make_generator`; psi 0.7 on the first `truncation_cutoff` ws,
  8 for face and car, 7 for cat in the paper)."""
  params, arch = read_params(path, w_avg_path, resolution)
  return stylegan1.make_generator(params, arch, truncation_psi, truncation_cutoff, noise_mode)
