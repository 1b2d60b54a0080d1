r"""Device memory of the compiled steps at the paper's sizes (XLA's memory
analysis; no weight is materialised), printed as one JSON object.

  .venv/bin/python launch/memory_report.py --mode=paper256
  .venv/bin/python launch/memory_report.py --mode=configs
  .venv/bin/python launch/memory_report.py --mode=remat_timing --reps=5

paper256: the annotator step of StyleGAN2 256 + UNet at batch 2 and 8, with
and without rematerialisation of S (`--remat`); configs: the annotator
step (`--programs`) of the paper config files at their batch (`--config`,
repeatable; default celeba, datasetgan car with the UNet, cgpart); remat_timing:
the annotator step's CPU time with each remat policy, side by side, at
step_timing's preset b (small). See gmseg/experiments/device_memory.py.

Compiling the paper-sized programs takes minutes on a few CPU cores: the
XLA flags default to the cheaper CPU backend passes (as the tests use;
buffer assignment, which the analysis reports, is the same).
"""
import json
import os
import pathlib

# Before JAX starts its backend (an XLA_FLAGS of your own replaces these).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true")

from absl import app, flags  # pylint: disable=g-import-not-at-top

from gmseg import cli  # pylint: disable=g-import-not-at-top
from gmseg.experiments import device_memory  # pylint: disable=g-import-not-at-top

MODE = flags.DEFINE_enum("mode", "paper256", ["paper256", "configs", "remat_timing"],
                         "What to report.")
BATCHES = flags.DEFINE_list("batches", ["2", "8"], "paper256: global batch sizes.")
REMAT = flags.DEFINE_list("remat", ["none", "nothing_saveable"],
                          "paper256 / remat_timing: jax.checkpoint policies of S.")
DTYPES = flags.DEFINE_list("dtypes", ["float32"], "paper256: compute_dtype values.")
PROGRAMS = flags.DEFINE_list("programs", ["annotator"], "paper256, configs: programs to compile.")
CONFIGS = flags.DEFINE_multi_string(
    "config", ["celeba.py:", "datasetgan.py:obj=car,seg=unet", "cgpart.py:seg=deeplab"],
    "configs mode: a config file (in configs/) and its argument after ':' (repeatable).")
REPS = flags.DEFINE_integer("reps", 5, "remat_timing: interleaved timed rounds.")

_CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
  if MODE.value == "paper256":
    result = device_memory.paper256_table([int(b) for b in BATCHES.value], REMAT.value,
                                          PROGRAMS.value, DTYPES.value)
  elif MODE.value == "configs":
    result = []
    for item in CONFIGS.value:
      name, _, arg = item.partition(":")
      result.append(device_memory.config_memory(_CONFIG_DIR / name, arg,
                                                programs=PROGRAMS.value))
  else:
    from gmseg.experiments import step_timing  # pylint: disable=g-import-not-at-top
    config = step_timing.preset_config("b").lock()
    result = device_memory.remat_timing(config, step_timing.preset_generator(config),
                                        step_timing.random_batch(config), REMAT.value,
                                        REPS.value)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)  # also turns on the persistent compilation cache
