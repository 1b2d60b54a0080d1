"""Builders of the manually downloaded datasets, on tiny fake folders in the real layouts.

Each fake reproduces the file names, folder nesting and file formats of the
real download (CelebAMask-HQ part PNGs, VOC2010 + Pascal-Part .mat files,
DatasetGAN .jpg/.npy pairs, CGPart palette PNGs), with 8-100 px images.
"""
import pathlib

import numpy as np
from PIL import Image
import pytest
import scipy.io

from gmseg.data import celebamask, cgpart, common, datasetgan, pascal_part


def _build(builder_cls, config, manual_dir, data_dir):
  builder = builder_cls(config=config, data_dir=str(data_dir), file_format=common.FILE_FORMAT)
  common.prepare(builder, data_dir, manual_dir=manual_dir)
  return {split: common.read_split(builder, split, data_dir) for split in builder.info.splits}


def _save(array, path):
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


# ============================================================ CelebAMask-HQ

# (part, rows, cols, expected 8-class id where this part is on top).
_FACE_PARTS = [
    ("skin", slice(0, 16), slice(0, 16), 4),
    ("nose", slice(6, 9), slice(7, 9), 7),
    ("eye_g", slice(3, 6), slice(2, 14), 4),     # glasses stay skin
    ("l_eye", slice(4, 5), slice(3, 6), 2),
    ("r_eye", slice(4, 5), slice(10, 13), 2),
    ("l_brow", slice(3, 4), slice(3, 6), 3),      # over the glasses
    ("r_brow", slice(3, 4), slice(10, 13), 3),
    ("l_ear", slice(5, 9), slice(0, 2), 1),
    ("r_ear", slice(5, 9), slice(14, 16), 1),
    ("mouth", slice(11, 12), slice(6, 10), 6),
    ("u_lip", slice(10, 11), slice(6, 10), 6),
    ("l_lip", slice(12, 13), slice(6, 10), 6),
    ("hair", slice(0, 3), slice(0, 16), 5),
    ("hat", slice(0, 1), slice(4, 12), 0),
    ("ear_r", slice(8, 9), slice(0, 1), 0),       # over the left ear
    ("neck_l", slice(15, 16), slice(4, 6), 0),
    ("neck", slice(14, 16), slice(10, 16), 0),
    ("cloth", slice(15, 16), slice(12, 16), 0),
]


