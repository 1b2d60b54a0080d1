"""Benchmark of the faces job: FG-mIoU against k, and the cost of one step.

`sweep(...)` runs `gmseg.experiments.faces.run` (LAGM and the baselines) for every
(k labelled faces, seed) in `<workdir>/k{k}_s{seed}`, skipping runs that
already wrote results.json, and aggregates FG-mIoU (mean +- population std
over seeds, x100) per method and k into `benchmark.md`, `benchmark.json` and
the plot `fg_miou_vs_k.png`. Missing runs are left out of the aggregate, so a
partial sweep still reports what it has.

`timing(...)` runs `gmseg.experiments.step_timing.time_steps` (annotator,
segmenter and supervised step and the whole iteration, side by side in one
process, medians, ratios, compile seconds, peak memory) on the faces
config's first labelled batch. It writes `timing.md` and `timing.json`;
`write_report` appends the timing table to `benchmark.md`.
"""
import datetime
import json
import os
import pathlib
import platform
import shlex
import sys
import time
import traceback
from typing import Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from gmseg.experiments import config_files
from gmseg.experiments import faces

KS = (1, 2, 5, 10, 20)
SEEDS = (0, 1, 2)
PLOT = "fg_miou_vs_k.png"
RUN_INFO = "benchmark_run.json"  # per run: the config it ran with, wall time


# ----------------------------------------------------------------------------
# Configs.

def faces_config(k: int, seed: int, *, steps: int, downstream_images: int,
                 downstream_epochs: Optional[int] = None,
                 overrides: Sequence[str] = (), manual_dir: str = "",
                 data_dir: str = "", config_file=config_files.DEFAULT_CONFIG,
                 ) -> ml_collections.ConfigDict:
  """The faces config of one benchmark run (k labelled faces, one seed), locked."""
  for name, value in (("manual_dir", manual_dir), ("data_dir", data_dir)):
    if "," in str(value):
      raise ValueError(f"{name}={value!r} contains a comma, which the config "
                       "argument string cannot carry; use a path without commas.")
  arg = (f"num={k},seed={seed},steps={steps},downstream_images={downstream_images},"
         f"manual_dir={manual_dir},data_dir={data_dir}")
  config = config_files.load_config(config_file, arg)
  if downstream_epochs is not None:
    config.downstream.epochs = int(downstream_epochs)
  return config_files.apply_overrides(config, overrides).lock()


# ----------------------------------------------------------------------------
# Machine and command.

def command_line() -> str:
  """This process's command line, interpreter included, shell-quoted."""
  return shlex.join(getattr(sys, "orig_argv", [sys.executable] + sys.argv))


def machine_info() -> dict:
  """CPU model, core counts, jax version, backend and devices."""
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:
    usable = os.cpu_count()
  return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": usable,
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()],
          "device_kind": jax.devices()[0].device_kind}


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def header(command: Optional[str] = None) -> dict:
  """What benchmark.md starts with: command line, machine, date."""
  return {"command": command or command_line(), "machine": machine_info(), "date": _now()}


# ----------------------------------------------------------------------------
# Accuracy sweep.

def run_dir(workdir, k: int, seed: int) -> pathlib.Path:
  return pathlib.Path(workdir) / f"k{k}_s{seed}"


