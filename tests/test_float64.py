"""float64 (jax_enable_x64): generators, annotator and segmenters follow their
inputs' dtype, so gradient agreement can be settled in float64.

Each test switches x64 on only inside `jax.enable_x64(True)`; float32
behaviour outside it is what the fixture tests check.
"""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
from conftest import shared_path

from gmseg import generator_registry, matching, steps
from gmseg import state as state_lib
from gmseg.models import annotator, dcgan, deeplab, unet
from gmseg.models import stylegan2 as sg


def _f64(tree):
  return jax.tree.map(
      lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)
      else x, tree)


def _dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree)}


def _sg2_fixture(name="sg2_tiny32"):
  data = np.load(shared_path("fixtures", "stylegan2", f"{name}.npz"))
  with open(shared_path("fixtures", "stylegan2", f"{name}.json")) as f:
    kw = json.load(f)["constructor_kwargs"]
  s = kw["synthesis_kwargs"]
  arch = sg.Arch(z_dim=kw["z_dim"], w_dim=kw["w_dim"], resolution=kw["img_resolution"],
                 channel_base=s["channel_base"], channel_max=s["channel_max"],
                 mapping_layers=kw["mapping_kwargs"]["num_layers"], conv_clamp=s["conv_clamp"])
  sd = {k[len("param/"):]: data[k] for k in data.files if k.startswith("param/")}
  return data, arch, sg.params_from_state_dict(sd, arch)


def _sg2_outputs(params, z, arch):
  ws = sg.mapping(params, z, arch, 0.7)
  img, feats = sg.synthesis(params, ws, arch, "const")
  return ws, img, feats


def test_stylegan2_float64_matches_official_outputs():
  data, arch, params = _sg2_fixture()
  with jax.enable_x64(True):
    p64, z = _f64(params), jnp.asarray(data["input/z"], jnp.float64)
    ws, img, feats = jax.jit(_sg2_outputs, static_argnums=2)(p64, z, arch)
    assert _dtypes((ws, img, feats)) == {"float64"}
    # The official float32 outputs, to float32 accuracy.
    np.testing.assert_allclose(img, data["output/img"].transpose(0, 2, 3, 1), atol=1e-4)
    np.testing.assert_allclose(feats[-1], data["output/feat/b32"].transpose(0, 2, 3, 1),
                               atol=1e-4)
    # Init under x64 makes float32 params (as without x64), float32 inputs
    # stay float32, and random noise is drawn in the output dtype.
    init = functools.partial(sg.init_params, arch)
    assert _dtypes(jax.eval_shape(init, jax.random.PRNGKey(0))) == {"float32"}
    z32 = jax.ShapeDtypeStruct(z.shape, jnp.float32)
    outputs = functools.partial(_sg2_outputs, arch=arch)
    assert _dtypes(jax.eval_shape(outputs, params, z32)) == {"float32"}
    g = sg.make_generator(p64, arch, noise_mode="random")
    assert _dtypes(jax.eval_shape(g.apply_fn, p64, z, jax.random.PRNGKey(1))) == {"float64"}


def test_stylegan2_float64_gradient_matches_finite_differences():
  _, arch, params = _sg2_fixture()
  with jax.enable_x64(True):
    p64 = _f64(params)
    z = jax.random.normal(jax.random.PRNGKey(0), (2, arch.z_dim), jnp.float64)

    def f(z):
      img, feats = sg.synthesis(p64, sg.mapping(p64, z, arch, 0.7), arch, "const")
      return jnp.sum(img * jnp.cos(img)) + jnp.sum(feats[1] ** 2)

    g = jax.jit(jax.grad(f))(z)
    assert g.dtype == jnp.float64
    d = jax.random.normal(jax.random.PRNGKey(1), z.shape, jnp.float64)
    h = 1e-6
    f = jax.jit(f)
    fd = (f(z + h * d) - f(z - h * d)) / (2 * h)
    np.testing.assert_allclose(float(jnp.vdot(g, d)), float(fd), rtol=1e-7)


