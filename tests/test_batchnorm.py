"""BatchNorm's running variance: Flax's biased one (ours) or torch's unbiased
one (the paper's code), by hand; and the option reaching every model."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg import build, config_base
from gmseg.models import layers

MOMENTUM = 0.9


def _batches():
  rng = np.random.default_rng(0)
  # [batch 2, 3x2 map, 4 channels]: n = 12 values per channel.
  return [rng.normal(1.0 + k, 2.0, (2, 3, 2, 4)) for k in range(2)]


def _run(module, x_list):
  """Training updates from fresh statistics, one per batch; a float64 run
  casts the (float32) initial variables to float64, as float64 runs do."""
  v = module.init(jax.random.PRNGKey(0), jnp.asarray(x_list[0]))
  v = jax.tree.map(lambda a: a.astype(x_list[0].dtype), v)
  stats, params, outs = v["batch_stats"], v["params"], []
  for x in x_list:
    y, upd = module.apply({"params": params, "batch_stats": stats}, jnp.asarray(x),
                          mutable=["batch_stats"])
    stats = upd["batch_stats"]
    outs.append(y)
  return stats, outs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unbiased_running_variance_by_hand_after_one_and_two_updates(dtype):
  xs = [x.astype(dtype) for x in _batches()]
  n = 2 * 3 * 2
  # torch: running = 0.9 running + 0.1 * batch statistic, variance unbiased.
  mean, var = np.zeros(4), np.ones(4)
  want = []
  for x in xs:
    x = x.astype(np.float64)
    mean = MOMENTUM * mean + (1 - MOMENTUM) * x.mean((0, 1, 2))
    var = MOMENTUM * var + (1 - MOMENTUM) * x.var((0, 1, 2), ddof=1)
    want.append((mean, var))
  assert n / (n - 1) == pytest.approx(12 / 11)
  tol = 1e-15 if dtype == np.float64 else 1e-6
  with jax.enable_x64(dtype == np.float64):
    for updates in (1, 2):
      stats, outs = _run(layers.norm_layer("batch", True, "bn", "unbiased"), xs[:updates])
      np.testing.assert_allclose(stats["mean"], want[updates - 1][0], rtol=tol, atol=tol)
      np.testing.assert_allclose(stats["var"], want[updates - 1][1], rtol=tol, atol=tol)
      assert stats["var"].dtype == dtype
      # Training normalises with the biased batch variance (both frameworks).
      x = xs[updates - 1].astype(np.float64)
      biased = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-5)
      np.testing.assert_allclose(outs[-1], biased, rtol=0, atol=10 * tol)
      assert outs[-1].dtype == dtype


def test_unbiased_normalises_as_flax_bitwise_and_only_the_running_variance_differs():
  xs = [x.astype(np.float32) for x in _batches()]
  flax_stats, flax_outs = _run(nn.BatchNorm(use_running_average=False, momentum=MOMENTUM,
                                            epsilon=1e-5), xs)
  ours_stats, ours_outs = _run(layers.TorchBatchNorm(use_running_average=False), xs)
  for a, b in zip(flax_outs, ours_outs):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(flax_stats["mean"], ours_stats["mean"])
  # Flax's biased variance, by hand, and the gap n/(n-1) makes.
  var = np.ones(4)
  for x in xs:
    var = MOMENTUM * var + (1 - MOMENTUM) * x.var((0, 1, 2))
  np.testing.assert_allclose(flax_stats["var"], var, rtol=1e-6)
  assert np.all(np.asarray(ours_stats["var"]) > np.asarray(flax_stats["var"]) * 1.005)
  # Evaluation uses the running statistics, the same formula.
  x = jnp.asarray(xs[1])
  v = {"params": {"scale": jnp.full(4, 1.5), "bias": jnp.full(4, 0.25)},
       "batch_stats": ours_stats}
  got = layers.TorchBatchNorm(use_running_average=True).apply(v, x)
  want = nn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(v, x)
  np.testing.assert_array_equal(got, want)


def test_running_variance_option_errors():
  with pytest.raises(ValueError, match="running variance 'torch'"):
    layers.norm_layer("batch", True, "bn", "torch")
  one = jnp.ones((1, 1, 1, 4))
  with pytest.raises(ValueError, match="more than one value per channel"):
    layers.TorchBatchNorm(use_running_average=False).init(jax.random.PRNGKey(0), one)


def _norm_types(module, *args, **kw):
  """The class names of every BatchNorm-like submodule the module creates."""
  found = set()

  def intercept(next_fn, args_, kwargs, context):
    if isinstance(context.module, (nn.BatchNorm, layers.TorchBatchNorm)):
      found.add((type(context.module).__name__, context.module.use_running_average))
    return next_fn(*args_, **kwargs)
  with nn.intercept_methods(intercept):
    jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kw))
  return found


def test_config_keys_reach_every_batchnorm_and_old_configs_keep_flax():
  c = config_base.get_base()
  c.segmenter.widths = (4, 4, 4, 4, 4)
  c.segmenter.norm = c.annotator.norm = "batch"
  img = jnp.zeros((2, 16, 16, 3))
  assert _norm_types(build.segmenter(c.segmenter, 3), img, train=True) == {
      ("BatchNorm", False)}
  c.segmenter.bn_running_var = "unbiased"
  assert _norm_types(build.segmenter(c.segmenter, 3), img, train=True) == {
      ("TorchBatchNorm", False)}
  c.annotator.bn_running_var = "unbiased"
  feats = (jnp.zeros((2, 4, 4, 4)), jnp.zeros((2, 8, 8, 4)))
  assert _norm_types(build.annotator(c), feats, train=True) == {("TorchBatchNorm", False)}
  # DeepLab: head and a 'batch' backbone train theirs; a frozen backbone stays Flax's, frozen.
  from gmseg.models import deeplab
  dl = deeplab.DeepLabV3(3, stage_sizes=(1, 1, 1, 1), width=4, aspp_channels=8,
                         norm="batch", bn_running_var="unbiased")
  assert _norm_types(dl, jnp.zeros((2, 32, 32, 3)), train=True) == {
      ("TorchBatchNorm", False), ("BatchNorm", True)}
  dl = dl.clone(backbone_norm="batch")
  assert _norm_types(dl, jnp.zeros((2, 32, 32, 3)), train=True) == {("TorchBatchNorm", False)}
  # A config saved before the key existed: Flax's running variance.
  old = {k: v for k, v in c.segmenter.items() if k != "bn_running_var"}

  class _Old(dict):
    __getattr__ = dict.__getitem__
  assert build.segmenter(_Old(old), 3).bn_running_var == "biased"
