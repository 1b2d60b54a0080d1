r"""Pascal-Part horse or aeroplane, 6 part classes, N real labelled crops (paper Table 2).

StyleGAN2 generator of the object (psi 0.7, cutoff 7), DeepLabv3-ResNet101
segmenter, gradients matched on the DeepLab head, 256x256 instance crops,
150k iterations; the paper's code's settings throughout
(`config_base.paper_settings`). Validation is the training crops after the
first 180.

Annotator learning (phase one; best validation FG-mIoU snapshot reported):

  python launch/annotate.py --config configs/pascal.py:obj=horse,num=10 --workdir runs/horse_n10

A real run needs `gen_path=` a StyleGAN2 snapshot (.pkl) of the object class
at 256x256 (or a directory from launch/convert_stylegan2.py) and, as in the
paper, `pretrained=` an ImageNet torchvision ResNet-101 .pth, e.g.

  python launch/annotate.py \
    --config configs/pascal.py:obj=aeroplane,num=30,gen_path=checkpoints/aeroplane256,pretrained=checkpoints/resnet101.pth \
    --workdir runs/aeroplane_n30

Phase two and evaluation (VOC val crops):

  python launch/downstream.py --config configs/pascal.py:obj=horse,num=10 --workdir runs/horse_n10
  python launch/evaluate.py --workdir runs/horse_n10 --split test
  python launch/evaluate.py --workdir runs/horse_n10 --split test --which downstream

Device memory. The global batches are 2 labelled / 2 synthetic / 2 segmenter
(split over the devices: 1 or 2 of them; for more, raise batch.*). As
configs/celeba.py (same networks, 6 classes instead of 8): XLA's memory
analysis of the compiled annotator step, on one device, float32
(`launch/memory_report.py --mode=configs`; compiled for CPU, so an estimate
for GPU/TPU: add the allocator's overhead; README "Memory and precision"):
about 1.4 GB.

Arguments: obj (horse | aeroplane), num (the paper uses 2, 10, 30, 100, 180),
seed, steps, gen_path, pretrained, data_dir, manual_dir (the folder holding
VOCdevkit and Pascal-Part's Annotations_Part, for the first build).
"""
import ml_collections

from gmseg import config_base
from gmseg.data import pascal_part

OBJECTS = ("horse", "aeroplane")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_base.parse_arg(arg, obj="horse", num=10, seed=0, steps=150_000, gen_path="",
                              pretrained="", data_dir="", manual_dir="")
  if arg.obj not in OBJECTS:
    raise ValueError(f"obj={arg.obj!r}: Pascal-Part object must be one of {OBJECTS}.")
  if arg.num < 0:
    raise ValueError(f"num={arg.num}: the number of labelled crops must be >= 0 (0 = all 180).")
  c = config_base.get_base()
  c.seed = arg.seed
  c.class_names = pascal_part.CLASS_NAMES[arg.obj]

  c.generator.name = "stylegan2"
  # Not a checkpoint: building the generator from it fails with this text in
  # the error, which says what to pass.
  unset = f"<unset: pass gen_path=<StyleGAN2 {arg.obj} 256 .pkl or converted dir>>"
  c.generator.kwargs = ml_collections.ConfigDict({"path": arg.gen_path or unset})

  c.data.dataset = f"pascal_{arg.obj}"
  c.data.labelled_split = "train"     # the first 180 sorted crops; the first N are used
  c.data.num_labelled = arg.num
  c.data.val_split = "validation"     # the remaining training crops
  c.data.num_val = 0
  c.data.test_split = "test"          # crops of VOC val
  c.data.resolution = 256
  c.data.transform = "resize"         # crops are already square (padded boxes)
  c.data.data_dir = arg.data_dir
  c.data.manual_dir = arg.manual_dir
  c.gen_transform = "resize"          # no-op for a 256 generator

  c.segmenter.arch = "deeplab"
  c.segmenter.depth = 101
  c.segmenter.pretrained = arg.pretrained
  c.matching.params = "deeplab:head"

  c.train.steps = arg.steps
  # The paper's code: BatchNorm (torch's running variance), SGD, truncation
  # psi 0.7 with cutoff 7, ... (config_base.PAPER_SETTINGS).
  return config_base.paper_settings(c, cutoff=7).lock()
