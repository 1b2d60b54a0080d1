"""From a config to the objects the programs run: generator, models, method,
labelled arrays. One place, so launchers and notebooks build the same things.
"""
import dataclasses
import os
from typing import Optional

from absl import logging
import flax.linen as nn
import jax
import numpy as np

from gmseg import generator_registry
from gmseg import config_base
from gmseg import state as state_lib
from gmseg.models import annotator as annotator_lib
from gmseg.models import generators
from gmseg.models import layers


def generator(config) -> generators.Generator:
  """The configured frozen generator (`config.generator.name/kwargs`)."""
  return generator_registry.get(config.generator.name, **dict(config.generator.kwargs))


def num_classes(config) -> int:
  return len(config.class_names)


def segmenter(seg_cfg, n_classes: int) -> nn.Module:
  """UNet or DeepLabV3 from a `config.segmenter`-shaped ConfigDict."""
  # Configs saved before the key existed kept Flax's biased running variance.
  running_var = seg_cfg.get("bn_running_var", "biased")
  if seg_cfg.arch == "unet":
    from gmseg.models import unet
    # Configs saved before the key existed ran half-pixel upsampling.
    return unet.UNet(n_classes, widths=tuple(seg_cfg.widths), norm=seg_cfg.norm,
                     upsample=seg_cfg.get("upsample", "half_pixel"),
                     bn_running_var=running_var)
  if seg_cfg.arch == "deeplab":
    from gmseg.models import deeplab
    return deeplab.DeepLabV3(n_classes, depth=seg_cfg.depth, norm=seg_cfg.norm,
                             backbone_norm=seg_cfg.backbone_norm,
                             dropout=seg_cfg.dropout, bn_running_var=running_var)
  raise ValueError(f"Unknown segmenter arch {seg_cfg.arch!r}; use 'unet' or 'deeplab'.")


def pretrained_segmenter(seg_cfg, params, stats):
  """Loads `seg_cfg.pretrained` (a torchvision ResNet .pth) into a DeepLab
  backbone; returns (params, batch_stats). Without a file, DeepLab trains
  from scratch, unlike the paper: say so once in the log."""
  if seg_cfg.arch != "deeplab":
    if seg_cfg.pretrained:
      raise ValueError(f"segmenter.pretrained={seg_cfg.pretrained!r} is only for "
                       "arch='deeplab' (ImageNet ResNet backbone); set it to ''.")
    return params, stats
  if not seg_cfg.pretrained:
    logging.warning("DeepLab without an ImageNet backbone (segmenter.pretrained=''): "
                    "the paper starts from torchvision's resnet101-63fe2227.pth.")
    return params, stats
  from gmseg.models import deeplab
  loaded = deeplab.load_torchvision_resnet(seg_cfg.pretrained, params, stats)
  return loaded["params"], loaded["batch_stats"]


ANNOTATOR_INPUTS = ("features", "features+image")
HEAD_RESOLUTIONS = ("features", "image")


def annotator(config, image_hw: Optional[tuple[int, int]] = None) -> nn.Module:
  """The annotator of `config.annotator`.

  Args:
    image_hw: the generator's image size, needed by `head_resolution='image'`.
  """
  a = config.annotator
  # .get: configs saved before these keys existed ran the paper's annotator.
  head = a.get("head_resolution", "features")
  if head not in HEAD_RESOLUTIONS:
    raise ValueError(f"annotator.head_resolution={head!r}: use one of {HEAD_RESOLUTIONS}.")
  if head == "image" and image_hw is None:
    raise ValueError("annotator.head_resolution='image' needs the generator's image size: "
                     "call build.annotator(config, image_hw=(gen.resolution, gen.resolution)).")
  return annotator_lib.Annotator(num_classes(config), tmp_channels=a.tmp_channels,
                                 num_layers=a.num_layers, norm=a.norm,
                                 head_size=tuple(image_hw) if head == "image" else None,
                                 bn_running_var=a.get("bn_running_var", "biased"))


