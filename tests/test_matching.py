"""Distances, parameter selection, losses, per-example gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmseg import losses, matching
from gmseg.models import layers, unet


def _cos_rows(a, b, eps=1e-6):
  """1 - cos per row with each norm clamped at eps (the paper's, torch's
  cosine_similarity)."""
  na = np.maximum(np.linalg.norm(a, axis=1), eps)
  nb = np.maximum(np.linalg.norm(b, axis=1), eps)
  return 1 - np.sum(a * b, 1) / (na * nb)


def test_tensor_distance_hand_computed():
  # A dense kernel [in=3, out=2]: rows are the output channels (columns here).
  gs = np.array([[1., 0.], [0., 1.], [0., 0.]], np.float32)
  gr = np.array([[1., 0.], [0., -1.], [0., 0.]], np.float32)
  # rows: out0 = (1,0,0) vs (1,0,0): cos 1; out1 = (0,1,0) vs (0,-1,0): cos -1.
  assert matching.tensor_distance(gs, gr, "cosine", "sum") == pytest.approx(2.0, abs=1e-5)
  assert matching.tensor_distance(gs, gr, "cosine", "mean") == pytest.approx(1.0, abs=1e-5)
  assert matching.tensor_distance(gs, gr, "l2", "sum") == pytest.approx(2.0, abs=1e-5)
  assert matching.tensor_distance(gs, gr, "l2", "mean") == pytest.approx(1.0, abs=1e-5)
  assert matching.tensor_distance(gs, gr, "dot", "sum") == pytest.approx(0.0, abs=1e-6)
  assert matching.tensor_distance(gs, gs, "dot", "sum") == pytest.approx(-2.0)


def test_cosine_clamps_each_norm_at_eps():
  # Dense kernel [in=2, out=4]; rows (output channels) are the columns. Hand
  # values with eps = 1e-6 and cos = <x,y> / (max(|x|,eps) max(|y|,eps)):
  #   row 0: x = (3e-4, 4e-4), |x| = 5e-4; y = (3e-4, 4e-4): cos 1 exactly (adding
  #          eps to the product of norms, 2.5e-7, would give 0.2);
  #   row 1: x = (1e-7, 0), |x| < eps -> 1e-6; y = (1, 0): cos 1e-7 / 1e-6 = 0.1;
  #   row 2: x = 0: cos 0;
  #   row 3: x = (0, 2), y = (0, -3): cos -1.
  xs = np.array([[3e-4, 1e-7, 0., 0.], [4e-4, 0., 0., 2.]], np.float64)
  xr = np.array([[3e-4, 1., 1., 0.], [4e-4, 0., 0., -3.]], np.float64)
  want = np.array([0.0, 0.9, 1.0, 2.0])
  np.testing.assert_allclose(_cos_rows(xs.T, xr.T), want, atol=1e-12)
  got = matching.tensor_distance(xs.astype(np.float32), xr.astype(np.float32), "cosine", "sum")
  assert float(got) == pytest.approx(want.sum(), abs=1e-5)
  # Gradients stay finite where a row is exactly zero (and below eps).
  g_s, g_r = jax.grad(lambda a, b: matching.tensor_distance(a, b, "cosine", "sum"), (0, 1))(
      jnp.asarray(xs, jnp.float32), jnp.asarray(xr, jnp.float32))
  assert np.isfinite(g_s).all() and np.isfinite(g_r).all()
  # Below eps the norm is constant, so cos = <x,y>/(eps |y|) is linear in x:
  # d(1 - cos)/dx = -y / (eps |y|) for row 2 (y = (1, 0)).
  np.testing.assert_allclose(g_s[:, 2], [-1e6, 0.0], rtol=1e-5)


def test_conv_kernel_rows_are_output_channels():
  rng = np.random.default_rng(0)
  gs = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)  # HWIO
  gr = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
  # Reference in torch layout [out, in, kh, kw] -> [out, -1].
  ts = gs.transpose(3, 2, 0, 1).reshape(5, -1)
  tr = gr.transpose(3, 2, 0, 1).reshape(5, -1)
  want = _cos_rows(ts, tr).mean()
  got = matching.tensor_distance(gs, gr, "cosine", "mean")
  np.testing.assert_allclose(got, want, rtol=1e-5)
  l2 = np.linalg.norm(ts - tr, axis=1).sum()
  np.testing.assert_allclose(matching.tensor_distance(gs, gr, "l2", "sum"), l2, rtol=1e-5)
  np.testing.assert_allclose(matching.tensor_distance(gs, gr, "dot", "sum"),
                             -np.sum(ts * tr), rtol=1e-5)


def test_vectors_modes_and_tensor_reduction():
  rng = np.random.default_rng(1)
  k_s, k_r = (rng.normal(size=(2, 3)).astype(np.float32) for _ in range(2))
  b_s, b_r = np.array([1., 2., 3.], np.float32), np.array([1., -2., 0.], np.float32)
  gs, gr = {"k": k_s, "b": b_s}, {"k": k_r, "b": b_r}
  dk = float(matching.tensor_distance(k_s, k_r))
  # Paper default: bias gives 0 but counts in the mean over 2 tensors.
  assert float(matching.matching_distance(gs, gr)) == pytest.approx(dk / 2, rel=1e-5)
  assert float(matching.matching_distance(gs, gr, vectors="exclude")) == pytest.approx(dk, rel=1e-5)
  db = _cos_rows(b_s[None], b_r[None])[0]
  assert float(matching.matching_distance(gs, gr, vectors="match")) == pytest.approx(
      (dk + db) / 2, rel=1e-5)
  assert float(matching.matching_distance(gs, gr, tensor_reduction="sum")) == pytest.approx(dk, rel=1e-5)
  with pytest.raises(ValueError, match="vectors"):
    matching.matching_distance(gs, gr, vectors="bogus")
  with pytest.raises(ValueError, match="metric"):
    matching.matching_distance(gs, gr, metric="bogus")


def _unet_params():
  model = unet.UNet(3, widths=(4, 4, 8, 8, 8))
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]


def test_presets_select_what_they_say():
  params = _unet_params()
  tops = lambda sel: sorted({p.split("/")[0] for p in matching.select_paths(
      params, matching.resolve_pattern(sel))})
  assert tops("unet:all") == sorted(["inc", "down1", "down2", "down3", "down4",
                                     "up1", "up2", "up3", "up4", "outc"])
  assert tops("unet:out") == ["outc"]
  assert tops("unet:down") == ["down1", "down2", "down3", "down4", "inc"]
  assert tops("unet:up") == ["up1", "up2", "up3", "up4"]
  assert tops("unet:outermost") == ["down1", "outc", "up4"]
  assert all("_norm/" in p for p in matching.select_paths(
      params, matching.resolve_pattern("norms", "unet")))
  assert tops("re:^up4/") == ["up4"]


def test_deeplab_presets():
  from gmseg.models import deeplab
  model = deeplab.DeepLabV3(3, stage_sizes=(1, 1, 1, 1), width=8, aspp_channels=8)
  params = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r},
                                               jnp.zeros((1, 32, 32, 3))), jax.random.PRNGKey(0))["params"]
  tops = lambda sel: sorted({"/".join(p.split("/")[:2]) if p.startswith("backbone") else p.split("/")[0]
                             for p in matching.select_paths(params, matching.resolve_pattern(sel))})
  assert tops("deeplab:head") == ["classifier"]
  assert tops("deeplab:head_layer4") == ["backbone/layer4", "classifier"]
  assert tops("deeplab:head_layer2_4") == ["backbone/layer2", "backbone/layer3",
                                           "backbone/layer4", "classifier"]
  assert "backbone/stem_conv" not in tops("deeplab:head_layer1_4")


def test_selection_errors_list_what_exists():
  params = _unet_params()
  with pytest.raises(ValueError, match="presets: .*outermost"):
    matching.resolve_pattern("unet:nope")
  with pytest.raises(ValueError, match="families"):
    matching.resolve_pattern("vit:head")
  with pytest.raises(ValueError, match="outc/kernel"):
    matching.select_paths(params, "^nothing_here")


def test_losses():
  logits = jnp.array([[[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]]])  # [1,1,2,3]
  logp = jax.nn.log_softmax(logits, -1)
  labels = jnp.array([[[0, 255]]])
  assert float(losses.hard_cross_entropy(logits, labels)) == pytest.approx(float(-logp[0, 0, 0, 0]), rel=1e-6)
  labels = jnp.array([[[2, 1]]])
  want = -(logp[0, 0, 0, 2] + logp[0, 0, 1, 1]) / 2
  assert float(losses.hard_cross_entropy(logits, labels)) == pytest.approx(float(want), rel=1e-6)
  assert float(losses.hard_cross_entropy(logits, jnp.full((1, 1, 2), 255))) == 0.0
  # Soft CE with one-hot labels equals the hard one.
  onehot = jax.nn.one_hot(labels, 3)
  assert float(losses.soft_cross_entropy(logits, onehot)) == pytest.approx(float(want), rel=1e-6)


def test_sanitize_counts_and_clips():
  g = {"a": jnp.array([1.0, jnp.nan, jnp.inf, -jnp.inf])}
  clean, bad = matching.sanitize(g)
  np.testing.assert_array_equal(clean["a"], [1.0, 0.0, 1e5, -1e5])
  assert int(bad) == 3


class _ConvGroupNorm(nn.Module):
  """conv-GroupNorm-ReLU, 1x1 conv: per-example normalisation, as the UNet's,
  in a graph small enough that vmap(grad) compiles in a second or two."""

  @nn.compact
  def __call__(self, x):
    h = layers.conv_norm_relu(x, 4, "group", False, "a")
    return nn.Conv(3, (1, 1), name="out")(h)


def test_per_example_grads_are_each_examples_grad_and_average_to_the_batch_grad():
  # The steps' per-example path is checked against the batch path in
  # tests/test_steps.py; here the primitive itself: row i is example i's own
  # gradient, and the rows average to the gradient of the batch-mean loss.
  model = _ConvGroupNorm()
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
  y = jax.random.randint(jax.random.PRNGKey(2), (4, 8, 8), 0, 3)
  flat = matching.flatten(model.init(jax.random.PRNGKey(0), x)["params"])

  def loss(p, x, y):
    return losses.hard_cross_entropy(model.apply({"params": matching.unflatten(p)}, x), y)

  per_ex = jax.jit(lambda p: matching.per_example_grads(
      lambda p, xi, yi: loss(p, xi[None], yi[None]), p, x, y))(flat)
  grad = jax.jit(jax.grad(loss))
  batch = grad(flat, x, y)
  third = grad(flat, x[2:3], y[2:3])
  assert len(flat) == 6
  for k in flat:
    assert per_ex[k].shape == (4,) + flat[k].shape
    np.testing.assert_allclose(per_ex[k][2], third[k], atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(per_ex[k].mean(0), batch[k], atol=2e-6, rtol=1e-4)
  # The examples' gradients differ (the rows are not one gradient repeated).
  assert float(jnp.max(jnp.abs(per_ex["out/kernel"][0] - per_ex["out/kernel"][1]))) > 1e-3
