"""Device memory of the compiled steps at the paper's sizes, from XLA's
memory analysis, without materialising a single weight.

Everything is abstract: the generator's parameters are `jax.eval_shape` of
its initialiser (random weights of the real shapes), the TrainState is
`eval_shape` of `state.init_state`, and the step is lowered and compiled
for `ShapeDtypeStruct` arguments. `compiled.memory_analysis()` then gives
the program's argument, output, aliased (donated state) and temporary
buffer sizes; `peak_mb` = argument + output - alias + temp is what one
device must hold while the step runs (the allocator's own overhead and, on
GPU, convolution workspaces come on top). Compiled here for the host CPU;
another backend fuses and assigns buffers differently, so treat the figures
as estimates to within tens of percent.

Setups:
  paper256: StyleGAN2-ADA 'paper256' generator (z/w 512, 8 mapping layers,
    channel_base 16384: 512 channels at 4..32, 256 at 64, 128 at 128, 64 at
    256), FPN annotator 128 channels, UNet widths 64..512 matched on all its
    parameters, 8 classes, GroupNorm, SGD; batches labelled = synthetic =
    segmenter = B.
  configs/*.py (`config_memory`): the paper config file's own segmenter,
    matching and batch on a StyleGAN2 of its resolution (channel_base 32768
    at 512, 16384 at 256: the official configs' sizes).
"""
import functools
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmseg import build
from gmseg import config_base
from gmseg import state as state_lib
from gmseg import steps
from gmseg.experiments import config_files
from gmseg.models import generators

PAPER_WIDTHS = (64, 128, 256, 512, 512)
PROGRAMS = {"annotator": steps.annotator_step, "segmenter": steps.segmenter_step,
            "supervised": steps.supervised_step, "iteration": steps.iteration_step}


def stylegan2_abstract(resolution: int = 256, channel_base: Optional[int] = None
                       ) -> generators.Generator:
  """A StyleGAN2-ADA generator whose params are `ShapeDtypeStruct`s (nothing
  allocated): z/w 512, 8 mapping layers, channel_max 512, channel_base
  16384 at <= 256 (ADA's paper256) else 32768 (ADA's stylegan2 config)."""
  from gmseg.models import stylegan2 as sg  # lazy: only these setups need it
  base = channel_base or (16384 if resolution <= 256 else 32768)
  arch = sg.Arch(resolution=resolution, channel_base=base)
  params = jax.eval_shape(functools.partial(sg.init_params, arch), jax.random.PRNGKey(0))
  return sg.make_generator(params, arch, noise_mode="random",
                           name=f"stylegan2_{resolution}_abstract")


def paper256_config(batch: int = 2, remat: str = "none",
                    compute_dtype: str = "float32") -> ml_collections.ConfigDict:
  """The paper256 setup (module docstring) with global batches `batch`."""
  c = config_base.get_base()
  c.class_names = tuple(f"class{i}" for i in range(8))
  c.generator = ml_collections.ConfigDict({"name": "stylegan2", "kwargs": {}})
  c.data.resolution = 256
  c.gen_transform = "none"
  c.segmenter.arch = "unet"
  c.segmenter.widths = PAPER_WIDTHS
  c.matching.params = "unet:all"
  c.matching.remat = remat
  c.compute_dtype = compute_dtype
  c.batch.labelled = c.batch.synthetic = c.batch.segmenter = batch
  return c.lock()


