"""Shared test fixtures.

Tests that need the read-only `../shared` folder (FASSEG, fixtures) find it via
`GMSEG_SHARED` (default: `../shared` beside the repository root). They skip with
a reason when it is absent, except under `GMSEG_REQUIRE_SHARED=1` (set by
`.ci/run`), where a missing folder is a failure.
"""
import os
import pathlib

import pytest

from gmseg import compile_cache

# Compilation dominates the suite's time on CPU: XLA's cheaper CPU backend
# passes cut it 3-6x (a jitted init of a small UNet: 24 s -> 4 s of CPU).
# Level 1, not 0: at level 0 float64 convolutions, which XLA emits as loops
# rather than library calls, crawl (test_float64's DCGAN on 8 images: 65 s of
# CPU a call; 2.7 s at level 1, 1.7 s at the default). tests/test_annotate.py
# passes these flags to its subprocesses; the notebook kernel inherits them.
# XLA reads them when JAX starts its backend, at the first computation, after
# this; an XLA_FLAGS of your own replaces them.
FAST_COMPILE = "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true"
os.environ.setdefault("XLA_FLAGS", FAST_COMPILE)

# A rerun of the suite loads compiled programs from disk ($GMSEG_JAX_CACHE,
# default ~/.cache/gmseg/jax; 'off' disables; CI can keep the folder).
compile_cache.enable()

REPO = pathlib.Path(__file__).resolve().parents[1]

# The longest test files (seconds on a 2-core CPU, cold compile cache), run
# first. launch/run_tests.sh runs the suite on 2 workers, a whole file each
# (--dist loadfile --no-loadscope-reorder keeps this order): a long file that
# started last would run alone at the end.
LONGEST_FIRST = (
    "test_teacher_recovery.py",  # ~190
    "test_precision.py",         # ~160 cold cache, loaded (device-check subprocess ~70)
    "test_annotate.py",          # ~150
    "test_data_parallel.py",     # ~100 (a 4-device subprocess after the 1-device run)
    "test_steps.py",             # ~95
    "test_faces.py",             # ~90
    "test_restore_eval.py",      # ~60
    "test_faces_levers.py",      # ~55
    "test_notebook.py",          # ~52
    "test_stylegan1.py",         # ~50 (52 s of CPU, cold compile cache)
    "test_downstream.py",        # ~45
)


def pytest_collection_modifyitems(config, items):
  """Orders files longest first (LONGEST_FIRST), others after in their order."""
  del config
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def shared_path(*parts: str) -> pathlib.Path:
  """Returns a path under the shared folder, or skips/fails when it is missing."""
  root = pathlib.Path(os.environ.get("GMSEG_SHARED", REPO.parent / "shared"))
  path = root.joinpath(*parts)
  if not path.exists():
    msg = (f"{path} is missing: set GMSEG_SHARED to the folder holding "
           "data/fasseg and fixtures/ (default ../shared beside the repo).")
    if os.environ.get("GMSEG_REQUIRE_SHARED") == "1":
      pytest.fail(msg)
    pytest.skip(msg)
  return path


@pytest.fixture
def shared():
  """The shared folder; use as `shared_path(...)` for sub-paths."""
  return shared_path()


def tiny_annotate_config(data_dir, **downstream_overrides):
  """A locked tiny config on the offline rendered faces at 16x16 (a 16-wide random
  generator, a 1-layer annotator, a 4..8-wide UNet); `downstream_overrides`
  set `config.downstream` keys (10 images, batches of 4, 2 epochs by default)."""
  from gmseg import config_base  # lazy: conftest stays cheap for tests without jax
  c = config_base.get_base()
  c.generator.kwargs = {"resolution": 16, "width": 16, "z_dim": 8}
  c.data.dataset = "rendered_faces"
  c.data.resolution = 16
  c.data.num_val = 4
  c.data.data_dir = str(data_dir)
  c.annotator.tmp_channels = 8
  c.annotator.num_layers = 1
  c.segmenter.widths = (4, 4, 8, 8, 8)
  c.train.eval_batch = 4
  c.train.log_every = 1
  c.downstream.num_images = 10
  c.downstream.gen_batch = 4   # 3 batches, the last one trimmed
  c.downstream.batch = 4       # 2 steps per epoch on 10 images
  c.downstream.epochs = 2
  c.downstream.update(downstream_overrides)
  c.lock()
  return c


def perturbed(tree, seed: int, scale: float):
  """`tree` plus `scale` * N(0, 1) noise, its own key per leaf (from `seed`)."""
  import jax  # lazy, as above
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 1000))
  return jax.tree.map(lambda x: x + scale * jax.random.normal(next(keys), x.shape), tree)


@pytest.fixture(scope="session")
def tiny_annotate(tmp_path_factory):
  """A tiny annotate phase, built once a session (test_downstream, test_restore_eval).

  Returns a dict: `data_dir` (tfds folder; the rendered faces are built there
  once), `config` (`tiny_annotate_config`), `gen`, `method`, `state` (the
  initial TrainState, seed 0) and `write_run(workdir, snapshots)`, which writes
  config.json and a Checkpointer (best = highest fg_miou) holding
  `snapshots: {step: (TrainState, fg_miou)}`, and returns `workdir`.
  """
  import jax  # lazy, as above
  import jax.numpy as jnp
  from gmseg import build, checkpoint, metric_writers
  from gmseg import state as state_lib
  data_dir = tmp_path_factory.getbasetemp() / "tfds_rendered"
  config = tiny_annotate_config(data_dir)
  gen = build.generator(config)
  method = build.method(config, gen)
  # Jitted as gmseg.annotate does: one compile instead of one per Flax op.
  state = jax.jit(lambda p: state_lib.init_state(method, p, 0))(gen.params)

  def write_run(workdir, snapshots):
    metric_writers.write_config(workdir, config)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=len(snapshots),
                                   best_key="fg_miou")
    for step, (snapshot, fg_miou) in snapshots.items():
      ckpt.save(step, snapshot.replace(step=jnp.int32(step)),
                meta={"config": config.to_dict()}, metrics={"fg_miou": fg_miou})
    ckpt.wait()
    ckpt.close()
    return workdir

  return dict(data_dir=data_dir, config=config, gen=gen, method=method, state=state,
              write_run=write_run)
