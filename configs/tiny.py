r"""A tiny annotator-learning run for tests and smoke checks (CPU, seconds).

  .venv/bin/python launch/annotate.py --config=configs/tiny.py --workdir=/tmp/gmseg_tiny
  .venv/bin/python launch/annotate.py --config=configs/tiny.py:steps=40,num_labelled=8 --workdir=/tmp/t

Random convolutional generator at 32x32, the offline 'rendered_faces' set at
32x32 (built on first use into data.data_dir, default $TFDS_DATA_DIR or
~/tensorflow_datasets), a small annotator and UNet. Batches of 4 divide over
1, 2 or 4 devices. Arguments: steps, num_labelled, num_val, seed, dataset.
"""
from gmseg import config_base


def get_config(arg=None):
  args = config_base.parse_arg(arg, steps=20, num_labelled=8, num_val=16, seed=0,
                               dataset="rendered_faces")
  c = config_base.get_base()
  c.seed = args.seed
  c.generator.kwargs = {"resolution": 32, "width": 32, "z_dim": 16}

  c.data.dataset = args.dataset
  c.data.labelled_split = "train"
  c.data.num_labelled = args.num_labelled
  c.data.val_split = "test"
  c.data.num_val = args.num_val
  c.data.resolution = 32

  c.annotator.tmp_channels = 16
  c.annotator.num_layers = 2
  c.segmenter.widths = (8, 16, 16, 32, 32)
  c.matching.params = "unet:all"

  c.batch.labelled = 4
  c.batch.synthetic = 4
  c.batch.segmenter = 4

  c.train.steps = args.steps
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.ckpt_every = 5
  c.train.grid_every = 10
  c.train.keep = 2
  c.train.eval_batch = 8
  c.lock()
  return c