def test_dcgan_float64_matches_torch_reference():
  gen = generator_registry.get("dcgan_faces")
  with np.load(shared_path("fixtures", "dcgan_faces", "reference.npz")) as ref:
    z, want = ref["input/z"].reshape(8, 100), ref["output/img"]
  with jax.enable_x64(True):
    init = jax.eval_shape(dcgan.DCGANGenerator().init, jax.random.PRNGKey(0), jnp.zeros((1, 100)))
    assert _dtypes(init) == {"float32"}
    images, feats = gen.apply_fn(_f64(gen.params), jnp.asarray(z, jnp.float64), None)
    assert _dtypes((images, feats)) == {"float64"}
  np.testing.assert_allclose(images, want.transpose(0, 2, 3, 1), atol=1e-4)


def _struct(x, dtype):
  return jax.ShapeDtypeStruct(x if isinstance(x, tuple) else jnp.shape(x), dtype)


def _check_dtypes(module, rngs, inputs, **kw):
  """Shapes only (jax.eval_shape traces the module, nothing compiles): under
  x64, init gives float32 params; float64 params and inputs give float64
  outputs and parameter gradients; float32 ones give float32 outputs."""
  def logits(v, x):
    out = module.apply(v, *x, **kw)
    return out[0] if isinstance(out, tuple) else out  # (logits, batch_stats)

  loss = lambda v, x: jnp.sum(jnp.tanh(logits(v, x)))
  with jax.enable_x64(True):
    x32 = jax.tree.map(lambda x: _struct(x, jnp.float32), inputs)
    v32 = jax.eval_shape(lambda r, x: module.init(r, *x), rngs, x32)
    assert _dtypes(v32) == {"float32"}
    v64, x64 = (jax.tree.map(lambda x: _struct(x, jnp.float64), t) for t in (v32, x32))
    assert jax.eval_shape(logits, v64, x64).dtype == jnp.float64
    assert _dtypes(jax.eval_shape(jax.grad(loss), v64, x64)) == {"float64"}
    assert jax.eval_shape(logits, v32, x32).dtype == jnp.float32


def test_unet_annotator_deeplab_dtypes():
  # The UNet with the paper's BatchNorm in training mode (batch statistics),
  # the annotator with our default GroupNorm, a small DeepLab; values in
  # float64 are checked end to end below and in test_steps.py.
  key = jax.random.PRNGKey(0)
  _check_dtypes(unet.UNet(3, widths=(4, 4, 8, 8, 8), norm="batch"), key,
                (np.zeros((2, 16, 16, 3)),), train=True, mutable=["batch_stats"])
  feats = tuple(np.zeros((2, r, r, 8)) for r in (4, 8, 16))
  _check_dtypes(annotator.Annotator(3, tmp_channels=8, num_layers=3, norm="group"), key,
                (feats,))
  _check_dtypes(deeplab.DeepLabV3(3, stage_sizes=(1, 1, 1, 1), width=4, aspp_channels=8),
                {"params": key, "dropout": key}, (np.zeros((2, 32, 32, 3)),))


def _float64_state(shapes, seed=0):
  """A TrainState of `shapes` with float64 random params (numpy: initialising
  even a tiny UNet with Flax compiles for ~20 s on 2 cores) and zero optimiser
  state, step and key."""
  rng = np.random.default_rng(seed)

  def param(path, x):
    if "scale" in jax.tree_util.keystr(path):
      return jnp.asarray(1.0 + 0.1 * rng.standard_normal(x.shape))
    fan_in = int(np.prod(x.shape[:-1])) if len(x.shape) > 1 else 1
    return jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(fan_in))

  zeros = lambda x: jnp.zeros(x.shape, jnp.float64 if jnp.issubdtype(x.dtype, jnp.floating)
                              else x.dtype)
  return jax.tree.map(zeros, shapes).replace(
      ann_params=jax.tree_util.tree_map_with_path(param, shapes.ann_params),
      seg_params=jax.tree_util.tree_map_with_path(param, shapes.seg_params))


