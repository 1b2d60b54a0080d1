r"""DatasetGAN's Car-20, Cat-16 and Face-34: generated labelled images (paper Table 3).

The labelled set is DatasetGAN's own: images *generated* by a StyleGAN and
annotated by hand (16 cars, 30 cats, 16 faces; `train` split); the test set
is DatasetGAN's real annotated images (`test` split). StyleGAN2 generator
(psi 0.7; cutoff 8 for car and face, 7 for cat); DeepLabv3-ResNet101 matched
on its head, or the UNet matched on all its parameters; 150k iterations.

Evaluation protocol (DatasetGAN's, which the paper follows): there is no
validation set, so `val_split` = `test_split` = 'test' (phase one only
monitors S on it). The score is 5-fold cross-validation on the sorted test
images: each fold in turn picks, among the last 20 snapshots, the one with
the best mIoU (background included) on that fold, and its mIoU on the other
four fifths is recorded; the report is mean +- std over folds
(`gmseg.evaluate.five_fold_cv`). Phase two keeps its 20 epoch snapshots;
to cross-validate phase one's S as well, keep 20 of its snapshots
(`--config.train.keep=20`) and evaluate with `--which annotate`.

Annotator learning:

  python launch/annotate.py --config configs/datasetgan.py:obj=car,seg=deeplab --workdir runs/dgan_car_deeplab

A real run needs `gen_path=` the StyleGAN2 snapshot of the domain (.pkl, or a
directory from launch/convert_stylegan2.py): car 512x512 (4:3 content),
cat 256x256, face 512x512 (generated cars: the centre 4:3 rows, stretched
to 512x512 like the labelled cars); with seg=deeplab also `pretrained=` an ImageNet
torchvision ResNet-101 .pth, e.g.

  python launch/annotate.py \
    --config configs/datasetgan.py:obj=cat,seg=unet,gen_path=checkpoints/cat256 \
    --workdir runs/dgan_cat_unet

Phase two (the annotator's last snapshot, so the test set never selects it)
and evaluation (5-fold CV on test over the last 20 epoch snapshots):

  python launch/downstream.py --config configs/datasetgan.py:obj=car,seg=deeplab \
    --workdir runs/dgan_car_deeplab --annotator_step=latest
  python launch/evaluate.py --workdir runs/dgan_car_deeplab --split test --which downstream --protocol cv5

Arguments: obj (car | cat | face), seg (deeplab | unet), num (labelled
images; 0 = all, default the paper's count), seed, steps, gen_path,
pretrained, data_dir, manual_dir (DatasetGAN's `annotation` folder).
"""
import ml_collections

from gmseg import config_base
from gmseg.data import datasetgan

# obj -> (dataset name, labelled images, resolution, truncation cutoff, gen_transform).
OBJECTS = {
    "car": ("datasetgan_car20", 16, 512, 8, "wide_crop"),
    "cat": ("datasetgan_cat16", 30, 256, 7, "resize"),
    "face": ("datasetgan_face34", 16, 512, 8, "resize"),
}
SEGMENTERS = {"deeplab": "deeplab:head", "unet": "unet:all"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_base.parse_arg(arg, obj="car", seg="deeplab", num=-1, seed=0, steps=150_000,
                              gen_path="", pretrained="", data_dir="", manual_dir="")
  if arg.obj not in OBJECTS:
    raise ValueError(f"obj={arg.obj!r}: DatasetGAN object must be one of {tuple(OBJECTS)}.")
  if arg.seg not in SEGMENTERS:
    raise ValueError(f"seg={arg.seg!r}: segmenter must be one of {tuple(SEGMENTERS)}.")
  if arg.pretrained and arg.seg != "deeplab":
    raise ValueError(f"pretrained={arg.pretrained!r} is a ResNet backbone for seg=deeplab; "
                     "the UNet has no pretrained weights: drop it or use seg=deeplab.")
  dataset, count, resolution, cutoff, gen_transform = OBJECTS[arg.obj]
  num = count if arg.num == -1 else arg.num
  if num < 0:
    raise ValueError(f"num={arg.num}: the number of labelled images must be >= 0 (0 = all).")
  c = config_base.get_base()
  c.seed = arg.seed
  c.class_names = datasetgan.CLASS_NAMES[dataset.removeprefix("datasetgan_")]

  c.generator.name = "stylegan2"
  # Not a checkpoint: building the generator from it fails with this text in
  # the error, which says what to pass.
  unset = f"<unset: pass gen_path=<StyleGAN2 {arg.obj} .pkl or converted dir>>"
  c.generator.kwargs = ml_collections.ConfigDict({
      "path": arg.gen_path or unset, "truncation_psi": 0.7, "truncation_cutoff": cutoff,
      "noise_mode": "random"})

  c.data.dataset = dataset
  c.data.labelled_split = "train"     # DatasetGAN's annotated *generated* images
  c.data.num_labelled = num
  # No validation set: snapshots are scored on test and selected by 5-fold CV.
  c.data.val_split = "test"
  c.data.num_val = 0
  c.data.test_split = "test"
  c.data.resolution = resolution
  # The builder stores every image square at the paper's size (car: its 4:3
  # content stretched to 512x512), so only a resize is left to do here.
  c.data.transform = "resize"
  c.data.data_dir = arg.data_dir
  c.data.manual_dir = arg.manual_dir
  # Cars: the 512x512 canvas holds 4:3 content; keep its centre 384 rows and
  # stretch them back to a square, as the labelled car images are stored (the
  # paper's car config), so both sets have the same shape and aspect.
  c.gen_transform = gen_transform

  c.segmenter.arch = arg.seg
  c.segmenter.depth = 101
  c.segmenter.pretrained = arg.pretrained
  c.matching.params = SEGMENTERS[arg.seg]

  c.train.steps = arg.steps
  # The paper's code: BatchNorm (torch's running variance), SGD, truncation
  # psi 0.7 with the object's cutoff, ... (config_base.PAPER_SETTINGS).
  return config_base.paper_settings(c, cutoff=cutoff).lock()
