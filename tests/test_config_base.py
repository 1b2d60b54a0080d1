"""Strict config arguments and the base config's keys."""
import pytest

from gmseg import build, config_base


def test_parse_arg_types_and_errors():
  out = config_base.parse_arg("num=3,flag=no,lr=0.5,name=x", num=1, flag=True, lr=1.0, name="")
  assert (out.num, out.flag, out.lr, out.name) == (3, False, 0.5, "x")
  with pytest.raises(ValueError, match=r"num='ten' is not a valid int"):
    config_base.parse_arg("num=ten", num=1)
  with pytest.raises(ValueError, match=r"Unknown config argument 'nm'; known: \['num'\]"):
    config_base.parse_arg("nm=1", num=1)
  with pytest.raises(ValueError, match="not key=value"):
    config_base.parse_arg("num", num=1)
  with pytest.raises(ValueError, match="not a bool"):
    config_base.parse_arg("flag=maybe", flag=True)


def test_eval_dataset_defaults_to_the_labelled_dataset():
  c = config_base.get_base()
  assert build.eval_dataset(c) == c.data.dataset
  c.data.eval_dataset = "fasseg/frontal02"
  c.data.dataset = "rendered_faces"
  assert build.eval_dataset(c) == "fasseg/frontal02"


def test_method_rejects_batches_that_do_not_divide_over_devices():
  c = config_base.get_base()
  c.generator.kwargs = {"resolution": 16, "width": 8, "z_dim": 4}
  c.segmenter.widths = (4, 4, 4, 4, 4)
  c.batch.synthetic = 3
  with pytest.raises(ValueError, match="batch.synthetic=3 does not divide over 2 devices"):
    build.method(c, build.generator(c), devices=2)


def test_pretrained_file_only_for_deeplab():
  c = config_base.get_base()
  c.segmenter.pretrained = "/nowhere/resnet101.pth"
  with pytest.raises(ValueError, match="only for arch='deeplab'"):
    build.pretrained_segmenter(c.segmenter, {}, {})
  c.segmenter.arch = "deeplab"
  with pytest.raises(FileNotFoundError, match="download.pytorch.org"):
    build.pretrained_segmenter(c.segmenter, {"backbone": {"stem_norm": {"scale": 0}}}, {"backbone": {}})
