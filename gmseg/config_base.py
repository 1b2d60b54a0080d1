"""The base experiment config: every key, with what it means.

Experiment files in configs/ call `get_base()` and override keys; config
arguments (`configs/x.py:num=10,seed=1`) are parsed strictly by `parse_arg`.
Durations are in steps. gmseg's defaults were chosen on validation data and
differ from the paper's code in places; `paper_settings(config)` sets every
key where they differ (PAPER_SETTINGS) as the paper's code runs, for the
paper's experiments (configs/celeba, pascal, datasetgan, cgpart).
`check(config)` rejects values that could only fail later, in training.
"""
import math
from typing import Any, Optional

import ml_collections

from gmseg import errors

FASSEG_CLASSES = ("background", "hair", "skin", "eyes", "nose", "mouth")


def get_base() -> ml_collections.ConfigDict:
  """Returns the unlocked base config (callers override, then `lock()`)."""
  c = ml_collections.ConfigDict()
  c.seed = 0                    # A/S initialisation and per-step randomness
  # Forward passes of G, A, S in the training steps: 'float32' | 'bfloat16'
  # (parameters, optimiser state, losses, gradients stay float32).
  c.compute_dtype = "float32"
  c.class_names = FASSEG_CLASSES  # index = class id; len = number of classes

  # The frozen generator: registry name + factory kwargs (gmseg.models.generators).
  c.generator = ml_collections.ConfigDict({"name": "random_conv", "kwargs": {}})

  # Labelled sets. `dataset` is a gmseg.data.registry name; `num` keeps the
  # first N ids (0 = all); data_dir '' = $TFDS_DATA_DIR or ~/tensorflow_datasets;
  # manual_dir holds raw files for offline builds.
  c.data = ml_collections.ConfigDict({
      "dataset": "fasseg/frontal02",
      "labelled_split": "train",
      "num_labelled": 2,
      "val_split": "test",     # periodic evaluation (best-snapshot selection)
      "num_val": 0,
      "test_split": "test",
      "eval_dataset": "",      # val/test come from here ('' = dataset)
      "val_dataset": "",       # val comes from here ('' = eval_dataset)
      # How val/test images are prepared ('' = transform): one preparation for
      # every row of a comparison, whatever its labelled set needs.
      "eval_transform": "",
      "resolution": 64,        # side of labelled images and segmenter input
      "transform": "square_crop",  # pipeline.load_split transform
      # Zoom range of the flip/zoom/colour augmentation (supervised baseline,
      # mixed labelled images, downstream.augment): s < 1 zooms out.
      "augment_zoom": (1.0, 1.3),
      "data_dir": "",
      "manual_dir": "",
  })

  # Joint transform of generated (image, soft label) before S: 'none',
  # 'resize' (to data.resolution) or 'wide_crop' (cars: centre 3/4 rows, then
  # to data.resolution square, like the stretched labelled car images).
  c.gen_transform = "resize"
  # How gen_transform resizes images and soft labels: 'nearest' (the paper's
  # code, torch's nearest) | 'bilinear' (antialiased when shrinking; ours before).
  c.gen_resize = "nearest"

  c.annotator = ml_collections.ConfigDict({
      "tmp_channels": 128,     # FPN width (paper: 128)
      "num_layers": 3,         # head depth (paper: 3)
      "norm": "group",         # group | batch (paper) | none
      # BatchNorm's running variance: 'biased' (Flax's; ours) | 'unbiased'
      # (torch's n/(n-1), the paper's code; layers.norm_layer).
      "bn_running_var": "biased",
      # Beyond the paper (faces): 'features+image' appends the generated image
      # to the generator features; head_resolution 'image' upsamples the fused
      # pyramid to the image size before the head (pixel features).
      "inputs": "features",    # features (paper) | features+image
      "head_resolution": "features",  # features (paper) | image
  })

  # Segmenter S: arch 'unet' or 'deeplab'. UNet reads widths; DeepLab reads
  # depth, backbone_norm, dropout, pretrained (local torchvision .pth, '' = none).
  c.segmenter = ml_collections.ConfigDict({
      "arch": "unet",
      "widths": (64, 128, 256, 512, 512),
      "norm": "group",
      # BatchNorm's running variance ('batch' norms, head and backbone):
      # 'biased' (Flax's; ours) | 'unbiased' (torch's, the paper's code).
      "bn_running_var": "biased",
      "depth": 101,
      "backbone_norm": "frozen_batch",
      "dropout": 0.5,
      "pretrained": "",
      # UNet bilinear x2: 'align_corners' (paper's code) | 'half_pixel'.
      "upsample": "align_corners",
  })

  # Gradient matching (gmseg.matching): params is '<arch>:<preset>' or 're:<regex>'.
  c.matching = ml_collections.ConfigDict({
      "params": "unet:all",
      "metric": "cosine",
      "row_reduction": "mean",
      "tensor_reduction": "mean",
      "vectors": "zero",       # 1-D tensors: zero (paper) | exclude | match
      # Per-class weights of the labelled loss behind the target gradient
      # (beyond the paper, e.g. small face parts up-weighted); () = none (paper).
      "class_weights": (),
      # Which losses carry class_weights: 'labelled' (the target gradient's
      # only) | 'both' (also the synthetic soft cross-entropy being matched).
      "class_weights_on": "labelled",
      # Beyond the paper: weight of an anchor term in the annotator's loss,
      # matching distance + anchor * soft cross-entropy of the annotator's
      # labels against a teacher's (the supervised k-shot segmenter in the
      # faces job) on the annotator step's samples; 0 = none (the paper).
      "anchor": 0.0,
      # Beyond the paper (gmseg.views): 'siamese' shows the annotator step's
      # labelled and synthetic batches through one random flip / zoom
      # (data.augment_zoom) / colour view per iteration, as Dataset
      # Condensation's Siamese augmentation; 'siamese_train' also shows the
      # segmenter step's synthetic batch through a view; 'none' = the paper.
      "augment": "none",
      # S's mean gradients in the annotator step: 'batch' (one grad of the
      # batch loss; exact, fast) | 'per_example' (vmap(grad), then the mean).
      "grad_path": "batch",
      # S's BatchNorm statistics in the annotator step: 'across_batch' (over
      # the whole labelled / synthetic batch, per device: the paper's code) |
      # 'per_example' (each example alone, our earlier rule). GroupNorm: no effect.
      "seg_bn": "across_batch",
      # jax.checkpoint policy of S inside the annotator step: 'none' (keep
      # activations) | 'nothing_saveable' | 'dots_saveable' | ... (recompute:
      # less device memory, more time; README "Memory and precision").
      "remat": "none",
  })

  # Optimisers (paper: SGD lr 1e-3 momentum 0.9 for both).
  # warmup: steps of linear warm-up from 0; schedule: constant | cosine (to 0
  # at train.steps). Paper: no schedule.
  c.ann_optim = ml_collections.ConfigDict({"name": "sgd", "lr": 1e-3, "momentum": 0.9,
                                           "warmup": 0, "schedule": "constant"})
  c.seg_optim = ml_collections.ConfigDict({"name": "sgd", "lr": 1e-3, "momentum": 0.9,
                                           "warmup": 0, "schedule": "constant"})

  # Beyond the paper (gmseg.warm_start): before matching, fit the annotator
  # to a teacher's soft labels on generated images (the experiment passes the
  # teacher, e.g. the supervised k-shot segmenter). Paper: none.
  c.warm_start = ml_collections.ConfigDict({
      "distill_steps": 0,      # distillation steps (0 = off)
      "lr": 1e-3,              # its Adam learning rate
      "batch": 8,              # generated images per distillation step
      "segmenter": False,      # also start phase one's S from the teacher
  })

  # Global batch sizes (split over devices and hosts).
  c.batch = ml_collections.ConfigDict({
      "labelled": 2,           # labelled images per annotator step
      "synthetic": 2,          # generated samples per annotator step
      "segmenter": 2,          # generated samples per segmenter step
  })

  c.train = ml_collections.ConfigDict({
      "steps": 150_000,        # iterations of the A/S loop
      "ann_every": 1,          # run an annotator step every k iterations
      "seg_every": 1,          # run a segmenter step every k iterations
      "log_every": 100,
      "eval_every": 4_000,     # validation + best-snapshot tracking
      "ckpt_every": 4_000,
      "grid_every": 4_000,
      "keep": 3,               # latest checkpoints kept (plus the best)
      "eval_batch": 8,
      # S's BatchNorm running statistics in the annotator step: 'frozen' (kept;
      # ours) | 'update' (moved by the labelled then the synthetic pass, as the
      # paper's code, which runs S in training mode; needs seg_bn=across_batch).
      "ann_step_seg_stats": "frozen",
      # Beyond the paper: re-initialise S (and its optimiser state) before
      # every n-th iteration, so A is matched against young segmenters
      # (0 = never; the paper trains one S along the whole loop).
      "seg_restart_every": 0,
      # Iterations run as one program (one dispatch) between host actions
      # (log, eval, checkpoint, grid); same results, bitwise. 1 = one dispatch
      # per iteration. Used when ann_every = seg_every = 1.
      "steps_per_dispatch": 1,
  })

  # Phase two: synthetic dataset from G + A, then a fresh segmenter.
  c.downstream = ml_collections.ConfigDict({
      "num_images": 10_000,
      "gen_batch": 16,
      "filter": "none",        # none | confidence | ensemble | gradient (beyond the paper)
      "min_confidence": 0.9,   # mean max-prob per image for 'confidence'
      "keep_fraction": 0.9,    # fraction kept by 'ensemble' / 'gradient' (best scores)
      # Beyond the paper: labels = mean of the last n saved annotator snapshots'
      # soft labels (gmseg.label_sources.annotator_mean; experiments pass it). Paper: 1.
      "label_snapshots": 1,
      # Beyond the paper: weight w of the self-training labels (the supervised
      # k-shot segmenter's softmax) in phase two's labels, (1 - w) annotator +
      # w self-training (gmseg.label_sources.mixture; experiments pass it). Paper: 0.
      "label_mix": 0.0,
      # Beyond the paper: phase two labels with the annotator's logits minus
      # tau * log(matching.class_weights) (tau = this value; 0 = off). Weights
      # on the labelled loss behind the target gradient teach the annotator
      # labels whose class prior is shifted by the weights (small parts
      # painted too large); tau = 1 divides the shift back out (logit
      # adjustment; gmseg.label_sources.logit_offset). Paper: 0.
      "logit_adjust": 0.0,
      "epochs": 20,
      "batch": 8,
      "optim": ml_collections.ConfigDict({"name": "adam", "lr": 1e-3, "momentum": 0.9}),
      "segmenter": "",         # '' = same as `segmenter`
      "ckpt_every_epoch": 1,
      # Beyond the paper: then fine-tune on the k labelled images for this many
      # updates (as the supervised baseline; 0 = off): "LAGM + labelled".
      "finetune_steps": 0,
      # Beyond the paper: fine-tuning keeps a moving average of S's weights
      # with this decay, and the average is the fine-tuned model (restore.
      # restore_segmenter; 0 = off, the last weights). Chosen on V3 (README).
      "finetune_ema": 0.0,
      # Beyond the paper: places of each phase-two batch given to the k labelled
      # images (augmented) instead of synthetic ones (0 = off).
      "mix_labelled": 0,
      # Beyond the paper: flip / zoom / colour jitter of each synthetic batch
      # (pipeline.augment, as the supervised baseline's labelled batches).
      "augment": False,
  })
  return c


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `k=v,k2=v2` against `defaults` (types from the defaults).

  Unknown keys are errors listing the known ones.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(","):
    if "=" not in item:
      raise ValueError(f"Config argument {item!r} is not key=value; known "
                       f"keys: {sorted(defaults)}.")
    k, v = item.split("=", 1)
    if k not in defaults:
      raise ValueError(f"Unknown config argument {k!r}; known: {sorted(defaults)}.")
    kind = type(defaults[k])
    if kind not in (bool, int, float, str):
      raise ValueError(f"Config argument {k!r} has a {kind.__name__} default; only "
                       "bool/int/float/str arguments can be parsed from the command line.")
    if kind is bool:
      if v.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(f"Config argument {k}={v!r} is not a bool (true/false).")
      out[k] = v.lower() in ("1", "true", "yes")
      continue
    try:
      out[k] = kind(v)
    except ValueError:
      raise ValueError(f"Config argument {k}={v!r} is not a valid {kind.__name__} "
                       f"(default {defaults[k]!r}).") from None
  return out


