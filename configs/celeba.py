r"""CelebAMask-HQ, 8 face-part classes, N real labelled images (paper Table 1).

StyleGAN2 face generator (psi 0.7, cutoff 8), DeepLabv3-ResNet101 segmenter,
gradients matched on the DeepLab head, 256x256, 150k iterations; the paper's
code's settings throughout (`config_base.paper_settings`: BatchNorm with
torch's running variance, SGD 1e-3, ...).

Annotator learning (phase one; S is evaluated on the 500 validation images
every 4,000 steps and the best FG-mIoU snapshot is reported on test):

  python launch/annotate.py --config configs/celeba.py:num=10 --workdir runs/celeba_n10

A real run needs the generator: `gen_path=` a StyleGAN2-ADA snapshot (.pkl)
of CelebA-HQ 256x256 or a directory converted by launch/convert_stylegan2.py,
and, as in the paper, an ImageNet-pretrained ResNet-101 (`pretrained=` a
torchvision .pth), e.g.

  python launch/annotate.py \
    --config configs/celeba.py:num=10,gen_path=checkpoints/celebahq256,pretrained=checkpoints/resnet101.pth \
    --workdir runs/celeba_n10

Phase two (10,000 generated images, a fresh DeepLab, Adam) and evaluation:

  python launch/downstream.py --config configs/celeba.py:num=10 --workdir runs/celeba_n10
  python launch/evaluate.py --workdir runs/celeba_n10 --split test
  python launch/evaluate.py --workdir runs/celeba_n10 --split test --which downstream

(evaluate: the best-validation snapshot of phase one, or of phase two with
`--which downstream`, scored on test.)

Device memory. The global batches are 2 labelled / 2 synthetic / 2 segmenter
(split over the devices: 1 or 2 of them; for more, raise batch.*). XLA's
memory analysis of the compiled annotator step, on one device, float32
(`launch/memory_report.py --mode=configs`; compiled for CPU, so an estimate
for GPU/TPU: add the allocator's overhead; README "Memory and precision"):
peak 1.4 GB (state 0.45 GB, scratch 0.87 GB) with DeepLab-101 matched on its
head and a StyleGAN2 256 of the official paper256 shapes.

Arguments (`configs/celeba.py:k=v,...`): num (labelled images: the paper
uses 2, 10, 30, 150, 1500), seed, steps, gen_path, pretrained, data_dir,
manual_dir (the CelebAMask-HQ folder for the first, offline build).
"""
import ml_collections

from gmseg import config_base
from gmseg.data import celebamask

# Not a checkpoint: building the generator from it fails with this text in the
# error, which says what to pass.
GEN_PATH_UNSET = "<unset: pass gen_path=<StyleGAN2 CelebA-HQ 256 .pkl or converted dir>>"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_base.parse_arg(arg, num=10, seed=0, steps=150_000, gen_path="",
                              pretrained="", data_dir="", manual_dir="")
  if arg.num < 0:
    raise ValueError(f"num={arg.num}: the number of labelled images must be >= 0 (0 = all 1,500).")
  c = config_base.get_base()
  c.seed = arg.seed
  c.class_names = celebamask.CLASS_NAMES

  c.generator.name = "stylegan2"
  c.generator.kwargs = ml_collections.ConfigDict({"path": arg.gen_path or GEN_PATH_UNSET})

  c.data.dataset = "celebamask8"
  c.data.labelled_split = "train"     # ids 28000-29499; the first N are used
  c.data.num_labelled = arg.num
  c.data.val_split = "validation"     # ids 27500-27999
  c.data.num_val = 0
  c.data.test_split = "test"          # ids 29500-29999
  c.data.resolution = 256
  c.data.transform = "resize"         # square images: resize only
  c.data.data_dir = arg.data_dir
  c.data.manual_dir = arg.manual_dir
  c.gen_transform = "resize"          # no-op for a 256 generator

  c.segmenter.arch = "deeplab"
  c.segmenter.depth = 101
  c.segmenter.pretrained = arg.pretrained
  c.matching.params = "deeplab:head"

  c.train.steps = arg.steps
  # The paper's code: BatchNorm (torch's running variance), SGD, truncation
  # psi 0.7 with cutoff 8, ... (config_base.PAPER_SETTINGS).
  return config_base.paper_settings(c, cutoff=8).lock()
