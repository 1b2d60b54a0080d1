"""FASSEG builder on the shared copy of frontal02 (V2), corrupted copies and the download path."""
import functools
import http.server
import shutil
import threading
import urllib.parse
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from gmseg.data import common, fasseg


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  builder = fasseg.Fasseg(config="frontal02", data_dir=str(data_dir), file_format="array_record")
  common.prepare(builder, data_dir, manual_dir=shared_path("data", "fasseg"))
  return {s: common.read_split(builder, s, data_dir) for s in ("train", "test")}


def test_counts_ids_and_snapping(built):
  assert len(built["train"]) == 20 and len(built["test"]) == 50
  assert [x["id"] for x in built["train"]] == [str(i) for i in range(1, 21)]
  for ex in built["train"] + built["test"]:
    assert ex["image"].dtype == np.uint8 and ex["image"].shape[2] == 3
    assert ex["label"].shape == ex["image"].shape[:2] and ex["image"].shape[0] == 512
    assert ex["label"].max() <= 5


def test_class_statistics(built):
  frac = np.stack([np.bincount(x["label"].ravel(), minlength=6) / x["label"].size
                   for x in built["train"]])
  assert (frac > 0).all(), "every class appears in every training label"
  # Measured on frontal02 train: background 0.041-0.265, skin 0.342-0.726,
  # hair 0.051-0.478, eyes 0.008-0.016, nose 0.019-0.037, mouth 0.008-0.021.
  assert 0.03 < frac[:, 0].min() and frac[:, 0].max() < 0.3
  assert 0.3 < frac[:, 2].min() and frac[:, 2].max() < 0.75
  np.testing.assert_allclose(frac.mean(0), [0.143, 0.306, 0.498, 0.012, 0.026, 0.015], atol=0.005)


def _copy_v2(tmp_path, n_train=3, n_test=2):
  src = shared_path("data", "fasseg", "V2")
  for sub, n in (("Train", n_train), ("Test", n_test)):
    for kind in ("RGB", "Labels"):
      (tmp_path / "V2" / f"{sub}_{kind}").mkdir(parents=True)
      for i in range(1, n + 1):
        shutil.copy(src / f"{sub}_{kind}" / f"{i}.bmp", tmp_path / "V2" / f"{sub}_{kind}" / f"{i}.bmp")
  return tmp_path


def _build(manual, data_dir):
  builder = fasseg.Fasseg(config="frontal02", data_dir=str(data_dir), file_format="array_record")
  return common.prepare(builder, data_dir, manual_dir=manual)


def test_wrong_colour_mask_names_file(tmp_path):
  manual = _copy_v2(tmp_path / "m")
  path = manual / "V2" / "Train_Labels" / "2.bmp"
  mask = np.asarray(Image.open(path).convert("RGB")).copy()
  mask[100:200, 100:200] = (255, 0, 255)  # magenta: no class, no blend of two
  Image.fromarray(mask).save(path)
  with pytest.raises(ValueError, match=r"Train_Labels/2\.bmp.*farther than"):
    _build(manual, tmp_path / "d")


def test_size_mismatch_names_file(tmp_path):
  manual = _copy_v2(tmp_path / "m")
  path = manual / "V2" / "Test_Labels" / "1.bmp"
  Image.open(path).crop((0, 0, 100, 100)).save(path)
  with pytest.raises(ValueError, match=r"Test_Labels/1\.bmp.*does not match"):
    _build(manual, tmp_path / "d")


def test_unreadable_file_names_file(tmp_path):
  manual = _copy_v2(tmp_path / "m")
  path = manual / "V2" / "Train_RGB" / "3.bmp"
  path.write_bytes(b"not an image at all")
  with pytest.raises(ValueError, match=r"Train_RGB/3\.bmp.*cannot read"):
    _build(manual, tmp_path / "d")


def test_missing_manual_folder_says_what_to_do(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "x").write_text("")
  with pytest.raises(FileNotFoundError, match="V2/Train_RGB"):
    _build(tmp_path / "empty", tmp_path / "d")


def test_urls_well_formed():
  for url in (fasseg.ARCHIVE_URL, fasseg.raw_url("V2", "train", "1.bmp", labels=True)):
    parts = urllib.parse.urlparse(url)
    assert parts.scheme == "https" and parts.netloc in ("github.com", "raw.githubusercontent.com")
    assert fasseg.COMMIT in parts.path and " " not in url
  assert fasseg.ARCHIVE_URL.endswith(f"/archive/{fasseg.COMMIT}.zip")
  assert fasseg.raw_url("V2", "test", "7.bmp").endswith(f"{fasseg.COMMIT}/V2/Test_RGB/7.bmp")


def test_download_path_from_local_http_server(tmp_path, monkeypatch):
  """The real download + unzip code, served from a local copy of the archive."""
  top = f"FASSEG-repository-{fasseg.COMMIT}"
  src = _copy_v2(tmp_path / "src" / top, n_train=2, n_test=1)
  served = tmp_path / "served"
  served.mkdir()
  with zipfile.ZipFile(served / "repo.zip", "w") as zf:
    for f in sorted(src.rglob("*.bmp")):
      zf.write(f, f.relative_to(tmp_path / "src").as_posix())
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    monkeypatch.setattr(fasseg, "ARCHIVE_URL", f"http://127.0.0.1:{server.server_address[1]}/repo.zip")
    data_dir = tmp_path / "d"
    builder = fasseg.Fasseg(config="frontal02", data_dir=str(data_dir), file_format="array_record")
    common.prepare(builder, data_dir)  # no manual_dir: downloads
    train = common.read_split(builder, "train", data_dir)
  finally:
    server.shutdown()
  assert [x["id"] for x in train] == ["1", "2"]
  assert len(common.read_split(builder, "test", data_dir)) == 1