def _fake_celeba(root, ids, parts=_FACE_PARTS, image_size=32):
  for image_id in ids:
    _save(np.full((image_size, image_size, 3), (image_id % 200) + 20),
          root / "CelebA-HQ-img" / f"{image_id}.jpg")
    for part, rows, cols, _ in parts:
      mask = np.zeros((16, 16, 3), np.uint8)   # the release's part PNGs are RGB, 255 inside
      mask[rows, cols] = 255
      _save(mask, root / "CelebAMask-HQ-mask-anno" / str(image_id // 2000)
            / f"{image_id:05d}_{part}.png")


def _expected_face():
  expected = np.zeros((16, 16), np.uint8)
  for _, rows, cols, target in _FACE_PARTS:
    expected[rows, cols] = target
  return expected


_TINY_CELEBA = dict(train_ids=(28000, 28003), validation_ids=(27999, 28000),
                    test_ids=(29500, 29502))


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
  manual = tmp_path_factory.mktemp("celeba_manual")
  _fake_celeba(manual / "CelebAMask-HQ", [27998, 27999, 28000, 28001, 28002, 28003, 29500, 29501])
  config = celebamask.CelebAMaskConfig(name="tiny", **_TINY_CELEBA)
  return _build(celebamask.CelebAMask, config, manual, tmp_path_factory.mktemp("celeba_tfds"))


def test_celeba_mapping_is_pixel_exact(celeba):
  expected = _expected_face()
  # Spot checks written out by hand, independent of the table above.
  assert expected[4, 3] == 2 and expected[3, 2] == 4 and expected[3, 3] == 3
  assert expected[0, 5] == 0 and expected[8, 0] == 0 and expected[7, 0] == 1
  for split in ("train", "validation", "test"):
    for ex in celeba[split]:
      np.testing.assert_array_equal(ex["label"], expected)
      assert ex["image"].shape == (16, 16, 3)  # 32 px image resized to the 16 px masks
  counts = np.bincount(celeba["train"][0]["label"].ravel(), minlength=8)
  # Background: hat 8 + earring 1 + neck_l 2 + neck 12; ears 16 - 1 earring.
  np.testing.assert_array_equal(counts, [23, 15, 6, 6, 148, 40, 12, 6])


def test_celeba_19_to_8_table():
  names = dict(zip(celebamask.CLASSES_19, celebamask.MAP_19_TO_8))
  by_name = {n: celebamask.CLASS_NAMES[i] for n, i in names.items()}
  assert by_name == {
      "background": "background", "skin": "skin", "nose": "nose", "eye_g": "skin",
      "l_eye": "eye", "r_eye": "eye", "l_brow": "eyebrow", "r_brow": "eyebrow", "l_ear": "ear",
      "r_ear": "ear", "mouth": "mouth", "u_lip": "mouth", "l_lip": "mouth", "hair": "hair",
      "hat": "background", "ear_r": "background", "neck_l": "background", "neck": "background",
      "cloth": "background"}


def test_celeba_splits_are_id_ranges(celeba):
  assert [ex["id"] for ex in celeba["train"]] == ["28000", "28001", "28002"]
  assert [ex["id"] for ex in celeba["validation"]] == ["27999"]
  assert [ex["id"] for ex in celeba["test"]] == ["29500", "29501"]
  # The image pixels come from the right files (each id has its own grey level).
  assert abs(int(celeba["train"][1]["image"].mean()) - (28001 % 200 + 20)) <= 1


def test_celeba_default_splits_are_the_papers():
  config = celebamask.CelebAMask.BUILDER_CONFIGS[0]
  assert (config.train_ids, config.validation_ids, config.test_ids) == (
      (28000, 29500), (27500, 28000), (29500, 30000))
  assert celebamask.part_path(pathlib.Path("r"), 29999, "l_lip") == pathlib.Path(
      "r/CelebAMask-HQ-mask-anno/14/29999_l_lip.png")


def test_celeba_missing_id_is_an_error_naming_the_file(tmp_path):
  _fake_celeba(tmp_path / "m", [28000, 28002, 27999, 29500, 29501])  # 28001 is missing
  config = celebamask.CelebAMaskConfig(name="tiny", **_TINY_CELEBA)
  with pytest.raises(FileNotFoundError, match=r"CelebA-HQ-img/28001\.jpg"):
    _build(celebamask.CelebAMask, config, tmp_path / "m", tmp_path / "tfds")


def test_celeba_bad_files_are_clear_errors(tmp_path):
  root = tmp_path / "CelebAMask-HQ"
  _fake_celeba(root, [1, 2, 3, 4])
  (root / "CelebA-HQ-img" / "1.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(ValueError, match=r"1\.jpg: cannot read"):
    celebamask.load_example(root, 1)
  _save(np.zeros((8, 8)), root / "CelebAMask-HQ-mask-anno" / "0" / "00002_nose.png")
  with pytest.raises(ValueError, match=r"00002_nose\.png: part mask is 8x8 .* 16x16"):
    celebamask.load_example(root, 2)
  _save(np.zeros((32, 48, 3)), root / "CelebA-HQ-img" / "3.jpg")
  with pytest.raises(ValueError, match=r"3\.jpg: image is 48x32 .* 16x16"):
    celebamask.load_example(root, 3)
  for p in (root / "CelebAMask-HQ-mask-anno" / "0").glob("00004_*.png"):
    p.unlink()
  with pytest.raises(FileNotFoundError, match="no part mask '00004_<part>.png'"):
    celebamask.load_example(root, 4)
  assert celebamask.find_root(tmp_path) == root


# ============================================================ Pascal-Part


def _struct(records, fields):
  array = np.empty((1, len(records)), dtype=[(f, "O") for f in fields])
  for i, record in enumerate(records):
    for f in fields:
      array[0, i][f] = record[f]
  return array


def _box_mask(shape, box):
  """Silhouette of a VOC box (1-based inclusive)."""
  m = np.zeros(shape, np.uint8)
  x1, y1, x2, y2 = box
  m[y1 - 1:y2, x1 - 1:x2] = 1
  return m


def _write_voc_image(voc, image_id, size, objects):
  """objects: [(class, box, {part name: (rows, cols)})]; writes the jpg, xml and .mat."""
  w, h = size
  rng = np.random.default_rng(len(image_id) + sum(map(ord, image_id)))
  image = rng.integers(30, 220, (h, w, 3), dtype=np.uint8)
  _save(image, voc / "JPEGImages" / f"{image_id}.jpg")
  xml = [f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width>"
         f"<height>{h}</height><depth>3</depth></size>"]
  records = []
  for name, box, parts in objects:
    xml.append(f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
               f"<difficult>0</difficult><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
               f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")
    part_records = []
    for part_name, (rows, cols) in parts.items():
      m = np.zeros((h, w), np.uint8)
      m[rows, cols] = 1
      part_records.append({"part_name": part_name, "mask": m})
    records.append({
        "class": name, "class_ind": np.array([[13.0 if name == "horse" else 15.0]]),
        "mask": _box_mask((h, w), box),
        "parts": (_struct(part_records, ["part_name", "mask"]) if part_records
                  else np.zeros((0, 0))),
    })
  (voc / "Annotations").mkdir(parents=True, exist_ok=True)
  (voc / "Annotations" / f"{image_id}.xml").write_text("".join(xml) + "</annotation>")
  anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
  anno[0, 0]["imname"] = image_id
  anno[0, 0]["objects"] = _struct(records, ["class", "class_ind", "mask", "parts"])
  parts_dir = voc.parents[1] / "trainval" / "Annotations_Part"   # as trainval.tar.gz unpacks
  parts_dir.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(parts_dir / f"{image_id}.mat", {"anno": anno}, do_compression=True)
  return image


_HORSE0 = {  # horse 0 of image 1, box (5, 5, 36, 36): 32 px, kept
    "torso": (slice(10, 30), slice(8, 34)),
    "head": (slice(4, 12), slice(4, 12)),
    "leye": (slice(6, 7), slice(6, 7)),
    "lear": (slice(4, 5), slice(9, 11)),
    "muzzle": (slice(10, 12), slice(4, 6)),
    "neck": (slice(8, 14), slice(12, 16)),
    "lfuleg": (slice(28, 33), slice(10, 12)),
    "lfho": (slice(33, 36), slice(10, 12)),
    "rbuleg": (slice(28, 36), slice(30, 32)),
    "tail": (slice(12, 20), slice(33, 36)),
}
# Expected class per part (written out by hand: 1 head, 2 torso, 3 legs, 4 neck, 5 tail).
_HORSE0_CLASS = {"torso": 2, "head": 1, "leye": 1, "lear": 1, "muzzle": 1, "neck": 4,
                 "lfuleg": 3, "lfho": 3, "rbuleg": 3, "tail": 5}


def _fake_pascal(manual):
  voc = manual / "VOCdevkit" / "VOC2010"
  _write_voc_image(voc, "2008_000001", (100, 64), [
      ("horse", (5, 5, 36, 36), _HORSE0),
      ("person", (20, 20, 40, 60), {"head": (slice(20, 30), slice(20, 30))}),  # ignored
      ("horse", (40, 40, 60, 55), {"torso": (slice(42, 50), slice(42, 55))}),  # 21 px wide: small
      ("horse", (60, 1, 99, 40), {"lbho": (slice(30, 40), slice(60, 99)),
                                  "rear": (slice(0, 5), slice(90, 95))}),
  ])
  # Two overlapping horses (box IoU ~0.5): both skipped, though big and labelled.
  _write_voc_image(voc, "2008_000002", (80, 60), [
      ("horse", (1, 1, 50, 50), {"torso": (slice(5, 45), slice(5, 45))}),
      ("horse", (20, 10, 70, 58), {"torso": (slice(12, 55), slice(22, 68))}),
  ])
  # A wide horse at the image border: the square is clipped and padded; a
  # second horse with parts under 1% of its crop is dropped.
  _write_voc_image(voc, "2008_000003", (100, 40), [
      ("horse", (1, 9, 60, 40), {"torso": (slice(15, 35), slice(0, 60)),
                                 "neck": (slice(15, 18), slice(0, 3))}),
      ("horse", (61, 1, 100, 40), {"tail": (slice(0, 3), slice(60, 64))}),  # 12 px < 1% of 1600
  ])
  # Listed as negative: never read (and has no .mat).
  _save(np.zeros((40, 40, 3)), voc / "JPEGImages" / "2008_000004.jpg")
  # Positive in the VOC list but no horse in its Pascal-Part annotation.
  _write_voc_image(voc, "2008_000005", (50, 50), [
      ("person", (1, 1, 50, 50), {"head": (slice(0, 10), slice(0, 10))})])
  _write_voc_image(voc, "2009_000001", (40, 40), [
      ("horse", (1, 1, 40, 40), {"torso": (slice(10, 30), slice(10, 30))})])
  main = voc / "ImageSets" / "Main"
  main.mkdir(parents=True, exist_ok=True)
  (main / "horse_train.txt").write_text(
      "2008_000001  1\n2008_000002  1\n2008_000003  1\n2008_000004 -1\n2008_000005  1\n")
  (main / "horse_val.txt").write_text("2009_000001  1\n")
  return voc


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
  manual = tmp_path_factory.mktemp("pascal_manual")
  voc = _fake_pascal(manual)
  config = pascal_part.PascalPartConfig(name="tiny_horse", obj="horse", min_size=32, num_train=2)
  splits = _build(pascal_part.PascalPart, config, manual, tmp_path_factory.mktemp("pascal_tfds"))
  return splits, voc


def test_pascal_instances_and_splits(pascal):
  splits, _ = pascal
  # Image 1: instance 1 is too small; image 2: both overlap; image 3: instance 1
  # has parts under 1%; image 4 is negative; image 5 has no horse.
  # Instance indices count the image's horse boxes only (the person is not one).
  assert [ex["id"] for ex in splits["train"]] == ["2008_000001_0", "2008_000001_2"]
  assert [ex["id"] for ex in splits["validation"]] == ["2008_000003_0"]
  assert [ex["id"] for ex in splits["test"]] == ["2009_000001_0"]


def test_pascal_crop_labels_are_pixel_exact(pascal):
  splits, _ = pascal
  horse0 = splits["train"][0]
  # Box (5,5,36,36) 1-based -> 0-based [4, 36): a 32 px square, no padding.
  expected = np.zeros((64, 100), np.uint8)
  for part, (rows, cols) in _HORSE0.items():
    expected[rows, cols] = _HORSE0_CLASS[part]
  # The person's head (rows/cols 20:30) is not a horse part.
  np.testing.assert_array_equal(horse0["label"], expected[4:36, 4:36])
  assert horse0["label"][6 - 4, 6 - 4] == 1 and horse0["label"][20 - 4, 20 - 4] == 2
  # Horse 2: box (60,1,99,40) -> x [59, 99), y [0, 40): its hooves are legs,
  # its ear is head.
  horse2 = splits["train"][1]["label"]
  assert horse2.shape == (40, 40)
  assert (horse2[30:40, 1:40] == 3).all() and (horse2[0:5, 31:36] == 1).all()
  assert np.bincount(horse2.ravel(), minlength=6).tolist() == [1600 - 390 - 25, 25, 0, 390, 0, 0]


def test_pascal_clipped_crop_is_padded_and_centred(pascal):
  splits, voc = pascal
  crop = splits["validation"][0]
  # Box (1,9,60,40): w 60, h 32 -> square side 60 centred at y 24 -> rows
  # [-6, 54) clipped to [0, 40) -> 40 rows placed at rows 10..50 of a 60x60 crop.
  assert crop["image"].shape == (60, 60, 3) and crop["label"].shape == (60, 60)
  assert (crop["image"][:10] == 0).all() and (crop["image"][50:] == 0).all()
  expected = np.zeros((60, 60), np.uint8)
  expected[25:45] = 2
  expected[25:28, 0:3] = 4
  np.testing.assert_array_equal(crop["label"], expected)
  # The image content is the source pixels, exactly as decoded.
  source = np.asarray(Image.open(voc / "JPEGImages" / "2008_000003.jpg"))
  np.testing.assert_array_equal(crop["image"][10:50], source[:, :60])


def test_pascal_crop_geometry_helpers():
  assert pascal_part.square_box((11, 21, 50, 40), 45, 64) == (10, 10, 50, 45)
  assert pascal_part.square_box((1, 6, 40, 25), 30, 100) == (0, 0, 40, 30)
  crop = pascal_part.crop_with_padding(np.ones((45, 64), np.uint8), (10, 10, 50, 45))
  assert crop.shape == (40, 40) and crop[:2].sum() == 0 and crop[2:37].all() and not crop[37:].any()
  iou = pascal_part.mutual_iou(np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float))
  np.testing.assert_allclose(iou, [[0, 1 / 3, 0], [1 / 3, 0, 0], [0, 0, 0]], atol=1e-6)
  # The paper divides by the enclosing box, not the union: 25 / 225, not 25 / 175.
  iou = pascal_part.mutual_iou(np.array([[0, 0, 10, 10], [5, 5, 15, 15]], float))
  np.testing.assert_allclose(iou[0, 1], 25 / 225, atol=1e-6)


def test_pascal_aeroplane_parts(tmp_path):
  assert [pascal_part.part_class("aeroplane", n) for n in
          ("body", "stern", "tail", "lwing", "rwing", "engine_1", "engine_12", "wheel_3")] == [
              1, 2, 2, 3, 3, 4, 4, 5]
  assert pascal_part.PascalPart.BUILDER_CONFIGS[1].min_size == 50
  with pytest.raises(ValueError, match="unknown aeroplane part 'propeller'"):
    pascal_part.part_class("aeroplane", "propeller")
  voc = tmp_path / "VOCdevkit" / "VOC2010"
  _write_voc_image(voc, "a", (20, 20), [("aeroplane", (1, 1, 20, 20), {
      "body": (slice(5, 15), slice(0, 20)), "engine_2": (slice(8, 10), slice(4, 6)),
      "wheel_1": (slice(15, 17), slice(9, 11)), "tail": (slice(2, 5), slice(17, 20))})])
  label = pascal_part.part_map(tmp_path / "trainval" / "Annotations_Part" / "a.mat", "aeroplane")
  assert np.bincount(label.ravel(), minlength=6).tolist() == [400 - 200 - 4 - 9, 196, 9, 0, 4, 4]


def test_pascal_bad_files_are_clear_errors(tmp_path):
  voc = _fake_pascal(tmp_path)
  parts_dir = tmp_path / "trainval" / "Annotations_Part"
  assert pascal_part.find_dirs(tmp_path) == (voc, parts_dir)
  (parts_dir / "2008_000003.mat").unlink()
  with pytest.raises(FileNotFoundError, match=r"2008_000003\.mat: Pascal-Part annotation is missing"):
    pascal_part.crop_ids(voc, parts_dir, "horse", "train", 32)
  (voc / "JPEGImages" / "2009_000001.jpg").write_bytes(b"\x00" * 10)
  with pytest.raises(ValueError, match=r"2009_000001\.jpg: cannot read"):
    list(pascal_part.image_crops(voc, parts_dir, "2009_000001", "horse", 32))
  _save(np.zeros((10, 10, 3)), voc / "JPEGImages" / "2008_000001.jpg")
  with pytest.raises(ValueError, match=r"2008_000001\.mat: masks are 100x64 .* is 10x10"):
    list(pascal_part.image_crops(voc, parts_dir, "2008_000001", "horse", 32))
  (parts_dir / "2008_000002.mat").write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"2008_000002\.mat: cannot read"):
    pascal_part.part_map(parts_dir / "2008_000002.mat", "horse")


# ============================================================ DatasetGAN


def _fake_datasetgan_folder(folder, masks, image_size=None, image_ext="jpg"):
  folder.mkdir(parents=True, exist_ok=True)
  for number, mask in masks.items():
    h, w = image_size or mask.shape
    _save(np.full((h, w, 3), 10 + number), folder / f"image_{number}.{image_ext}")
    np.save(folder / f"image_mask{number}.npy", mask)


def _cat_mask(seed):
  mask = np.zeros((16, 16), np.int64)
  mask[0:8, 0:8] = 3                     # 64 px: kept
  mask[8:16, 0:4] = 15                   # 32 px: kept
  mask[8:13, 8:14] = 7                   # 30 px: kept (the threshold is < 30)
  mask[14:16, 8:16] = 9 + seed % 2       # 16 px: an artefact, zeroed
  mask[0, 15] = 2                        # 1 px: zeroed
  return mask


@pytest.fixture(scope="module")
def datasetgan_cat(tmp_path_factory):
  manual = tmp_path_factory.mktemp("dg_manual")
  root = manual / "annotation"
  _fake_datasetgan_folder(root / "training_data" / "cat_processed",
                          {n: _cat_mask(n) for n in (0, 1, 2, 10)}, image_size=(32, 32))
  _fake_datasetgan_folder(root / "testing_data" / "cat_16_class",
                          {n: _cat_mask(n) for n in (0, 3)}, image_ext="png")
  config = datasetgan.DatasetGANConfig(name="tiny_cat", obj="cat", num_classes=16, size=16)
  return _build(datasetgan.DatasetGAN, config, manual, tmp_path_factory.mktemp("dg_tfds"))


def test_datasetgan_splits_order_and_cleanup(datasetgan_cat):
  assert [ex["id"] for ex in datasetgan_cat["train"]] == ["image_0", "image_1", "image_2",
                                                          "image_10"]
  assert [ex["id"] for ex in datasetgan_cat["test"]] == ["image_0", "image_3"]
  expected = np.zeros((16, 16), np.uint8)
  expected[0:8, 0:8] = 3
  expected[8:16, 0:4] = 15
  expected[8:13, 8:14] = 7
  for ex in datasetgan_cat["train"] + datasetgan_cat["test"]:
    np.testing.assert_array_equal(ex["label"], expected)
    assert ex["image"].shape == (16, 16, 3)
  assert abs(int(datasetgan_cat["train"][3]["image"].mean()) - 20) <= 1  # image_10.jpg


def test_datasetgan_configs_match_the_paper():
  configs = {c.name: (c.obj, c.num_classes, c.size) for c in datasetgan.DatasetGAN.BUILDER_CONFIGS}
  assert configs == {"car20": ("car", 20, 512), "cat16": ("cat", 16, 256),
                     "face34": ("face", 34, 512)}
  for name, (_, n, _) in configs.items():
    assert len(datasetgan.CLASS_NAMES[name]) == n


def test_datasetgan_car_canvas_is_wide_cropped(tmp_path):
  image = np.zeros((16, 16, 3), np.uint8)
  image[2:14] = 200                             # 4:3 content in a square canvas
  _save(image, tmp_path / "image_0.png")
  mask = np.zeros((12, 16), np.int64)
  mask[:, 8:] = 5                               # 96 px
  np.save(tmp_path / "image_mask0.npy", mask)
  out_image, label = datasetgan.load_pair(tmp_path / "image_0.png", tmp_path / "image_mask0.npy",
                                          20, 8)
  assert out_image.shape == (8, 8, 3) and (out_image == 200).all()  # no black bars left
  np.testing.assert_array_equal(label, np.repeat([[0] * 4 + [5] * 4], 8, 0))


def test_datasetgan_masks_with_a_channel_axis(tmp_path):
  _save(np.zeros((8, 8, 3)), tmp_path / "image_0.jpg")
  mask = np.zeros((8, 8), np.float64)
  mask[:, :4] = 1.0
  np.save(tmp_path / "image_mask0.npy", mask[None])   # [1, H, W] float, as some dumps are
  _, label = datasetgan.load_pair(tmp_path / "image_0.jpg", tmp_path / "image_mask0.npy", 16, 8)
  np.testing.assert_array_equal(label, np.repeat([[1] * 4 + [0] * 4], 8, 0))


def test_datasetgan_bad_data_errors(tmp_path):
  folder = tmp_path / "f"
  _fake_datasetgan_folder(folder, {0: _cat_mask(0), 1: _cat_mask(1)})
  (folder / "image_mask1.npy").unlink()
  with pytest.raises(FileNotFoundError, match=r"image_1\.jpg: no mask with number 1"):
    datasetgan.list_pairs(folder)
  bad = np.zeros((16, 16), np.int64)
  bad[:8] = 17
  np.save(folder / "image_mask1.npy", bad)
  with pytest.raises(ValueError, match=r"image_mask1\.npy: class ids \[17\] are outside 0\.\.15"):
    datasetgan.load_pair(folder / "image_1.jpg", folder / "image_mask1.npy", 16, 16)
  np.save(folder / "image_mask1.npy", np.zeros((10, 16), np.int64))
  with pytest.raises(ValueError, match=r"mask is 16x10 .* is 16x16; the aspect ratios differ"):
    datasetgan.load_pair(folder / "image_1.jpg", folder / "image_mask1.npy", 16, 16)
  (folder / "image_1.jpg").write_bytes(b"garbage")
  with pytest.raises(ValueError, match=r"image_1\.jpg: cannot read"):
    datasetgan.load_pair(folder / "image_1.jpg", folder / "image_mask0.npy", 16, 16)


# ============================================================ CGPart

# CGPart id -> expected simplified id, written out by hand from the paper's map.
_CGPART_EXPECTED = [0, 1, 3, 12, 13, 7, 3, 12, 13, 14, 4, 3, 12, 13, 7, 3, 12, 13, 14, 6, 2, 5,
                    8, 13, 10, 2, 5, 8, 13, 10, 9, 11]


def _save_palette(array, path, mode="P"):
  """Saves class ids as a palette PNG (as CGPart's) or a grey PNG."""
  path.parent.mkdir(parents=True, exist_ok=True)
  array = np.asarray(array, np.uint8)
  im = Image.frombytes(mode, array.shape[::-1], array.tobytes())
  if mode == "P":
    im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, i)])
  im.save(path)


