"""Issue 18's goal table of the faces benchmark: gaps between rows, per k and seed."""
from gmseg.experiments import benchmark


def _cell(values: dict) -> dict:
  mean = sum(values.values()) / len(values)
  return {"mean": mean, "std": 0.0, "n": len(values), "values": values}


def test_goal_gaps_are_method_minus_control_with_per_seed_gaps():
  agg = {"ks": [1, 2], "seeds": [0, 1], "metrics": {
      "val/fg_miou": {
          "LAGM (downstream S)": {2: _cell({0: 45.0, 1: 41.0})},
          "self-training (downstream S)": {2: _cell({0: 39.0, 1: 38.0})},
          "LAGM + labelled": {1: _cell({0: 30.0}), 2: _cell({0: 50.0, 1: 48.0})},
          "label-free + labelled": {2: _cell({0: 42.0, 1: 41.0})},
      },
      "fg_miou": {
          "LAGM (downstream S)": {2: _cell({0: 60.0, 1: 58.0})},
          "self-training (downstream S)": {2: _cell({0: 77.0, 1: 76.0})},
      }}}
  rows = benchmark.goals_table(agg).splitlines()
  assert len(rows) == 2 + 3  # header, rule, the three goals whose rows both ran
  assert rows[2] == ("| LAGM (downstream S) - self-training (downstream S) >= 5 on V3 | – | "
                     "+4.5 (not met; +6.0, +3.0) |")
  assert rows[3].endswith("| – | -17.5 (not met; -17.0, -18.0) |")
  assert rows[4] == ("| LAGM + labelled - label-free + labelled >= 8 on V3 | – | "
                     "+7.5 (not met; +8.0, +7.0) |")
  agg["metrics"]["val/fg_miou"]["label-free + labelled"][2] = _cell({0: 40.0, 1: 40.0})
  assert "+9.0 (met; +10.0, +8.0)" in benchmark.goals_table(agg)


def test_aggregate_takes_missing_rows_from_another_folder_and_holdout_scores(tmp_path):
  import json

  def row(test, val, holdout):
    return {"fg_miou": test, "iou": [0.9, test], "val": {"fg_miou": val, "iou": [0.9, val]},
            "holdout": {"fg_miou": holdout, "iou": [0.9, holdout]}}

  def write(folder, seed, rows):
    cell = benchmark.run_dir(folder, 2, seed)
    cell.mkdir(parents=True)
    (cell / "results.json").write_text(json.dumps({"rows": rows, "class_names": ["bg", "skin"]}))

  for seed, st in ((0, 0.40), (1, 0.44)):
    write(tmp_path / "sweep", seed, {"LAGM (downstream S)": row(0.5, 0.30, 0.45),
                                     "self-training (downstream S)": row(0.7, st, 0.70)})
  # The lever reran LAGM only (seed 1 not yet finished).
  write(tmp_path / "lever", 0, {"LAGM (downstream S)": row(0.72, 0.47, 0.71)})
  agg = benchmark.aggregate(tmp_path / "lever", [2], [0, 1], rows_from=tmp_path / "sweep")
  m = agg["metrics"]
  assert agg["missing"] == ["k2_s1"]
  assert m["val/fg_miou"]["LAGM (downstream S)"][2]["values"] == {0: 47.0}  # the lever's own
  assert m["val/fg_miou"]["self-training (downstream S)"][2]["values"] == {0: 40.0}
  assert m["holdout/fg_miou"]["LAGM (downstream S)"][2]["values"] == {0: 71.0}
  assert m["holdout/iou/skin"]["self-training (downstream S)"][2]["values"] == {0: 70.0}
  goals = benchmark.goals_table(agg)
  assert "| LAGM (downstream S) - self-training (downstream S) >= 5 on V3 | +7.0 (met; +7.0) |" in goals
  assert ("| LAGM (downstream S) - self-training (downstream S) >= 0 on frontal validation | "
          "+1.0 (met; +1.0) |") in goals
  # Without rows_from the lever folder has no control to compare with.
  assert "self-training (downstream S)" not in benchmark.aggregate(
      tmp_path / "lever", [2], [0, 1])["metrics"]["val/fg_miou"]