# ---------------------------------------------------------------- multipose01 (V3)

POSES = ("-90", "-75", "-60", "-45", "-30", "-15", "0", "+15", "+30", "+45", "+60", "+75", "+90")
TEST_POSES_WITH_MASKS = ("0", "-30", "+30", "-60", "+60", "+90")  # as the repository's Test_labels


def _fake_v3(root, with_test=True):
  """A V3 folder with the public repository's layout, from the shared V3 faces.

  Train: one face per pose in `Train_RGB/<pose>/`, masks in `Train_labels/`
  (lower-case l). Test: one image per pose in `Test_RGB/<pose>/`, masks only
  for the poses the repository labels, and +30's mask wider than its image
  (as `+30/personne15248+0+30`: image 366, mask 373 at full size).
  """
  src = shared_path("data", "fasseg", "V3")
  for pose in POSES:
    face = sorted((src / "Train_RGB" / pose).glob("*.bmp"))[0].name
    splits = [("Train", True), ("Test", pose in TEST_POSES_WITH_MASKS)] if with_test else [
        ("Train", True)]
    for split, has_mask in splits:
      (root / "V3" / f"{split}_RGB" / pose).mkdir(parents=True, exist_ok=True)
      shutil.copy(src / "Train_RGB" / pose / face, root / "V3" / f"{split}_RGB" / pose / face)
      if has_mask:
        (root / "V3" / f"{split}_labels" / pose).mkdir(parents=True, exist_ok=True)
        mask = Image.open(src / "Train_labels" / pose / face)
        if split == "Test" and pose == "+30":
          w, h = mask.size
          mask = mask.resize((w + 4, h), Image.Resampling.NEAREST)
        mask.save(root / "V3" / f"{split}_labels" / pose / face)
  return root


def _build_v3(manual, data_dir):
  builder = fasseg.Fasseg(config="multipose01", data_dir=str(data_dir), file_format="array_record")
  return common.prepare(builder, data_dir, manual_dir=manual)


def test_multipose_real_layout_skips_and_reports(tmp_path, caplog):
  manual = _fake_v3(tmp_path / "m")
  with caplog.at_level("WARNING"):
    builder = _build_v3(manual, tmp_path / "d")
  train = common.read_split(builder, "train", tmp_path / "d")
  test = common.read_split(builder, "test", tmp_path / "d")
  assert len(train) == 13 and sorted({x["id"].split("/")[0] for x in train}) == sorted(POSES)
  # 13 test images: 7 without a mask, +30's mask of another width: 5 examples.
  assert sorted(x["id"].split("/")[0] for x in test) == sorted(set(TEST_POSES_WITH_MASKS) - {"+30"})
  for ex in train + test:
    assert ex["label"].shape == ex["image"].shape[:2] and ex["label"].max() <= 5
  report = fasseg.skipped_report(builder, "test")
  assert (report["images"], report["examples"]) == (13, 5)
  assert (report["skipped_without_mask"], report["skipped_size_mismatch"]) == (7, 1)
  bad = report["size_mismatch"][0]
  assert bad["id"].startswith("+30/") and bad["mask_wh"][0] == bad["image_wh"][0] + 4
  assert fasseg.skipped_report(builder, "train")["examples"] == 13
  assert any("skipped" in r.getMessage() and bad["id"] in r.getMessage() for r in caplog.records)


def test_multipose_without_test_folders_builds_train_and_explains_test(tmp_path):
  builder = _build_v3(_fake_v3(tmp_path / "m", with_test=False), tmp_path / "d")
  assert len(common.read_split(builder, "train", tmp_path / "d")) == 13
  with pytest.raises(ValueError, match=r"no split 'test'.*no V3/Test_RGB.*train split only"):
    common.read_split(builder, "test", tmp_path / "d")


def test_frontal_stays_strict_about_missing_masks(tmp_path):
  manual = _copy_v2(tmp_path / "m")
  (manual / "V2" / "Train_Labels" / "2.bmp").unlink()
  with pytest.raises(FileNotFoundError, match=r"mask for image 2\.bmp is missing"):
    _build(manual, tmp_path / "d")


def test_shared_multipose_train_split(tmp_path):
  """The real V3 copy in ../shared: 182 faces, 14 per pose, about 180-335 x 256."""
  data_dir = tmp_path / "d"
  builder = _build_v3(shared_path("data", "fasseg"), data_dir)
  train = common.read_split(builder, "train", data_dir)
  assert len(train) == 182
  poses = [x["id"].split("/")[0] for x in train]
  assert sorted(set(poses)) == sorted(POSES) and all(poses.count(p) == 14 for p in POSES)
  heights = [x["image"].shape[0] for x in train]
  assert 250 <= min(heights) and max(heights) <= 256
  frac = np.mean([np.bincount(x["label"].ravel(), minlength=6) / x["label"].size for x in train], 0)
  assert frac[3] > 0.001 and frac[2] > 0.1  # eyes present on average, skin dominant
  assert fasseg.skipped_report(builder, "train")["skipped_without_mask"] == 0
