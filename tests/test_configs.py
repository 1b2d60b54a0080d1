"""Experiment configs: they load and lock, parse arguments strictly, hold the
paper's numbers, and build their models (shapes only: `jax.eval_shape`)."""
import functools
import importlib.util
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from gmseg import build
from gmseg import matching
from gmseg import state as state_lib
from gmseg.data import pipeline
from gmseg.data import registry

CONFIGS = ("celeba", "pascal", "datasetgan", "cgpart", "faces")

# (config file, argument, expected dataset).
CASES = [
    ("celeba", None, "celebamask8"),
    ("celeba", "num=2", "celebamask8"),
    ("celeba", "num=1500,seed=3,steps=20", "celebamask8"),
    ("pascal", "obj=horse,num=10", "pascal_horse"),
    ("pascal", "obj=aeroplane,num=180", "pascal_aeroplane"),
    ("datasetgan", "obj=car,seg=deeplab", "datasetgan_car20"),
    ("datasetgan", "obj=car,seg=unet", "datasetgan_car20"),
    ("datasetgan", "obj=cat,seg=deeplab", "datasetgan_cat16"),
    ("datasetgan", "obj=cat,seg=unet", "datasetgan_cat16"),
    ("datasetgan", "obj=face,seg=deeplab", "datasetgan_face34"),
    ("datasetgan", "obj=face,seg=unet", "datasetgan_face34"),
    ("cgpart", None, "cgpart_car"),
    ("cgpart", "seg=unet,num=1000", "cgpart_car"),
    ("faces", None, "fasseg/frontal02"),
    ("faces", "labelled=rendered,num=3,steps=50", "rendered_faces"),
]
IDS = [f"{name}:{arg}" for name, arg, _ in CASES]


@functools.cache
def module(name: str):
  path = REPO / "configs" / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def get(name: str, arg: str | None = None):
  return module(name).get_config(arg)


@pytest.mark.parametrize("name,arg,dataset", CASES, ids=IDS)
def test_loads_locked_and_consistent(name, arg, dataset):
  c = get(name, arg)
  assert c.is_locked
  with pytest.raises(AttributeError):
    c.not_a_key = 1
  with pytest.raises(AttributeError):
    c.data.not_a_key = 1
  assert c.data.dataset == dataset
  assert tuple(c.class_names) == registry.class_names(dataset)
  assert c.data.transform in pipeline.TRANSFORMS
  assert c.gen_transform in ("none", "resize", "wide_crop")
  family = {"deeplab": "deeplab:head", "unet": "unet:all"}[c.segmenter.arch]
  assert c.matching.params == family
  # The paper's SGD everywhere but the CPU-sized faces config (Adam, see its comment).
  want = "adam" if name == "faces" else "sgd"
  for o in (c.ann_optim, c.seg_optim):
    assert (o.name, o.lr, o.momentum) == (want, 1e-3, 0.9)
  assert (c.batch.labelled, c.batch.synthetic, c.batch.segmenter) == (2, 2, 2)
  assert c.downstream.optim.name == "adam" and c.downstream.optim.lr == 1e-3


@pytest.mark.parametrize("name", ["celeba", "pascal", "datasetgan", "cgpart"])
def test_paper_schedule(name):
  c = get(name)
  assert c.generator.name == "stylegan2"
  assert c.generator.kwargs.truncation_psi == 0.7
  assert c.generator.kwargs.noise_mode == "random"
  assert c.train.steps == 150_000
  assert c.train.eval_every == c.train.ckpt_every == 4_000
  d = c.downstream
  assert (d.num_images, d.epochs, d.batch) == (10_000, 20, 8)


@pytest.mark.parametrize("name,arg,num,cutoff,res,gen_transform", [
    ("celeba", "num=10", 10, 8, 256, "resize"),
    ("celeba", "num=150", 150, 8, 256, "resize"),
    ("pascal", "obj=horse,num=2", 2, 7, 256, "resize"),
    ("pascal", "obj=aeroplane,num=100", 100, 7, 256, "resize"),
    ("datasetgan", "obj=car", 16, 8, 512, "wide_crop"),
    ("datasetgan", "obj=cat", 30, 7, 256, "resize"),
    ("datasetgan", "obj=face", 16, 8, 512, "resize"),
    ("datasetgan", "obj=cat,num=5", 5, 7, 256, "resize"),
    ("cgpart", None, 0, 8, 256, "wide_crop"),
])
def test_paper_values(name, arg, num, cutoff, res, gen_transform):
  c = get(name, arg)
  assert c.data.num_labelled == num
  assert c.generator.kwargs.truncation_cutoff == cutoff
  assert c.data.resolution == res
  assert c.gen_transform == gen_transform


