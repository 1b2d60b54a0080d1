r"""CGPart cars: rendered labelled images, real test images (the paper's 3D-render experiment).

The labelled set is *rendered*: CGPart renders of four ShapeNet cars
(minivan, SUV, sedan, wagon) with their part maps, 15 simplified classes
(`train` split; all renders by default: ids are sorted by model, so the first
N would all be minivans). Real CGPart car images are the validation and test
set (`test` split). StyleGAN2 car generator (psi 0.7, cutoff 8) whose 4:3
content is cropped from the square canvas ('wide_crop') and stretched to
256x256 like the renders, so both sets share one shape (the paper gives
256x192 for CGPart);
DeepLabv3-ResNet101 matched on its head (or seg=unet, all parameters);
150k iterations; the paper's code's settings throughout
(`config_base.paper_settings`).

Annotator learning:

  python launch/annotate.py --config configs/cgpart.py --workdir runs/cgpart_car

A real run needs `gen_path=` the StyleGAN2 car snapshot (512x512, .pkl or a
directory from launch/convert_stylegan2.py) and, for DeepLab, `pretrained=`
an ImageNet torchvision ResNet-101 .pth, e.g.

  python launch/annotate.py \
    --config configs/cgpart.py:gen_path=checkpoints/car512,pretrained=checkpoints/resnet101.pth \
    --workdir runs/cgpart_car

Phase two and evaluation:

  python launch/downstream.py --config configs/cgpart.py --workdir runs/cgpart_car
  python launch/evaluate.py --workdir runs/cgpart_car --split test
  python launch/evaluate.py --workdir runs/cgpart_car --split test --which downstream

Device memory. The global batches are 2 labelled / 2 synthetic / 2 segmenter
(split over the devices: 1 or 2 of them; for more, raise batch.*). XLA's
memory analysis of the compiled annotator step, on one device, float32
(`launch/memory_report.py --mode=configs`; compiled for CPU, so an estimate
for GPU/TPU: add the allocator's overhead; README "Memory and precision"):
seg=deeplab (StyleGAN2 512 shapes, its 4:3 crop at 256): peak 3.1 GB (state
0.45 GB, scratch 2.5 GB); seg=unet: not measured.

Arguments: seg (deeplab | unet), num (rendered images, 0 = all), seed, steps,
gen_path, pretrained, data_dir, manual_dir (the folder holding CGPart_render
and CGPart_real).
"""
import ml_collections

from gmseg import config_base
from gmseg.data import cgpart

SEGMENTERS = {"deeplab": "deeplab:head", "unet": "unet:all"}
# Not a checkpoint: building the generator from it fails with this text in the
# error, which says what to pass.
GEN_PATH_UNSET = "<unset: pass gen_path=<StyleGAN2 car 512 .pkl or converted dir>>"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_base.parse_arg(arg, seg="deeplab", num=0, seed=0, steps=150_000, gen_path="",
                              pretrained="", data_dir="", manual_dir="")
  if arg.seg not in SEGMENTERS:
    raise ValueError(f"seg={arg.seg!r}: segmenter must be one of {tuple(SEGMENTERS)}.")
  if arg.pretrained and arg.seg != "deeplab":
    raise ValueError(f"pretrained={arg.pretrained!r} is a ResNet backbone for seg=deeplab; "
                     "the UNet has no pretrained weights: drop it or use seg=deeplab.")
  if arg.num < 0:
    raise ValueError(f"num={arg.num}: the number of rendered images must be >= 0 (0 = all).")
  c = config_base.get_base()
  c.seed = arg.seed
  c.class_names = cgpart.CLASS_NAMES

  c.generator.name = "stylegan2"
  c.generator.kwargs = ml_collections.ConfigDict({"path": arg.gen_path or GEN_PATH_UNSET})

  c.data.dataset = "cgpart_car"
  c.data.labelled_split = "train"     # the renders
  c.data.num_labelled = arg.num
  c.data.val_split = "test"           # real images: the paper validates on them
  c.data.num_val = 0
  c.data.test_split = "test"
  c.data.resolution = 256
  # Renders and real crops come at native, mixed aspect ratios.
  c.data.transform = "resize"
  c.data.data_dir = arg.data_dir
  c.data.manual_dir = arg.manual_dir
  # 512 canvas -> centre 384 rows -> 256x256, the shape of the stretched renders.
  c.gen_transform = "wide_crop"

  c.segmenter.arch = arg.seg
  c.segmenter.depth = 101
  c.segmenter.pretrained = arg.pretrained
  c.matching.params = SEGMENTERS[arg.seg]

  c.train.steps = arg.steps
  # The paper's code: BatchNorm (torch's running variance), SGD, truncation
  # psi 0.7 with cutoff 8, ... (config_base.PAPER_SETTINGS).
  return config_base.paper_settings(c, cutoff=8).lock()