def test_annotator_step_float64_end_to_end():
  # The official tiny StyleGAN2 (32x32), the annotator and a UNet, all float64:
  # one jitted annotator step. S's output conv is matched: its gradient needs
  # S's forward pass only, which keeps the compile short.
  _, arch, params = _sg2_fixture()
  with jax.enable_x64(True):
    gen_params = _f64(params)
    gen = sg.make_generator(gen_params, arch, noise_mode="random")
    m = state_lib.Method(
        gen_fn=gen.apply_fn, z_dim=gen.z_dim,
        annotator=annotator.Annotator(3, tmp_channels=8, num_layers=3),
        segmenter=unet.UNet(3, widths=(4, 4, 8, 8, 8)),
        ann_tx=state_lib.make_optimizer("sgd", 1e-2),
        seg_tx=state_lib.make_optimizer("sgd", 1e-2), matched=(), syn_batch=2, seg_batch=2)
    s = _float64_state(jax.eval_shape(lambda g: state_lib.init_state(m, g, seed=0), gen_params))
    m = state_lib.Method(**{**m.__dict__,
                            "matched": state_lib.matched_paths(s.seg_params, "unet:out")})
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)))
    labels = jnp.asarray(np.random.default_rng(2).integers(0, 3, (2, 32, 32)), jnp.int32)
    s1, metrics = jax.jit(functools.partial(steps.annotator_step, method=m))(
        s, {"image": images, "label": labels}, gen_params)
    assert _dtypes((s1.ann_params, s1.seg_params, s1.ann_opt_state)) == {"float64"}
    loss = float(metrics["ann/match_loss"])
    assert np.isfinite(loss) and 0.0 < loss < 2.0 and float(metrics["ann/nonfinite"]) == 0
    moved = matching.global_norm(jax.tree.map(lambda a, b: a - b, s1.ann_params, s.ann_params))
    assert float(moved) > 0


def test_paper_batchnorm_iteration_stays_float64():
  # The paper's BatchNorm settings (config_base.PAPER_SETTINGS): A and S with
  # BatchNorm and torch's unbiased running variance, S's statistics moved in
  # the annotator step. One iteration (annotator step, then segmenter step
  # with A on its running statistics), traced by jax.eval_shape (nothing
  # compiles; the running variance's values are checked by hand in
  # tests/test_batchnorm.py): every floating leaf of the new state, running
  # statistics included, and the metrics stay float64.
  bn = dict(norm="batch", bn_running_var="unbiased")
  with jax.enable_x64(True):
    gen = generator_registry.get("random_conv", resolution=16, width=8, z_dim=4, seed=0)
    gen_params = _f64(gen.params)
    m = state_lib.Method(
        gen_fn=gen.apply_fn, z_dim=gen.z_dim,
        annotator=annotator.Annotator(3, tmp_channels=4, num_layers=2, **bn),
        segmenter=unet.UNet(3, widths=(4, 4, 4, 4, 4), **bn),
        ann_tx=state_lib.make_optimizer("sgd", 1e-2),
        seg_tx=state_lib.make_optimizer("sgd", 1e-2), matched=(), syn_batch=2, seg_batch=2,
        seg_bn="across_batch", ann_step_seg_stats="update")
    shapes = jax.eval_shape(lambda g: state_lib.init_state(m, g, seed=0), gen_params)
    assert jax.tree.leaves(shapes.ann_stats) and jax.tree.leaves(shapes.seg_stats)
    m = state_lib.Method(**{**m.__dict__,
                            "matched": state_lib.matched_paths(shapes.seg_params, "re:.*")})
    floating = lambda t: jax.tree.map(
        lambda x: _struct(x, jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, t)
    batch = {"image": _struct((2, 16, 16, 3), jnp.float64),
             "label": _struct((2, 16, 16), jnp.int32)}
    s1, metrics = jax.eval_shape(functools.partial(steps.iteration_step, method=m),
                                 floating(shapes), batch, gen_params)
  assert _dtypes((s1.ann_params, s1.ann_stats, s1.ann_opt_state, s1.seg_params, s1.seg_stats,
                  s1.seg_opt_state)) == {"float64"}
  # Metrics too, but the counts of sanitised gradient entries (float32 counters).
  assert {k for k, v in metrics.items() if v.dtype != jnp.float64} == {
      "ann/nonfinite", "seg/nonfinite"}
