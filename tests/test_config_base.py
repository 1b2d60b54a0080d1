"""Strict config arguments, the base config's keys, and the config check."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from gmseg import build, config_base, errors

REPO = pathlib.Path(__file__).resolve().parents[1]


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


@pytest.mark.parametrize("key", ["ann_optim", "seg_optim", "downstream.optim"])
@pytest.mark.parametrize("lr", [float("nan"), float("inf"), -float("inf"), 0.0, -1e-3])
def test_check_rejects_nonfinite_and_nonpositive_learning_rates(key, lr):
  c = config_base.get_base()
  config_base.check(c)  # the defaults pass
  node = c
  for part in key.split("."):
    node = node[part]
  node.lr = lr
  with pytest.raises(config_base.ConfigError, match=re.escape(f"{key}.lr={lr!r}: a learning "
                                                             "rate must be a finite number > 0")):
    config_base.check(c)
  assert isinstance(config_base.ConfigError("x"), errors.UserError)


def test_method_checks_the_config_first():
  c = config_base.get_base()
  c.generator.kwargs = {"resolution": 16, "width": 8, "z_dim": 4}
  c.segmenter.widths = (4, 4, 4, 4, 4)
  c.seg_optim.lr = float("nan")
  with pytest.raises(config_base.ConfigError, match="seg_optim.lr=nan"):
    build.method(c, build.generator(c))


def test_nan_learning_rate_is_one_error_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "launch/annotate.py", "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'w'}", "--config.ann_optim.lr=nan"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 1
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert lines == ["error: ann_optim.lr=nan: a learning rate must be a finite number > 0 "
                   "(the paper's: 1e-3); pass e.g. --config.ann_optim.lr=1e-3."], proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