@pytest.fixture(scope="module")
def cgpart_splits(tmp_path_factory):
  manual = tmp_path_factory.mktemp("cgpart_manual")
  render = manual / "CGPart_render" / "car"
  all_ids = np.arange(32, dtype=np.uint8).reshape(4, 8)
  for name, model_id in cgpart.CAR_MODELS.items():
    for frame in range(2):
      rgba = np.full((4, 8, 4), 255, np.uint8)
      rgba[..., 0] = 40 + frame
      _save(rgba, render / "image" / model_id / f"{frame:06d}.png")
      _save_palette(all_ids if frame == 0 else np.zeros((4, 8)),
                    render / "seg" / model_id / f"{frame:06d}.png")
  real = manual / "CGPart_real"
  for real_id in ("n02958343_1", "n02958343_7"):
    _save(np.full((6, 10, 3), 90), real / "Images" / "car_imagenet_cropped" / f"{real_id}.JPEG")
    seg = np.zeros((6, 10))
    seg[2:4, 2:8] = 19                         # hood
    _save_palette(seg, real / "Annotations_png" / "car_imagenet_cropped" / f"{real_id}.png", "L")
  (real / "Image_sets").mkdir(parents=True)
  (real / "Image_sets" / "car_imagenet_val.txt").write_text("n02958343_1\nn02958343_7\n")
  (real / "Image_sets" / "car_imagenet_train.txt").write_text("n02958343_9\n")
  config = cgpart.CGPart.BUILDER_CONFIGS[0]
  return _build(cgpart.CGPart, config, manual, tmp_path_factory.mktemp("cgpart_tfds"))