def _abstract_args(method: state_lib.Method, config, gen) -> dict:
  """Abstract (state, *args) of each program, as `step_timing` passes them."""
  state = jax.eval_shape(lambda p: state_lib.init_state(method, p, 0), gen.params)
  b, r = config.batch.labelled, config.data.resolution
  batch = {"image": jax.ShapeDtypeStruct((b, r, r, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((b, r, r), jnp.int32)}
  return {"annotator": (state, batch, gen.params), "segmenter": (state, gen.params),
          "supervised": (state, batch), "iteration": (state, batch, gen.params)}


def compiled_memory(compiled) -> dict:
  """MiB of a compiled program's buffers (`memory_analysis`) and the peak."""
  a = compiled.memory_analysis()
  if a is None:
    return {"peak_mb": float("nan")}
  mb = lambda v: v / 2**20
  out = {"argument_mb": mb(a.argument_size_in_bytes), "output_mb": mb(a.output_size_in_bytes),
         "alias_mb": mb(a.alias_size_in_bytes), "temp_mb": mb(a.temp_size_in_bytes)}
  out["peak_mb"] = out["argument_mb"] + out["output_mb"] - out["alias_mb"] + out["temp_mb"]
  return out


def program_memory(config, gen: generators.Generator,
                   programs: Sequence[str] = ("annotator", "segmenter")) -> dict:
  """XLA's memory analysis of each jitted program (state donated) of
  `config` on one device, compiled for abstract arguments.

  Returns:
    {program: {'argument_mb', 'output_mb', 'alias_mb', 'temp_mb',
    'peak_mb', 'compile_s'}, 'state_mb': the TrainState, 'gen_params_mb'}.
  """
  method = build.method(config, gen, devices=1)
  args = _abstract_args(method, config, gen)
  size = lambda tree: sum(np.prod(x.shape) * x.dtype.itemsize
                          for x in jax.tree.leaves(tree)) / 2**20
  out = {"state_mb": float(size(args["annotator"][0])),
         "gen_params_mb": float(size(gen.params))}
  for name in programs:
    t = time.perf_counter()
    compiled = jax.jit(functools.partial(PROGRAMS[name], method=method),
                       donate_argnums=0).lower(*args[name]).compile()
    out[name] = {**compiled_memory(compiled), "compile_s": time.perf_counter() - t}
  return out


def paper256_table(batches: Sequence[int] = (2, 8),
                   remats: Sequence[str] = ("none", "nothing_saveable"),
                   programs: Sequence[str] = ("annotator",),
                   dtypes: Sequence[str] = ("float32",)) -> list[dict]:
  """`program_memory` of paper256 for every (batch, remat, compute dtype)."""
  gen = stylegan2_abstract(256)
  rows = []
  for b in batches:
    for remat in remats:
      for dtype in dtypes:
        rows.append({"setup": "paper256", "batch": b, "remat": remat, "compute_dtype": dtype,
                     **program_memory(paper256_config(b, remat, dtype), gen, programs)})
  return rows


def config_memory(path: str, arg: str = "", batch: Optional[int] = None,
                  programs: Sequence[str] = ("annotator", "segmenter")) -> dict:
  """`program_memory` of a paper config file (`configs/x.py`, its argument
  string) on an abstract StyleGAN2 of the config's generator resolution;
  `batch` overrides the three batch sizes. DeepLab trains without the
  pretrained file here (same shapes)."""
  c = config_files.load_config(path, arg)
  if batch:
    c.batch.labelled = c.batch.synthetic = c.batch.segmenter = batch
  c.segmenter.pretrained = ""
  c.lock()
  # The generator's resolution: 512 where the config crops or resizes a 512 canvas.
  res = 512 if (c.gen_transform == "wide_crop" or c.data.resolution == 512) else 256
  gen = stylegan2_abstract(res)
  return {"config": f"{path}:{arg}" if arg else str(path), "generator_resolution": res,
          "segmenter": c.segmenter.arch, "batch": dict(c.batch),
          **program_memory(c, gen, programs)}


def remat_timing(config, gen: generators.Generator, batch: dict,
                 remats: Sequence[str] = ("none", "nothing_saveable", "dots_saveable"),
                 reps: int = 5) -> dict:
  """Median seconds of the jitted annotator step for each remat policy, the
  programs run in interleaved rounds in one process (so load affects all).

  Returns:
    {policy: {'annotator_s', 'over_none', 'temp_mb', 'peak_mb'}}.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  base = build.method(config, gen, devices=1)
  gen_params = jax.device_put(gen.params)
  batch = jax.device_put({"image": jnp.asarray(batch["image"], jnp.float32),
                          "label": jnp.asarray(batch["label"], jnp.int32)})
  state = jax.jit(lambda p: state_lib.init_state(base, p, config.seed))(gen_params)
  compiled, mem = {}, {}
  for r in remats:
    m = dataclasses.replace(base, remat=r)
    compiled[r] = jax.jit(functools.partial(steps.annotator_step, method=m)).lower(
        state, batch, gen_params).compile()
    mem[r] = compiled_memory(compiled[r])
    jax.block_until_ready(compiled[r](state, batch, gen_params))  # warm
  times = {r: [] for r in remats}
  for _ in range(reps):
    for r in remats:
      t = time.perf_counter()
      jax.block_until_ready(compiled[r](state, batch, gen_params))
      times[r].append(time.perf_counter() - t)
  med = {r: float(np.median(v)) for r, v in times.items()}
  return {r: {"annotator_s": med[r], "over_none": med[r] / med[remats[0]],
              "temp_mb": mem[r].get("temp_mb"), "peak_mb": mem[r]["peak_mb"]}
          for r in remats}