# The paper's code, key by key (PAPER_NOTES; README "Choices worth knowing").
# Keys marked * differ from gmseg's defaults; the others are set too, so a
# paper config stays the paper's if a default changes.
PAPER_SETTINGS = {
    # * BatchNorm everywhere the paper's networks have it, with torch's
    #   unbiased running variance; S runs in training mode in the annotator
    #   step, so its running statistics move there too.
    "annotator.norm": "batch",                  # *
    "annotator.bn_running_var": "unbiased",     # *
    "segmenter.norm": "batch",                  # * UNet blocks, DeepLab head
    "segmenter.backbone_norm": "batch",         # * DeepLab backbone in training mode
    "segmenter.bn_running_var": "unbiased",     # *
    "train.ann_step_seg_stats": "update",       # *
    "matching.seg_bn": "across_batch",
    "matching.grad_path": "batch",
    "annotator.tmp_channels": 128,
    "annotator.num_layers": 3,
    "annotator.inputs": "features",
    "annotator.head_resolution": "features",
    "segmenter.upsample": "align_corners",
    "segmenter.dropout": 0.5,
    "matching.metric": "cosine",
    "matching.row_reduction": "mean",
    "matching.tensor_reduction": "mean",
    "matching.vectors": "zero",
    "matching.class_weights": (), "matching.class_weights_on": "labelled",
    "matching.anchor": 0.0, "matching.augment": "none",
    "gen_resize": "nearest",
    "ann_optim.name": "sgd", "ann_optim.lr": 1e-3, "ann_optim.momentum": 0.9,
    "ann_optim.warmup": 0, "ann_optim.schedule": "constant",
    "seg_optim.name": "sgd", "seg_optim.lr": 1e-3, "seg_optim.momentum": 0.9,
    "seg_optim.warmup": 0, "seg_optim.schedule": "constant",
    "batch.labelled": 2, "batch.synthetic": 2, "batch.segmenter": 2,
    "train.ann_every": 1, "train.seg_every": 1, "train.seg_restart_every": 0,
    "train.eval_every": 4_000, "train.ckpt_every": 4_000,   # snapshots for selection
    "downstream.num_images": 10_000, "downstream.filter": "none",
    "downstream.label_snapshots": 1, "downstream.label_mix": 0.0,
    "downstream.logit_adjust": 0.0,
    "downstream.epochs": 20, "downstream.batch": 8,
    "downstream.optim.name": "adam", "downstream.optim.lr": 1e-3,
    "downstream.segmenter": "",
    "downstream.finetune_steps": 0, "downstream.finetune_ema": 0.0,
    "downstream.mix_labelled": 0,
    "downstream.augment": False,
}
# StyleGAN truncation, set with `cutoff` (8: CelebA, car, Face-34; 7: horse,
# aeroplane, cat): psi 0.7 on the first `cutoff` ws, random noise.
PAPER_TRUNCATION_PSI = 0.7


