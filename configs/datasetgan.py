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

DatasetGAN's own generators, StyleGAN (v1), with `gen=stylegan1`: `gen_path=`
its `karras2019stylegan-{celebahq-1024x1024,cars-512x384,cats-256x256}.for_g_all.pt`
and `w_avg=` the average-latent .npy beside it (psi 0.7 and the same cutoffs;
the face generator is 1024x1024, its image and last two features resized to
512 as the paper's code does), e.g.

  D=checkpoints/stylegan_pretrain
  python launch/annotate.py --workdir runs/dgan_face_sg1_deeplab \
    --config configs/datasetgan.py:obj=face,seg=deeplab,gen=stylegan1,w_avg=$D/avg_latent_stylegan1.npy,gen_path=$D/karras2019stylegan-celebahq-1024x1024.for_g_all.pt

Phase two (the annotator's last snapshot, so the test set never selects it)
and evaluation (5-fold CV on test over the last 20 epoch snapshots):

  python launch/downstream.py --config configs/datasetgan.py:obj=car,seg=deeplab \
    --workdir runs/dgan_car_deeplab --annotator_step=latest
  python launch/evaluate.py --workdir runs/dgan_car_deeplab --split test --which downstream --protocol cv5

Device memory. The global batches are 2 labelled / 2 synthetic / 2 segmenter
(split over the devices: 1 or 2 of them; for more, raise batch.*). XLA's
memory analysis of the compiled annotator step, on one device, float32
(`launch/memory_report.py --mode=configs`; compiled for CPU, so an estimate
for GPU/TPU: add the allocator's overhead; README "Memory and precision"):
seg=unet at 512 (car, face; gen=stylegan2 of the official 512 shapes (StyleGAN
v1: not measured), all UNet parameters matched): peak 9.9 GB; cat (256) with
DeepLab: about 1.4 GB as configs/celeba.py; car/face with DeepLab at 512: not
measured (more than cgpart's 3.1 GB at 256).

Arguments: obj (car | cat | face), seg (deeplab | unet), gen (stylegan2 |
stylegan1), num (labelled images; 0 = all, default the paper's count), seed,
steps, gen_path, w_avg (stylegan1's average latent .npy), pretrained,
data_dir, manual_dir (DatasetGAN's `annotation` folder).
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
# obj -> resolution of DatasetGAN's StyleGAN (v1) generator (face 1024 is
# returned at 512; cars are 512x384 content on a 512x512 canvas).
STYLEGAN1_RESOLUTIONS = {"car": 512, "cat": 256, "face": 1024}
GENERATORS = ("stylegan2", "stylegan1")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_base.parse_arg(arg, obj="car", seg="deeplab", gen="stylegan2", num=-1, seed=0,
                              steps=150_000, gen_path="", w_avg="", pretrained="", data_dir="",
                              manual_dir="")
  if arg.obj not in OBJECTS:
    raise ValueError(f"obj={arg.obj!r}: DatasetGAN object must be one of {tuple(OBJECTS)}.")
  if arg.seg not in SEGMENTERS:
    raise ValueError(f"seg={arg.seg!r}: segmenter must be one of {tuple(SEGMENTERS)}.")
  if arg.gen not in GENERATORS:
    raise ValueError(f"gen={arg.gen!r}: generator must be one of {GENERATORS}.")
  if arg.w_avg and arg.gen != "stylegan1":
    raise ValueError(f"w_avg={arg.w_avg!r} is StyleGAN (v1)'s average latent; a StyleGAN2 "
                     "snapshot holds its own: drop it or use gen=stylegan1.")
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

  c.generator.name = arg.gen
  # Not a checkpoint: building the generator from it fails with this text in
  # the error, which says what to pass.
  if arg.gen == "stylegan2":
    unset = f"<unset: pass gen_path=<StyleGAN2 {arg.obj} .pkl or converted dir>>"
    c.generator.kwargs = ml_collections.ConfigDict({
        "path": arg.gen_path or unset, "truncation_psi": 0.7, "truncation_cutoff": cutoff,
        "noise_mode": "random"})
  else:
    unset = f"<unset: pass gen_path=<DatasetGAN's StyleGAN {arg.obj} .for_g_all.pt>>"
    c.generator.kwargs = ml_collections.ConfigDict({
        "path": arg.gen_path or unset,
        "w_avg_path": arg.w_avg or "<unset: pass w_avg=<avg_latent_stylegan1.npy>>",
        "resolution": STYLEGAN1_RESOLUTIONS[arg.obj], "truncation_psi": 0.7,
        "truncation_cutoff": cutoff, "noise_mode": "random"})

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