def test_split_protocols():
  celeba, horse = get("celeba"), get("pascal", "obj=horse")
  for c in (celeba, horse):
    assert (c.data.labelled_split, c.data.val_split, c.data.test_split) == (
        "train", "validation", "test")
  # DatasetGAN: generated labelled images; no validation set (5-fold CV on test).
  for obj in ("car", "cat", "face"):
    c = get("datasetgan", f"obj={obj}")
    assert (c.data.labelled_split, c.data.val_split, c.data.test_split) == ("train", "test", "test")
    assert "5-fold" in module("datasetgan").__doc__
  # CGPart: rendered labelled images, real images for validation and test.
  c = get("cgpart")
  assert (c.data.labelled_split, c.data.val_split, c.data.test_split) == ("train", "test", "test")
  assert registry.get("cgpart_car").splits == ("train", "test")


def test_arguments_reach_the_config():
  c = get("celeba", "num=30,seed=7,steps=123,gen_path=/ckpt/g,pretrained=/ckpt/r.pth,"
          "data_dir=/tfds,manual_dir=/raw")
  assert (c.seed, c.train.steps, c.data.num_labelled) == (7, 123, 30)
  assert c.generator.kwargs.path == "/ckpt/g"
  assert c.segmenter.pretrained == "/ckpt/r.pth"
  assert (c.data.data_dir, c.data.manual_dir) == ("/tfds", "/raw")
  f = get("faces", "num=4,labelled=rendered,seed=2,steps=10,manual_dir=/x")
  assert (f.data.num_labelled, f.data.dataset, f.seed, f.train.steps, f.data.manual_dir) == (
      4, "rendered_faces", 2, 10, "/x")


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_argument_names_known_keys(name):
  with pytest.raises(ValueError, match=r"Unknown config argument 'bogus'.*'seed'.*'steps'"):
    get(name, "bogus=1")
  with pytest.raises(ValueError, match="not key=value"):
    get(name, "seed")


@pytest.mark.parametrize("name,arg,needle", [
    ("pascal", "obj=dog", "horse"),
    ("datasetgan", "obj=horse", "car"),
    ("datasetgan", "seg=fcn", "unet"),
    ("datasetgan", "seg=unet,pretrained=/r.pth", "seg=deeplab"),
    ("cgpart", "seg=fcn", "deeplab"),
    ("faces", "labelled=celeba", "rendered"),
    ("celeba", "num=-2", ">= 0"),
    ("celeba", "num=ten", "ten"),
])
def test_bad_values(name, arg, needle):
  with pytest.raises(ValueError, match=re.escape(needle)):
    get(name, arg)


@pytest.mark.parametrize("name", ["celeba", "pascal", "datasetgan", "cgpart"])
def test_unset_generator_path_fails_when_built(name):
  c = get(name)  # loading works without a checkpoint ...
  with pytest.raises(FileNotFoundError, match="pass gen_path="):
    build.generator(c)  # ... building says what to pass


class _Seg(dict):
  """A `config.segmenter` stand-in that is hashable input to the cache."""
  __getattr__ = dict.__getitem__


@functools.cache
def _seg_tree(seg_items: tuple, n_classes: int):
  seg = build.segmenter(_Seg(seg_items), n_classes)
  x = jnp.zeros((1, 64, 64, 3))
  return jax.eval_shape(lambda: state_lib.init_variables(seg, jax.random.PRNGKey(0), x))


@pytest.mark.parametrize("name,arg,dataset", CASES, ids=IDS)
def test_models_build_and_preset_resolves(name, arg, dataset):
  del dataset
  c = get(name, arg)
  n = build.num_classes(c)
  ann = build.annotator(c)
  assert ann.num_classes == n and ann.tmp_channels == c.annotator.tmp_channels
  seg = build.segmenter(c.segmenter, n)
  assert seg.num_classes == n
  params, _ = _seg_tree(tuple(sorted(
      (k, tuple(v) if isinstance(v, (list, tuple)) else v)
      for k, v in c.segmenter.items())), n)
  flat = matching.flatten(params)
  matched = state_lib.matched_paths(params, c.matching.params, c.segmenter.arch)
  if c.segmenter.arch == "deeplab":
    head = sorted(p for p in flat if p.startswith("classifier/"))
    assert list(matched) == head and len(head) < len(flat) / 10
    # The last layer maps to the classes.
    assert any(flat[p].shape[-1] == n for p in head if p.endswith("kernel"))
  else:
    assert sorted(matched) == sorted(flat)
    assert flat["outc/kernel"].shape == (1, 1, c.segmenter.widths[0], n)


def test_paper_annotator_on_stylegan2_256_features():
  # Feature shapes of a 256x256 StyleGAN2-ADA "paper256" generator.
  c = get("celeba")
  feats = tuple(jnp.zeros((1, r, r, ch)) for r, ch in
                ((4, 512), (8, 512), (16, 512), (32, 512), (64, 256), (128, 128), (256, 64)))
  ann = build.annotator(c)
  out = jax.eval_shape(lambda: ann.init_with_output(jax.random.PRNGKey(0), feats)[0])
  assert out.shape == (1, 256, 256, 8)