def paper_settings(config: ml_collections.ConfigDict,
                   cutoff: Optional[int] = None) -> ml_collections.ConfigDict:
  """Sets `config` to the paper's code's behaviour (PAPER_SETTINGS) in place.

  Leaves alone what each experiment chooses: data, classes, generator path,
  segmenter arch/depth/pretrained, matched parameters, gen_transform, steps.

  Args:
    config: a config of `get_base()`'s shape, unlocked or locked (every key
      exists).
    cutoff: the StyleGAN truncation cutoff: sets generator.kwargs
      truncation_psi=0.7, truncation_cutoff=cutoff, noise_mode='random';
      None leaves the generator's kwargs alone.
  Returns:
    `config`.
  """
  for key, value in PAPER_SETTINGS.items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  if cutoff is not None:
    kw = config.generator.kwargs
    kw.truncation_psi = PAPER_TRUNCATION_PSI
    kw.truncation_cutoff = int(cutoff)
    kw.noise_mode = "random"
  return config


class ConfigError(errors.UserError, ValueError):
  """A config value that cannot run, named with its fix."""


# Optimisers whose learning rate `check` validates (absent ones are skipped).
OPTIMIZER_KEYS = ("ann_optim", "seg_optim", "downstream.optim")


def _lookup(config, key: str):
  node = config
  for part in key.split("."):
    if not hasattr(node, "get") or part not in node:
      return None
    node = node[part]
  return node


def check(config) -> None:
  """Rejects config values that would only fail later, mid-training.

  Every optimiser's learning rate (OPTIMIZER_KEYS) must be a finite number
  > 0: a NaN or infinite one trains one step and ends in a traceback, zero or
  a negative one does not learn.

  Raises:
    ConfigError naming the key, the value and the fix.
  """
  for key in OPTIMIZER_KEYS:
    optim = _lookup(config, key)
    if optim is None or "lr" not in optim:
      continue
    lr = optim["lr"]
    try:
      ok = not isinstance(lr, bool) and math.isfinite(float(lr)) and float(lr) > 0
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ConfigError(f"{key}.lr={lr!r}: a learning rate must be a finite number > 0 "
                        f"(the paper's: 1e-3); pass e.g. --config.{key}.lr=1e-3.")
  anchor = _lookup(config, "matching.anchor")
  if anchor is not None and not (isinstance(anchor, (int, float)) and not isinstance(anchor, bool)
                                 and math.isfinite(anchor) and anchor >= 0):
    raise ConfigError(f"matching.anchor={anchor!r}: the anchor weight must be a finite number "
                      ">= 0 (0 = the paper's loss); pass e.g. --config.matching.anchor=0.1.")
