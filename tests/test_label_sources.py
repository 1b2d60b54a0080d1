"""Phase two's label sources: the controls label the annotator's latents.

On conftest's tiny annotate run: the self-training source's labels are the
argmax of the given segmenter's softmax on the very images the annotator's
set holds; the label-free source's are those of phase one's initial
annotator; the filters that need annotator snapshots refuse other sources.
"""
import json
import shutil

import jax
import numpy as np
import pytest

from gmseg import downstream
from gmseg import label_sources
from gmseg import restore
from gmseg import warm_start
from gmseg.data import synthetic

from conftest import perturbed
from conftest import tiny_annotate_config as tiny_config


@pytest.fixture(scope="module")
def runs(tiny_annotate, tmp_path_factory):
  run = tiny_annotate
  # A trained-looking annotator and segmenter: perturbed, so labels vary.
  state = run["state"].replace(ann_params=perturbed(run["state"].ann_params, 1, 0.5),
                               seg_params=perturbed(run["state"].seg_params, 2, 0.5))
  annotate_dir = run["write_run"](tmp_path_factory.mktemp("ann"), {4: (state, 0.2)})
  config = tiny_config(run["data_dir"])
  return dict(run=run, state=state, config=config, annotate_dir=annotate_dir,
              lagm=synthetic.read(downstream.generate(config, annotate_dir)))


def _latents(runs, i: int = 0):
  """(z, noise key) of the set's batch i, as sample_batch draws them."""
  d = runs["config"].downstream
  key = jax.random.fold_in(jax.random.PRNGKey(runs["config"].seed), downstream._LATENT_TAG)
  k_z, k_noise = jax.random.split(jax.random.fold_in(key, i))
  return jax.random.normal(k_z, (d.gen_batch, runs["run"]["method"].z_dim)), k_noise


