"""A tiny version of the main job on the real DCGAN and the real FASSEG faces.

Every stage (annotate, downstream, supervised baseline, rendered-label
baseline, evaluation) runs for a few steps and must leave its artefacts and
metrics in range.
"""
import importlib.util
import json
import pathlib

import ml_collections
import numpy as np

from conftest import shared_path
from gmseg import build
from gmseg.experiments import faces, finetune_curve
from gmseg.metric_writers import read_jsonl

_CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _faces_config(manual_dir, data_dir):
  spec = importlib.util.spec_from_file_location("faces_cfg", _CONFIGS / "faces.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = ml_collections.ConfigDict(mod.get_config(
      f"num=2,steps=6,downstream_images=16,manual_dir={manual_dir},data_dir={data_dir}").to_dict())
  c.annotator.tmp_channels = 8
  c.annotator.num_layers = 2
  c.segmenter.widths = (8, 8, 16, 16, 16)
  c.train.update(log_every=3, eval_every=6, ckpt_every=6, grid_every=6)
  c.downstream.update(gen_batch=8, epochs=1, batch=8, finetune_steps=4)
  # The anchored matching loss (issue 18): the supervised baseline is LAGM's
  # teacher; the rendered-labels run has none and runs without it.
  c.matching.anchor = 0.1
  return c


def test_tiny_faces_pipeline(tmp_path):
  fasseg_dir = shared_path("data", "fasseg")
  config = _faces_config(fasseg_dir, tmp_path / "tfds")
  out = faces.run(config, tmp_path / "run")
  names = ["LAGM (downstream S)", "LAGM (phase-one S)", "LAGM + labelled", "supervised",
           "self-training (downstream S)", "self-training + labelled",
           "label-free (downstream S)", "label-free + labelled",
           "rendered labels (downstream S)", "rendered labels (phase-one S)",
           "rendered labels + labelled"]
  assert list(out["rows"]) == names
  for name, row in out["rows"].items():
    assert 0.0 <= row["fg_miou"] <= 1.0 and 0.0 <= row["pacc"] <= 1.0, name
    assert len(row["iou"]) == 6
    assert all(0.0 <= v <= 1.0 for v in row["iou"])
    assert (tmp_path / "run" / "grids").joinpath(pathlib.Path(out["grids"][name]).name).stat().st_size > 0
  # Every row is scored on the frontal test faces and on the V3 validation faces.
  # and on the 18 frontal02 train faces the 2-shot rows never trained on.
  assert json.loads((tmp_path / "run" / "results.json").read_text())["sets"] == {
      "test": 50, "val": 182, "holdout": 18}
  for name, row in out["rows"].items():
    for held in ("val", "holdout"):
      assert 0.0 <= row[held]["fg_miou"] <= 1.0 and len(row[held]["iou"]) == 6, (name, held)
  holdout = faces.holdout_arrays(config)
  labelled = build.split_arrays(config, "train", limit=2)  # annotate.labelled_arrays' faces
  assert len(labelled["id"]) == 2 and not set(holdout["id"]) & set(labelled["id"])
  assert "Held-out labelled-split faces" in (tmp_path / "run" / "results.md").read_text()
  assert [p["step"] for p in out["curves"]["LAGM"]] == [6]
  assert (tmp_path / "run" / "curve.png").stat().st_size > 0
  # The supervised baseline learns something about skin from 2 faces in 6 steps:
  # pixel accuracy above the trivial all-background rate (~17% on the test faces).
  assert out["rows"]["supervised"]["pacc"] > 0.2
  run = tmp_path / "run"
  for sub in ("lagm", "rendered"):
    assert (run / sub / "config.json").is_file()
    assert (run / sub / "grids" / "0000006_generated.png").is_file()
    assert (run / sub / "downstream" / "grids" / "dataset.png").is_file()
    records = read_jsonl(run / sub / "metrics.jsonl", prefix="train")
    assert records and all(np.isfinite(r["ann/match_loss"]) for r in records)
    # Anchored to the supervised baseline's labels in LAGM only.
    assert all(("ann/anchor_loss" in r) == (sub == "lagm") for r in records), sub
    assert all(r.get("ann/anchor_loss", 1.0) > 0 for r in records)
    assert all(0.0 <= r["ann/match_loss"] <= 2.0 for r in records)
  # The controls label LAGM's phase-two latents with their own source.
  for sub, source in (("lagm", "annotator"), ("self_training", "self_training"),
                      ("label_free", "label_free")):
    info = json.loads((run / sub / "downstream" / "generation.json").read_text())
    assert (info["label_source"], info["num_generated"]) == (source, 16), sub
  rendered_cfg = json.loads((run / "rendered" / "config.json").read_text())
  assert rendered_cfg["data"]["dataset"] == "rendered_faces"
  assert rendered_cfg["data"]["eval_dataset"] == "fasseg/frontal02"
  # Its labelled faces are resized, its evaluation faces cropped as every row's.
  assert (rendered_cfg["data"]["transform"], rendered_cfg["data"]["eval_transform"]) == (
      "resize", "square_crop")
  # The fine-tuning curve, stopped and resumed at 2 updates, ends at the rows'
  # 4-update scores.
  curve = finetune_curve.run(config, run, (2, 4))
  assert set(curve) == {"LAGM + labelled", "self-training + labelled", "label-free + labelled"}
  for name, per_length in curve.items():
    assert set(per_length) == {2, 4}
    for set_name in ("test", "val", "holdout"):
      got = per_length[4][set_name]
      want = out["rows"][name] if set_name == "test" else out["rows"][name][set_name]
      np.testing.assert_allclose(got["iou"], want["iou"], rtol=1e-5, atol=1e-6)
  lagm_val = curve["LAGM + labelled"]
  assert (f"| k | LAGM + labelled | {100 * lagm_val[2]['val']['fg_miou']:.1f} | "
          f"{100 * lagm_val[4]['val']['fg_miou']:.1f} |") in finetune_curve.markdown({"k": curve})
  table = (run / "results.md").read_text()
  assert all(n in table for n in names)
  assert json.loads((run / "results.json").read_text())["num_labelled"] == 2
