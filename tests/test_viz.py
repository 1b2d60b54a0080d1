"""gmseg.viz (grids, palettes, PNGs) and launch/sample.py end to end."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gmseg import viz
from conftest import REPO


def test_fasseg_colours_and_ignore():
  labels = np.array([[[0, 1, 2], [3, 4, 5], [255, 0, 5]]])
  colors = viz.colorize(labels, "fasseg")
  assert colors.shape == (1, 3, 3, 3) and colors.dtype == np.uint8
  np.testing.assert_array_equal(colors[0, 0], [(255, 0, 0), (127, 0, 0), (255, 255, 0)])
  np.testing.assert_array_equal(colors[0, 1], [(0, 0, 255), (0, 255, 255), (0, 255, 0)])
  np.testing.assert_array_equal(colors[0, 2], [(0, 0, 0), (255, 0, 0), (0, 255, 0)])
  with pytest.raises(ValueError, match=r"\[6\].*6-colour palette"):
    viz.colorize(np.array([[6]]), "fasseg")
  with pytest.raises(ValueError, match="integer"):
    viz.colorize(np.zeros((2, 2), np.float32))


def test_generic_palette_distinct():
  for k in (2, 6, 20, 34, 60):
    pal = viz.palette(k)
    assert pal.shape == (k, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == k
    assert not np.any(np.all(pal == 0, -1)) and not np.any(np.all(pal == viz.LOW_CONFIDENCE_COLOR, -1))
  # Neighbouring ids differ clearly.
  pal = viz.palette(34).astype(int)
  assert np.abs(np.diff(pal, axis=0)).sum(-1).min() > 60
  labels = np.array([[0, 33], [255, 7]])
  np.testing.assert_array_equal(viz.colorize(labels, pal.astype(np.uint8))[1, 0], (0, 0, 0))
  np.testing.assert_array_equal(viz.colorize(labels)[0, 1], pal[33])  # default sized to max id


def test_to_uint8_and_grid():
  np.testing.assert_array_equal(viz.to_uint8(np.array([-1.5, -1, 0, 0.5, 1, 2])),
                                [0, 0, 128, 191, 255, 255])
  a = np.full((2, 3, 3), 10, np.uint8)
  b = np.full((2, 3), 20, np.uint8)  # grayscale
  g = viz.grid([[a, b], [a]], pad=1)
  assert g.shape == (1 + 2 * 3, 1 + 2 * 4, 3)
  assert (g[1:3, 1:4] == 10).all() and (g[1:3, 5:8] == 20).all() and (g[4:6, 1:4] == 10).all()
  assert (g[4:6, 5:8] == 255).all() and (g[0] == 255).all() and (g[:, 4] == 255).all()
  g = viz.grid([np.zeros((4, 5, 6, 3), np.uint8)])  # a row given as one array
  assert g.shape == (2 + 5 + 2, 2 + 4 * (6 + 2), 3)
  with pytest.raises(ValueError, match="uint8"):
    viz.grid([[np.zeros((2, 2, 3), np.float32)]])
  with pytest.raises(ValueError, match="same height"):
    viz.grid([[a, np.zeros((3, 3, 3), np.uint8)]])


def test_label_grid_rows():
  n, h, w = 3, 4, 5
  images = np.zeros((n, h, w, 3), np.float32)  # mid grey: 128
  labels = np.zeros((n, h, w), np.int64)
  labels[:, 0] = 2
  labels[:, -1] = 255
  probs = np.full((n, h, w, 6), 0.0, np.float32)
  probs[..., 0] = 0.95
  probs[:, 1, 1] = [0.5, 0.5, 0, 0, 0, 0]
  g = viz.label_grid(images, labels, probs, conf_threshold=0.9, pal="fasseg")
  assert g.shape == (2 + 4 * (h + 2), 2 + n * (w + 2), 3)
  cell = lambda r, c: g[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w]
  assert (cell(0, 1) == 128).all()
  np.testing.assert_array_equal(cell(1, 2)[0, 0], (255, 255, 0))  # skin
  np.testing.assert_array_equal(cell(1, 2)[1, 0], (255, 0, 0))    # background
  np.testing.assert_array_equal(cell(1, 2)[-1, 0], (0, 0, 0))     # ignore
  np.testing.assert_array_equal(cell(2, 0)[0, 0], (192, 192, 64))  # 50% skin over grey
  np.testing.assert_array_equal(cell(2, 0)[-1, 0], (128, 128, 128))  # ignore shows the image
  np.testing.assert_array_equal(cell(3, 1)[1, 1], viz.LOW_CONFIDENCE_COLOR)
  np.testing.assert_array_equal(cell(3, 1)[1, 2], (255, 0, 0))
  assert viz.label_grid(images, labels).shape[0] == 2 + 3 * (h + 2)  # no probs row
  with pytest.raises(ValueError, match=r"differ in \[N, H, W\]"):
    viz.label_grid(images, labels[:, :2])


def test_png_round_trips(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
  path = viz.save_png(tmp_path / "sub" / "a.png", rgb)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)
  labels = np.array([[0, 1, 5], [255, 2, 3]])
  path = viz.save_label_png(tmp_path / "l.png", labels, "fasseg")
  im = Image.open(path)
  assert im.mode == "P"
  np.testing.assert_array_equal(np.asarray(im), labels)
  np.testing.assert_array_equal(np.asarray(im.convert("RGB")), viz.colorize(labels, "fasseg"))
  with pytest.raises(ValueError, match="uint8"):
    viz.save_png(tmp_path / "b.png", rgb.astype(np.float32))


@pytest.mark.parametrize("generator, n, extra, shape", [
    ("random_conv", 5, ["--features"], (2 + 5 * 34, 2 + 5 * 34, 3)),
    ("dcgan_faces", 10, ["--cols=4", "--truncation=0.7"], (2 + 3 * 66, 2 + 4 * 66, 3)),
])
def test_sample_launcher(tmp_path, generator, n, extra, shape):
  out = tmp_path / "s.png"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, str(REPO / "launch" / "sample.py"), f"--generator={generator}",
       f"--n={n}", "--seed=3", f"--out={out}", *extra],
      capture_output=True, text=True, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert str(out) in proc.stdout
  grid = np.asarray(Image.open(out))
  assert grid.shape == shape
  first = grid[2:34, 2:34].astype(int)
  assert first.std() > 5  # an actual image, not a flat tile


def test_palette_for_uses_fasseg_colours_for_its_classes():
  pal = viz.palette_for(("background", "hair", "skin", "eyes", "nose", "mouth"))
  np.testing.assert_array_equal(pal, viz.FASSEG_PALETTE)
  assert viz.palette_for(("a", "b", "c")).shape == (3, 3)