def test_cgpart_mapping_and_splits(cgpart_splits):
  train = cgpart_splits["train"]
  # Four models (the truck is left out), two frames each.
  assert [ex["id"] for ex in train] == [f"{m}_{f:06d}" for m in ("minivan", "sedan", "suv", "wagon")
                                        for f in range(2)]
  for ex in train[::2]:
    np.testing.assert_array_equal(ex["label"], np.reshape(_CGPART_EXPECTED, (4, 8)))
    assert (ex["image"][..., 0] == 40).all()   # RGBA render read as its RGB
  assert (train[1]["label"] == 0).all()
  assert [ex["id"] for ex in cgpart_splits["test"]] == ["n02958343_1", "n02958343_7"]
  real = cgpart_splits["test"][0]["label"]
  assert real.shape == (6, 10) and (real[2:4, 2:8] == 6).all() and real.sum() == 12 * 6
  assert len(cgpart.CLASS_NAMES) == 15 and cgpart.CLASS_NAMES[6] == "hood"


def test_cgpart_bad_data_errors(tmp_path):
  _save(np.zeros((4, 4, 3)), tmp_path / "a.png")
  _save(np.zeros((4, 4, 3)), tmp_path / "rgb_seg.png")
  with pytest.raises(ValueError, match=r"rgb_seg\.png: segmentation must be a palette .* mode RGB"):
    cgpart.load_example(tmp_path / "a.png", tmp_path / "rgb_seg.png", "a")
  _save_palette(np.full((4, 4), 40), tmp_path / "seg40.png")
  with pytest.raises(ValueError, match=r"seg40\.png: class ids \[40\] are not CGPart car ids"):
    cgpart.load_example(tmp_path / "a.png", tmp_path / "seg40.png", "a")
  _save_palette(np.zeros((5, 4)), tmp_path / "seg_tall.png")
  with pytest.raises(ValueError, match=r"seg_tall\.png: mask is 4x5 .*a\.png is 4x4"):
    cgpart.load_example(tmp_path / "a.png", tmp_path / "seg_tall.png", "a")
  with pytest.raises(FileNotFoundError, match=r"missing\.JPEG: image file is missing"):
    cgpart.load_example(tmp_path / "missing.JPEG", tmp_path / "seg_tall.png", "a")
  with pytest.raises(FileNotFoundError, match="no rendered images of the suv model"):
    cgpart.render_pairs(tmp_path, ["suv"])