@pytest.mark.parametrize("name,arg,side,shape", [
    ("datasetgan", "obj=car", 512, (1, 512, 512)),
    ("cgpart", None, 512, (1, 256, 256)),
    ("datasetgan", "obj=cat", 256, (1, 256, 256)),
    ("celeba", None, 256, (1, 256, 256)),
])
def test_gen_transform_shapes(name, arg, side, shape):
  c = get(name, arg)
  fn = build.gen_transform(c)
  x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  p = jax.ShapeDtypeStruct((1, side, side, len(c.class_names)), jnp.float32)
  xs, ps = jax.eval_shape(fn, x, p)
  assert xs.shape == shape + (3,) and ps.shape == shape + (len(c.class_names),)


# (config, argument, generator side, a labelled image's stored [h, w]).
@pytest.mark.parametrize("name,arg,side,stored", [
    ("datasetgan", "obj=car", 512, (512, 512)),   # 4:3 content stretched to a square
    ("datasetgan", "obj=cat", 256, (256, 256)),
    ("datasetgan", "obj=face", 512, (512, 512)),
    ("cgpart", None, 512, (480, 640)),            # renders at native size
    ("celeba", None, 256, (1024, 1024)),
    ("pascal", "obj=horse", 256, (211, 211)),
])
def test_generated_and_labelled_shapes_agree(name, arg, side, stored):
  # What S sees from G (after gen_transform) has the labelled images' shape.
  c = get(name, arg)
  x = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
  p = jax.ShapeDtypeStruct((1, side, side, len(c.class_names)), jnp.float32)
  fn = build.gen_transform(c)
  xs, _ = jax.eval_shape(fn, x, p) if fn else (x, p)
  image, label = pipeline._fit(np.zeros(stored + (3,), np.uint8), np.zeros(stored, np.uint8),
                               c.data.resolution, c.data.transform)
  assert xs.shape[1:3] == label.shape == image.shape[:2]


def test_faces_method_on_real_dcgan():
  c = get("faces")
  gen = build.generator(c)
  assert gen.resolution == c.data.resolution == 64
  method = build.method(c, gen)
  assert method.transform is None and (method.syn_batch, method.seg_batch) == (2, 2)
  shapes = jax.eval_shape(lambda p: state_lib.init_state(method, p, c.seed), gen.params)
  flat = matching.flatten(shapes.seg_params)
  assert sorted(method.matched) == sorted(flat)
  assert flat["outc/kernel"].shape == (1, 1, 16, 6)
  logits = jax.eval_shape(
      lambda s: method.segmenter.apply({"params": s}, jnp.zeros((2, 64, 64, 3))),
      shapes.seg_params)
  assert logits.shape == (2, 64, 64, 6)


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_commands_load(name):
  doc = module(name).__doc__
  for launcher in ("launch/annotate.py", "launch/downstream.py", "launch/evaluate.py"):
    assert f"python {launcher}" in doc
  assert "--split test" in doc
  commands = re.findall(rf"--config configs/{name}\.py(?::(\S+))?", doc)
  assert commands, doc
  for arg in commands:
    get(name, arg or None)  # every documented argument string parses


def _value(c, key: str):
  node = c
  for part in key.split("."):
    node = node[part]
  return tuple(node) if isinstance(node, (list, tuple)) else node


@pytest.mark.parametrize("name,arg,dataset", [case for case in CASES if case[0] != "faces"],
                         ids=[i for i in IDS if not i.startswith("faces")])
def test_paper_configs_have_the_paper_settings(name, arg, dataset):
  del dataset
  from gmseg import config_base
  c = get(name, arg)
  for key, want in config_base.PAPER_SETTINGS.items():
    assert _value(c, key) == want, key
  # Spelled out, the keys whose gmseg defaults differ from the paper's code.
  assert (c.annotator.norm, c.segmenter.norm, c.segmenter.backbone_norm) == ("batch",) * 3
  assert c.annotator.bn_running_var == c.segmenter.bn_running_var == "unbiased"
  assert c.train.ann_step_seg_stats == "update"
  assert c.generator.kwargs.truncation_psi == 0.7
  # ... and the models they build use torch's running variance.
  n = build.num_classes(c)
  assert build.annotator(c).bn_running_var == "unbiased"
  assert build.segmenter(c.segmenter, n).bn_running_var == "unbiased"


@pytest.mark.parametrize("name", ["faces", "tiny"])
def test_gmseg_configs_keep_gmseg_defaults(name):
  from gmseg import config_base
  c, base = get(name), config_base.get_base()
  assert (c.annotator.norm, c.segmenter.norm) == ("group", "group")
  assert c.annotator.bn_running_var == c.segmenter.bn_running_var == "biased"
  assert c.train.ann_step_seg_stats == "frozen"
  assert c.segmenter.backbone_norm == "frozen_batch"
  # The switch leaves the base config's defaults alone (it edits a copy only).
  assert (base.annotator.norm, base.train.ann_step_seg_stats) == ("group", "frozen")
  paper = config_base.paper_settings(config_base.get_base(), cutoff=7)
  assert paper.generator.kwargs.truncation_cutoff == 7
  assert config_base.get_base().annotator.norm == "group"