def annotator_gen_fn(config, gen: generators.Generator) -> generators.GeneratorFn:
  """The generator function the method runs: `gen.apply_fn`, with the image
  appended to the features (highest resolution, last) when
  `annotator.inputs='features+image'` (beyond the paper: the DCGAN's largest
  feature map is 32x32 for a 64x64 image, and an eye is a few pixels)."""
  inputs = config.annotator.get("inputs", "features")
  if inputs not in ANNOTATOR_INPUTS:
    raise ValueError(f"annotator.inputs={inputs!r}: use one of {ANNOTATOR_INPUTS}.")
  if inputs == "features":
    return gen.apply_fn

  def with_image(params, z, rng):
    images, feats = gen.apply_fn(params, z, rng)
    return images, tuple(feats) + (images,)
  return with_image


GEN_RESIZES = ("nearest", "bilinear")


def gen_transform(config) -> Optional[state_lib.PairTransform]:
  """Joint (image, soft label) transform between G+A and S.

  `config.gen_transform`: 'none'; 'resize' (to R x R, R = data.resolution);
  'wide_crop' (cars: the centre 3/4 rows of the square canvas, its 4:3
  content, then to R x R like the labelled car images, which are stretched to
  squares, as the paper's car config does). `config.gen_resize`: 'nearest'
  (the paper's code, for images and soft labels alike; torch's nearest, see
  layers.resize_nearest) or 'bilinear' (half-pixel centres, antialiased when
  shrinking; smoother images and labels, not the paper's).
  """
  kind, res = config.gen_transform, config.data.resolution
  # Configs saved before the key existed resized bilinearly.
  how = config.get("gen_resize", "bilinear")
  if how not in GEN_RESIZES:
    raise ValueError(f"Unknown gen_resize {how!r}; use one of {GEN_RESIZES}.")
  resize = layers.resize_nearest if how == "nearest" else layers.resize_to
  if kind == "none":
    return None
  if kind == "resize":
    return lambda x, p: (resize(x, (res, res)), resize(p, (res, res)))
  if kind == "wide_crop":
    def wide(x, p):
      h = x.shape[1]
      rows, top = (3 * h) // 4, (h - (3 * h) // 4) // 2
      return (resize(x[:, top:top + rows], (res, res)),
              resize(p[:, top:top + rows], (res, res)))
    return wide
  raise ValueError(f"Unknown gen_transform {kind!r}; use none, resize or wide_crop.")


def method(config, gen: generators.Generator, devices: int = 1) -> state_lib.Method:
  """The static Method of `config` on generator `gen`.

  Args:
    devices: local devices the global batches are split over.
  Raises:
    config_base.ConfigError: a value that could only fail in training.
  """
  config_base.check(config)
  b = config.batch
  for name in ("labelled", "synthetic", "segmenter"):
    if b[name] % devices:
      raise ValueError(f"batch.{name}={b[name]} does not divide over {devices} "
                       f"devices; use a multiple of {devices}.")
  seg = segmenter(config.segmenter, num_classes(config))
  image_hw = (gen.resolution, gen.resolution)
  steps_total = int(config.train.steps)
  probe = state_lib.Method(gen_fn=annotator_gen_fn(config, gen), z_dim=gen.z_dim,
                           annotator=annotator(config, image_hw), segmenter=seg,
                           ann_tx=_tx(config.ann_optim, steps_total),
                           seg_tx=_tx(config.seg_optim, steps_total),
                           matched=(), transform=gen_transform(config))
  shapes = jax.eval_shape(lambda p: state_lib.init_state(probe, p, 0), gen.params)
  matched = state_lib.matched_paths(shapes.seg_params, config.matching.params,
                                    config.segmenter.arch)
  m = config.matching
  return dataclasses.replace(
      probe, matched=matched, metric=m.metric, row_reduction=m.row_reduction,
      tensor_reduction=m.tensor_reduction, vectors=m.vectors,
      syn_batch=b.synthetic // devices, seg_batch=b.segmenter // devices,
      # .get: configs saved before these keys existed normalised per example.
      grad_path=m.get("grad_path", "batch"), seg_bn=m.get("seg_bn", "per_example"),
      ann_step_seg_stats=config.train.get("ann_step_seg_stats", "frozen"),
      class_weights=_class_weights(config),
      # .get: configs saved before this key existed weighted the labelled loss only.
      class_weights_on=m.get("class_weights_on", "labelled"),
      # .get: configs saved before this key existed matched unaugmented batches.
      augment=m.get("augment", "none"),
      augment_zoom=tuple(float(v) for v in config.data.get("augment_zoom", (1.0, 1.0))),
      # .get: configs saved before these keys existed ran float32, no remat.
      compute_dtype=config.get("compute_dtype", "float32"), remat=m.get("remat", "none"))