def sweep(workdir, ks: Sequence[int] = KS, seeds: Sequence[int] = SEEDS, *,
          steps: int, downstream_images: int, downstream_epochs: Optional[int] = None,
          overrides: Sequence[str] = (), manual_dir: str = "", data_dir: str = "",
          baselines: Sequence[str] = faces.BASELINES,
          config_file=config_files.DEFAULT_CONFIG,
          command: Optional[str] = None, rescore: bool = False, rows_from=None) -> dict:
  """Runs the missing (k, seed) runs, then aggregates every finished one.

  A run counts as done when its results.json exists (its own stages also
  resume from checkpoints, so a killed run continues). With `rescore` a done
  run goes through `faces.run` again: every stage resumes at its end, so
  only the evaluation reruns (e.g. to score a new evaluation set); its
  recorded wall time stays the first run's. A failing run is
  logged and the sweep goes on; the failures are listed in benchmark.md and
  raised as one RuntimeError at the end. The report is rewritten after every
  run, so it is current while the sweep is in progress.

  Returns:
    The aggregate (see `aggregate`).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if not ks or not seeds:
    raise ValueError(f"ks={list(ks)} and seeds={list(seeds)} must both be non-empty.")
  # Build every config first: a bad override fails before hours of runs.
  configs = {(k, s): faces_config(k, s, steps=steps, downstream_images=downstream_images,
                                  downstream_epochs=downstream_epochs, overrides=overrides,
                                  manual_dir=manual_dir, data_dir=data_dir,
                                  config_file=config_file)
             for k in ks for s in seeds}
  head = header(command)
  failures = {}
  for (k, s), config in configs.items():
    out = run_dir(workdir, k, s)
    done = (out / "results.json").is_file()
    if done:
      _check_same_config(out, config)
      if not rescore:
        logging.info("k=%d seed=%d: results.json exists, skipped.", k, s)
        continue
    logging.info("k=%d seed=%d: running in %s.", k, s, out)
    start = time.perf_counter()
    try:
      faces.run(config, out, baselines=baselines)
    except Exception:  # pylint: disable=broad-except
      failures[f"k{k}_s{s}"] = traceback.format_exc(limit=3)
      logging.exception("k=%d seed=%d failed; going on with the sweep.", k, s)
      continue
    if not (done and (out / RUN_INFO).is_file()):
      (out / RUN_INFO).write_text(json.dumps(
          {"wall_s": time.perf_counter() - start, "date": _now(),
           "config": config.to_dict()}, indent=1, default=str))
    write_report(workdir, aggregate(workdir, ks, seeds, rows_from), head, failures)
  agg = aggregate(workdir, ks, seeds, rows_from)
  write_report(workdir, agg, head, failures)
  if failures:
    raise RuntimeError(f"{len(failures)} run(s) failed: {sorted(failures)}; see the "
                       f"log and {workdir / 'benchmark.md'}. Rerun to retry them.")
  return agg


def _check_same_config(out: pathlib.Path, config) -> None:
  info = out / RUN_INFO
  if not info.is_file():
    return
  saved = json.loads(info.read_text()).get("config")
  now = json.loads(json.dumps(config.to_dict(), default=str))
  if saved is not None and saved != now:
    logging.warning("%s was run with a different config than the one requested now; "
                    "its results are kept. Delete the folder to rerun it.", out)


SMALL_PARTS = ("eyes", "nose", "mouth")


def row_metrics(row: dict, class_names: Sequence[str]) -> dict:
  """{metric: value x100} of one results.json row: 'fg_miou' and
  'iou/<class>' on the test faces, the same prefixed 'val/' on the
  validation faces and 'holdout/' on the held-out labelled-split faces
  (`faces.holdout_arrays`) when the row has them."""
  out = {}
  for prefix, r in (("", row), ("val/", row.get("val")), ("holdout/", row.get("holdout"))):
    if r is None:
      continue
    out[prefix + "fg_miou"] = 100.0 * r["fg_miou"]
    out.update({f"{prefix}iou/{c}": 100.0 * v for c, v in zip(class_names, r["iou"])})
  return out


def aggregate(workdir, ks: Sequence[int] = KS, seeds: Sequence[int] = SEEDS,
              rows_from=None) -> dict:
  """Scores per method and k over the seeds whose results.json exists.

  `rows_from`: another benchmark folder (e.g. the sweep's) whose cells
  supply the rows this folder's cells lack, seed by seed: a lever run that
  reran only LAGM is compared with the sweep's controls of the same seeds.

  Returns:
    {'metrics': {metric: {method: {k: {'mean', 'std', 'n', 'values': {seed: value}}}}},
     'fg_miou': metrics['fg_miou'] (test faces), 'wall_s': {k: mean wall
     seconds of a run}, 'missing': ['k{k}_s{s}', ...]} with values, mean and
    std x100 (std: population, ddof=0). Metrics: see `row_metrics`.
  """
  table, walls, missing = {}, {}, []
  for k in ks:
    for s in seeds:
      out = run_dir(workdir, k, s)
      path = out / "results.json"
      if not path.is_file():
        missing.append(out.name)
        continue
      result = json.loads(path.read_text())
      names = result.get("class_names", ())
      rows = dict(result["rows"])
      other = run_dir(rows_from, k, s) / "results.json" if rows_from else None
      if other is not None and other.is_file():
        for method, row in json.loads(other.read_text())["rows"].items():
          rows.setdefault(method, row)
      for method, row in rows.items():
        for metric, value in row_metrics(row, names).items():
          table.setdefault(metric, {}).setdefault(method, {}).setdefault(k, {})[s] = value
      if (out / RUN_INFO).is_file():
        walls.setdefault(k, []).append(json.loads((out / RUN_INFO).read_text())["wall_s"])
  metrics = {metric: {m: {k: {"mean": float(np.mean(list(v.values()))),
                              "std": float(np.std(list(v.values()))),
                              "n": len(v), "values": v}
                          for k, v in sorted(per_k.items())}
                      for m, per_k in per_method.items()}
             for metric, per_method in table.items()}
  return {"metrics": metrics, "fg_miou": metrics.get("fg_miou", {}),
          "wall_s": {k: float(np.mean(v)) for k, v in walls.items()},
          "missing": missing, "ks": list(ks), "seeds": list(seeds),
          "rows_from": str(rows_from) if rows_from else None}


def small_parts_table(agg: dict, prefix: str = "") -> str:
  """Rows = methods, columns = k; cells 'eyes / nose / mouth' IoU means (x100)."""
  ks, metrics = agg["ks"], agg.get("metrics", {})
  out = ["| method | " + " | ".join(f"k={k}" for k in ks) + " |",
         "|---|" + "---|" * len(ks)]
  for method in metrics.get(prefix + "fg_miou", {}):
    cells = []
    for k in ks:
      parts = [metrics.get(f"{prefix}iou/{c}", {}).get(method, {}).get(k) for c in SMALL_PARTS]
      cells.append("–" if None in parts else " / ".join(f"{p['mean']:.0f}" for p in parts))
    out.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def markdown_table(agg: dict, metric: str = "fg_miou") -> str:
  """Rows = methods, columns = k; cells 'mean ± std' (x100), '(n=..)' when
  fewer seeds than asked finished, '–' when none did."""
  ks, num_seeds = agg["ks"], len(agg["seeds"])
  out = ["| method | " + " | ".join(f"k={k}" for k in ks) + " |",
         "|---|" + "---|" * len(ks)]
  for method, per_k in agg.get("metrics", {"fg_miou": agg["fg_miou"]}).get(metric, {}).items():
    cells = []
    for k in ks:
      c = per_k.get(k)
      if c is None:
        cells.append("–")
        continue
      note = f" (n={c['n']})" if c["n"] < num_seeds else ""
      cells.append(f"{c['mean']:.1f} ± {c['std']:.1f}{note}")
    out.append(f"| {method} | " + " | ".join(cells) + " |")
  return "\n".join(out)


# Issue 18's goals: (metric, method, control, margin x100). Met when the mean
# of method minus the mean of control is >= margin.
GOALS = (
    ("val/fg_miou", "LAGM (downstream S)", "self-training (downstream S)", 5.0),
    ("fg_miou", "LAGM (downstream S)", "self-training (downstream S)", 0.0),
    ("val/fg_miou", "LAGM + labelled", "label-free + labelled", 8.0),
    ("val/fg_miou", "LAGM + labelled", "self-training + labelled", 10.0),
    ("fg_miou", "LAGM + labelled", "supervised", 0.0),
    # The frontal conditions on frontal validation faces (the held-out
    # labelled-split faces), where choices are made.
    ("holdout/fg_miou", "LAGM (downstream S)", "self-training (downstream S)", 0.0),
    ("holdout/fg_miou", "LAGM + labelled", "supervised", 0.0),
)
WHERE = {"": "frontal test", "val/": "V3", "holdout/": "frontal validation"}


def goals_table(agg: dict, goals=GOALS) -> str:
  """Markdown: each goal's gap (method minus control, x100, means over the
  finished seeds) per k, with the per-seed gaps, 'met' when >= the margin."""
  ks, metrics = agg["ks"], agg.get("metrics", {})
  out = ["| goal | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
  for metric, method, control, margin in goals:
    a, b = metrics.get(metric, {}).get(method), metrics.get(metric, {}).get(control)
    if a is None or b is None:
      continue
    cells = []
    for k in ks:
      if k not in a or k not in b:
        cells.append("–")
        continue
      gap = a[k]["mean"] - b[k]["mean"]
      seeds = [s for s in a[k]["values"] if s in b[k]["values"]]
      per_seed = ", ".join(f"{a[k]['values'][s] - b[k]['values'][s]:+.1f}" for s in seeds)
      cells.append(f"{gap:+.1f} ({'met' if gap >= margin else 'not met'}; {per_seed})")
    where = WHERE[metric[:metric.index("/") + 1] if "/" in metric else ""]
    out.append(f"| {method} - {control} >= {margin:g} on {where} | " + " | ".join(cells) + " |")
  return "\n".join(out)


def plot(agg: dict, path) -> None:
  """FG-mIoU against k with population-std error bars, one line per method;
  a second panel for the validation faces when the runs scored them."""
  import matplotlib  # lazy: only the report needs it
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  metrics = agg.get("metrics", {"fg_miou": agg["fg_miou"]})
  panels = [("fg_miou", "FASSEG frontal02 test")]
  if "val/fg_miou" in metrics:
    panels.append(("val/fg_miou", "multipose V3 (validation)"))
  fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), squeeze=False)
  for ax, (metric, title) in zip(axes[0], panels):
    for method, per_k in metrics.get(metric, {}).items():
      ks = sorted(per_k)
      ax.errorbar(ks, [per_k[k]["mean"] for k in ks], yerr=[per_k[k]["std"] for k in ks],
                  marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xticks(agg["ks"])
    ax.set_xticklabels([str(k) for k in agg["ks"]])
    ax.minorticks_off()
    ax.set_xlabel("labelled faces k")
    ax.set_ylabel(f"FG-mIoU (x100), {title}")
    ax.set_title(f"{title}: mean ± std over {len(agg['seeds'])} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_report(workdir, agg: Optional[dict], head: dict,
                 failures: Optional[dict] = None) -> pathlib.Path:
  """Writes benchmark.md / benchmark.json (and the plot when there are
  results); the timing table from timing.json, when present, is appended."""
  workdir = pathlib.Path(workdir)
  m = head["machine"]
  lines = [f"Command: `{head['command']}`", "",
           f"Machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable); "
           f"jax {m['jax']}, backend {m['backend']}, devices {', '.join(m['devices'])}", "",
           f"Date: {head['date']}", ""]
  if agg is not None:
    if agg.get("rows_from"):
      lines += [f"Rows this folder's runs lack come from {agg['rows_from']} (same k and "
                "seeds).", ""]
    lines += ["## FG-mIoU (x100) on the 50 FASSEG frontal02 test faces, mean ± population "
              f"std over seeds {agg['seeds']}", "", markdown_table(agg), ""]
    if "val/fg_miou" in agg.get("metrics", {}):
      lines += ["## FG-mIoU (x100) on the 182 multipose V3 validation faces", "",
                markdown_table(agg, "val/fg_miou"), ""]
    if "holdout/fg_miou" in agg.get("metrics", {}):
      lines += ["## FG-mIoU (x100) on the held-out frontal02 train faces (k+1..20; frontal "
                "validation)", "", markdown_table(agg, "holdout/fg_miou"), ""]
    if "iou/eyes" in agg.get("metrics", {}):
      lines += ["## Eyes / nose / mouth IoU (x100, mean over seeds), frontal test faces", "",
                small_parts_table(agg), ""]
    if "val/iou/eyes" in agg.get("metrics", {}):
      lines += ["## Eyes / nose / mouth IoU (x100, mean over seeds), V3 validation faces", "",
                small_parts_table(agg, "val/"), ""]
    goals = goals_table(agg)
    if goals.count("\n") > 1:  # a goal whose rows both ran
      lines += ["## Issue 18's goals: gap (x100, mean over seeds; per seed)", "", goals, ""]
    if agg["wall_s"]:
      lines += ["Wall time per run (all methods, mean over finished seeds): " + ", ".join(
          f"k={k}: {v / 60:.1f} min" for k, v in sorted(agg["wall_s"].items())), ""]
    if agg["missing"]:
      lines += [f"Not (yet) finished: {', '.join(agg['missing'])}", ""]
    if agg["fg_miou"]:
      plot(agg, workdir / PLOT)
      lines += [f"![FG-mIoU vs k]({PLOT})", ""]
  if failures:
    lines += ["Failed runs: " + ", ".join(sorted(failures)), ""]
  timing_json = workdir / "timing.json"
  timing_result = None
  if timing_json.is_file():
    timing_result = json.loads(timing_json.read_text())
    lines += ["## Step timing", "", timing_markdown(timing_result), ""]
  path = workdir / "benchmark.md"
  path.write_text("\n".join(lines))
  (workdir / "benchmark.json").write_text(json.dumps(
      {**head, "accuracy": agg, "failures": failures or {}, "timing": timing_result},
      indent=1))
  return path


# ----------------------------------------------------------------------------
# Step timing.

def timing(config, workdir, reps: int = 10, command: Optional[str] = None) -> dict:
  """Times annotator, segmenter, supervised steps and the whole iteration side
  by side (`gmseg.experiments.step_timing.time_steps`) on the first labelled
  batch of `config`; writes `<workdir>/timing.{md,json}`.

  Returns:
    The `time_steps` result plus this run's header (command, machine, date).
  """
  from gmseg import annotate, build  # lazy: pulls the data pipeline
  from gmseg.data import pipeline
  from gmseg.experiments import step_timing

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  labelled = annotate.labelled_arrays(config)
  batch = pipeline.Sampler(labelled, config.batch.labelled, config.seed).batch(0)
  result = {**header(command),
            **step_timing.time_steps(config, build.generator(config), batch, reps)}
  (workdir / "timing.json").write_text(json.dumps(result, indent=1))
  (workdir / "timing.md").write_text(timing_markdown(result) + "\n")
  return result


def timing_markdown(r: dict) -> str:
  """The timing result as a short markdown section."""
  from gmseg.experiments import step_timing
  su, b = r["setup"], r["setup"]["batch"]
  return "\n".join([
      f"{r['reps']} interleaved rounds, jitted steps on one {r['machine']['backend']} "
      f"device ({r['machine']['device_kind']}); {su['generator']} at {su['resolution']}px, "
      f"batches labelled/synthetic/segmenter {b['labelled']}/{b['synthetic']}/{b['segmenter']}, "
      f"{su['segmenter']} {su['segmenter_widths']} ({su['segmenter_params']:,} params, "
      f"{su['matched_tensors']} matched tensors), annotator {su['annotator_params']:,} params.",
      "", step_timing.TABLE_HEADER, step_timing.markdown_row(r, "faces"),
  ])