def _generated(runs) -> np.ndarray:
  """The set's images `[N, H, W, 3]` in [-1, 1], from its latents."""
  method, gen, d = runs["run"]["method"], runs["run"]["gen"], runs["config"].downstream
  out = [np.asarray(method.gen_fn(gen.params, *_latents(runs, i))[0])
         for i in range(-(-d.num_images // d.gen_batch))]
  return np.concatenate(out)[:d.num_images]


def _info(workdir):
  return json.loads((downstream.directory(workdir) / "generation.json").read_text())


def test_self_training_labels_are_the_segmenters_softmax_on_the_same_images(runs, tmp_path):
  # The phase-one S of the run stands in for the supervised k-shot segmenter.
  source = label_sources.segmenter(runs["config"], runs["annotate_dir"], "latest")
  data = synthetic.read(downstream.generate(runs["config"], tmp_path, source=source))
  lagm = runs["lagm"]
  np.testing.assert_array_equal(data["image"], lagm["image"])  # same latents, same images
  module, params, stats = restore.restore_segmenter(runs["annotate_dir"], "annotate", "latest",
                                                    runs["config"])
  x = _generated(runs)  # G's float images (the set stores them rounded to uint8)
  probs = np.asarray(jax.nn.softmax(restore.predict_fn(module)(params, stats, x), axis=-1))
  assert np.mean(data["label"] == probs.argmax(-1)) > 0.999
  np.testing.assert_allclose(data["confidence"], probs.max(-1) * 255, atol=0.51)
  assert len(np.unique(data["label"])) > 1
  assert np.mean(data["label"] != lagm["label"]) > 0.2  # not the annotator's labels
  info = _info(tmp_path)
  assert info["label_source"] == "self_training" and info["annotator_steps"] == []
  assert _info(runs["annotate_dir"])["label_source"] == "annotator"


def test_label_free_labels_are_the_initial_annotators(runs, tmp_path):
  run, config = runs["run"], runs["config"]
  source = label_sources.label_free(config, run["gen"])
  data = synthetic.read(downstream.generate(config, tmp_path, source=source))
  np.testing.assert_array_equal(data["image"], runs["lagm"]["image"])
  # conftest's initial state is init_state(seed 0), the config's seed: the same annotator.
  initial = label_sources.LabelSource(
      "annotator", label_sources.annotator_labels,
      ((run["state"].ann_params, run["state"].ann_stats),))
  again = synthetic.read(downstream.generate(config, tmp_path / "again", source=initial))
  np.testing.assert_array_equal(data["label"], again["label"])
  assert np.mean(data["label"] != runs["lagm"]["label"]) > 0.2
  assert _info(tmp_path)["label_source"] == "label_free"
  # The same directory with another source is an error, not a silent reuse.
  with pytest.raises(ValueError, match="label_source"):
    downstream.generate(config, tmp_path / "again", source=source)


def test_snapshot_filters_refuse_other_sources(runs, tmp_path):
  source = label_sources.label_free(runs["config"], runs["run"]["gen"])
  for name in ("ensemble", "gradient"):
    with pytest.raises(ValueError, match="needs the annotator"):
      downstream.generate(tiny_config(runs["run"]["data_dir"], filter=name), tmp_path,
                          source=source)


def test_warm_start_distils_the_teacher_into_the_annotator(runs):
  run, config = runs["run"], runs["config"]
  teacher = label_sources.segmenter(config, runs["annotate_dir"], "latest")
  method, gen = run["method"], run["gen"]
  images, feats = method.gen_fn(gen.params, *_latents(runs))
  target = np.asarray(teacher.fn(method, teacher.members[0], images, feats)[1]).argmax(-1)

  def agreement(state):
    probs = label_sources.annotator_labels(method, (state.ann_params, state.ann_stats), images,
                                           feats)[1]
    return np.mean(np.asarray(probs).argmax(-1) == target)

  state, losses = warm_start.distill_annotator(run["state"], gen.params, teacher, method=method,
                                               steps=40, lr=3e-3, batch=4, seed=0)
  assert losses[-1] < losses[0] - 0.2, losses  # cross-entropy: floored at the teacher's entropy
  before, after = agreement(run["state"]), agreement(state)
  assert after > before + 0.4, (before, after)  # 0.05 -> 0.57 measured
  assert not warm_start.wanted(config)


def test_annotator_mean_averages_the_snapshots_soft_labels(runs, tmp_path):
  run = runs["run"]
  states = {s: run["state"].replace(ann_params=perturbed(run["state"].ann_params, s, 0.5))
            for s in (3, 4)}
  workdir = run["write_run"](tmp_path, {s: (st, 0.1) for s, st in states.items()})
  source = label_sources.annotator_mean(restore.checkpoint_dir(workdir), [3, 4])
  method, gen = run["method"], run["gen"]
  images, feats = method.gen_fn(gen.params, *_latents(runs))
  _, probs = source.fn(method, source.members[0], images, feats)
  each = [np.asarray(label_sources.annotator_labels(
      method, (st.ann_params, st.ann_stats), images, feats)[1]) for st in states.values()]
  np.testing.assert_allclose(np.asarray(probs), (each[0] + each[1]) / 2, atol=1e-6)
  assert np.mean(each[0].argmax(-1) != each[1].argmax(-1)) > 0.1  # the snapshots differ
  assert (source.name, source.annotator_steps) == ("annotator_mean", [3, 4])


def test_mixture_is_the_weighted_mean_of_the_sources_labels(runs):
  # Beyond the paper (downstream.label_mix): annotator and self-training labels.
  run = runs["run"]
  ann = label_sources.annotator(restore.checkpoint_dir(runs["annotate_dir"]), [4])
  seg = label_sources.segmenter(runs["config"], runs["annotate_dir"], "latest")
  mix = label_sources.mixture([ann, seg], [0.25, 0.75])
  method, gen = run["method"], run["gen"]
  images, feats = method.gen_fn(gen.params, *_latents(runs))
  x, probs = mix.fn(method, mix.members[0], images, feats)
  each = [np.asarray(src.fn(method, src.members[0], images, feats)[1]) for src in (ann, seg)]
  np.testing.assert_allclose(np.asarray(probs), 0.25 * each[0] + 0.75 * each[1], atol=1e-6)
  np.testing.assert_array_equal(np.asarray(x), np.asarray(ann.fn(
      method, ann.members[0], images, feats)[0]))
  assert np.mean(each[0].argmax(-1) != each[1].argmax(-1)) > 0.1  # the sources differ
  assert mix.name == "mixture(0.25*annotator + 0.75*self_training)"
  assert mix.annotator_steps == [4]
  with pytest.raises(ValueError, match="sum to 1"):
    label_sources.mixture([ann, seg], [0.5, 0.6])


def _weighted_config(runs, tau: float, **matching):
  config = tiny_config(runs["run"]["data_dir"], logit_adjust=tau)
  config.matching.class_weights = (1.0, 1.0, 1.0, 10.0, 5.0, 10.0)
  config.matching.update(matching)
  return config


def test_logit_adjust_divides_the_class_weights_out_of_the_labels(runs, tmp_path):
  # Beyond the paper (downstream.logit_adjust): labels from softmax(logits - tau log w),
  # i.e. the annotator's soft labels divided by w**tau and renormalised.
  run = runs["run"]
  config = _weighted_config(runs, 1.0)
  workdir = tmp_path / "run"  # the annotator's run without its plain set
  shutil.copytree(runs["annotate_dir"], workdir, ignore=shutil.ignore_patterns("downstream"))
  data = synthetic.read(downstream.generate(config, workdir))
  np.testing.assert_array_equal(data["image"], runs["lagm"]["image"])  # same latents
  method, gen = run["method"], run["gen"]
  plain = label_sources.annotator(restore.checkpoint_dir(runs["annotate_dir"]), [4])
  offset = label_sources.logit_offset(config)
  adjusted = label_sources.annotator(restore.checkpoint_dir(runs["annotate_dir"]), [4], offset)
  images, feats = method.gen_fn(gen.params, *_latents(runs))
  p = np.asarray(plain.fn(method, plain.members[0], images, feats)[1], np.float64)
  q = np.asarray(adjusted.fn(method, adjusted.members[0], images, feats)[1])
  w = np.asarray(config.matching.class_weights)
  np.testing.assert_allclose(q, (p / w) / (p / w).sum(-1, keepdims=True), atol=1e-6)
  # The set's labels are those of the divided-out prior; the small parts shrink.
  n = len(q)
  assert np.mean(data["label"][:n] == q.argmax(-1)) > 0.999
  changed = data["label"] != runs["lagm"]["label"]
  assert changed.mean() > 0.01
  assert np.isin(runs["lagm"]["label"][changed], (3, 4, 5)).all()  # only weighted classes lose
  assert _info(workdir)["label_source"] == adjusted.name == (
      "annotator(logits - [0, 0, 0, 2.303, 1.609, 2.303])")
  # A set written without the correction is not silently reused with it.
  with pytest.raises(ValueError, match="label_source"):
    downstream.generate(config, runs["annotate_dir"])
  half = label_sources.logit_offset(_weighted_config(runs, 0.5))
  np.testing.assert_allclose(half, 0.5 * offset)
  assert label_sources.logit_offset(_weighted_config(runs, 0.0)) is None


def test_logit_adjust_refuses_configs_without_the_prior_shift(runs):
  with pytest.raises(ValueError, match="has none"):
    label_sources.logit_offset(tiny_config(runs["run"]["data_dir"], logit_adjust=1.0))
  with pytest.raises(ValueError, match="class_weights_on='both'"):
    label_sources.logit_offset(_weighted_config(runs, 1.0, class_weights_on="both"))
  with pytest.raises(ValueError, match="tau >= 0"):
    label_sources.logit_offset(_weighted_config(runs, -1.0))