def _class_weights(config) -> tuple[float, ...]:
  """`matching.class_weights` checked against the classes (() = none)."""
  w = tuple(float(v) for v in config.matching.get("class_weights", ()))
  if w and len(w) != num_classes(config):
    raise ValueError(f"matching.class_weights has {len(w)} values for "
                     f"{num_classes(config)} classes {tuple(config.class_names)}; give one "
                     "per class or () for none.")
  return w


SCHEDULES = ("constant", "cosine")


def learning_rate(o, total_steps: int):
  """`o.lr`, or an optax schedule: linear warm-up over `o.warmup` steps from 0,
  then constant or cosine decay to 0 at `total_steps` (`o.schedule`)."""
  # .get: configs saved before these keys existed used a constant rate.
  warmup, kind = int(o.get("warmup", 0)), o.get("schedule", "constant")
  if kind not in SCHEDULES:
    raise ValueError(f"optimizer schedule={kind!r}: use one of {SCHEDULES}.")
  if warmup == 0 and kind == "constant":
    return o.lr
  import optax  # pylint: disable=g-import-not-at-top
  if kind == "constant":
    return optax.linear_schedule(0.0, o.lr, max(1, warmup))
  return optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, max(total_steps, warmup + 1))


def _tx(o, total_steps: int = 0):
  return state_lib.make_optimizer(o.name, learning_rate(o, total_steps), momentum=o.momentum)


def data_dir(config) -> str:
  d = config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.expanduser(d)


def split_arrays(config, split: str, limit: int = 0, dataset: Optional[str] = None,
                 transform: Optional[str] = None) -> dict[str, np.ndarray]:
  """A split of the configured (or given) dataset as arrays: `image` float32
  `[N, R, R, 3]` in [-1, 1], `label` uint8 `[N, R, R]`."""
  from gmseg.data import pipeline  # lazy: pulls tfds
  d = config.data
  from gmseg.data import common  # pylint: disable=g-import-not-at-top
  arrays = pipeline.load_split(dataset or d.dataset, split, resolution=d.resolution,
                               data_dir=data_dir(config),
                               manual_dir=d.manual_dir or None,
                               limit=limit or None, transform=transform or d.transform)
  # Ids beyond config.class_names would be skipped by evaluation: stop at load time.
  common.check_label_range(arrays["label"], arrays["id"], num_classes(config),
                           f"{dataset or d.dataset} split {split!r} (data_dir "
                           f"{data_dir(config)})", config.class_names)
  return arrays


def eval_dataset(config) -> str:
  """The dataset that validation and test splits come from: `data.eval_dataset`,
  or the labelled set's dataset when that is empty (e.g. rendered labelled
  faces are evaluated on real FASSEG faces)."""
  return config.data.eval_dataset or config.data.dataset


def eval_transform(config) -> str:
  """How evaluation faces are prepared: `data.eval_transform`, or
  `data.transform` when that is empty. Separate keys, so a labelled set that
  needs another preparation (rendered faces: 'resize') leaves the evaluation
  faces prepared as every other row's."""
  return config.data.get("eval_transform", "") or config.data.transform


def eval_arrays(config, split: str, limit: int = 0,
                dataset: Optional[str] = None) -> dict[str, np.ndarray]:
  """A validation/test split as arrays (see `split_arrays`, `eval_dataset`)."""
  return split_arrays(config, split, limit, dataset=dataset or eval_dataset(config),
                      transform=eval_transform(config))


def val_dataset(config) -> str:
  """The dataset of the validation split: `data.val_dataset`, or
  `eval_dataset(config)` when that is empty (e.g. faces: validation on the
  multipose V3 faces, test on the frontal02 test faces)."""
  return config.data.get("val_dataset", "") or eval_dataset(config)


def val_arrays(config) -> dict[str, np.ndarray]:
  """The validation set (`data.val_split` of `val_dataset`) as arrays."""
  d = config.data
  return eval_arrays(config, d.val_split, limit=d.num_val, dataset=val_dataset(config))


def test_is_val(config) -> bool:
  """Whether the test set is the validation set (then scored once)."""
  d = config.data
  return (d.test_split, eval_dataset(config)) == (d.val_split, val_dataset(config))
