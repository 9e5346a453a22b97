"""The shared update step: learning, gradient accumulation, non-finite skip, sharding."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jdiff  # noqa: E402
from jdiff.models.logprobs import model_token_logprobs  # noqa: E402
from jdiff.train import (
    init_train_state,
    make_optimizer,
    make_schedule,  # noqa: E402
    make_update_step,
)

B, T = 8, 8


def masked_nll(model, batch):
  """Per-row mean NLL of the masked tokens, mean over rows; ``scale`` lets a test inject NaN."""
  logp = model_token_logprobs(model, batch["inputs"], None, None, batch["targets"], chunk_size=48)
  mask = batch["loss_mask"]
  per_row = -jnp.sum(logp * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  loss = jnp.mean(per_row * batch["scale"])
  return loss, {"masked_tokens": jnp.sum(mask)}


@pytest.fixture(scope="module")
def setup():
  cfg = jdiff.preset("tiny_sdar")
  rng = np.random.default_rng(0)
  targets = rng.integers(4, cfg.vocab_size, size=(B, T)).astype(np.int32)
  mask = rng.random((B, T)) < 0.5
  mask[:, 0] = True
  batch = {
      "inputs": np.where(mask, cfg.mask_token_id, targets).astype(np.int32),
      "targets": targets,
      "loss_mask": mask.astype(np.float32),
      "scale": np.ones((B,), np.float32),
  }
  model = jdiff.DiffusionLM(cfg, rngs=nnx.Rngs(0))
  opt = make_optimizer({"lr": 1e-2, "eps": 1e-3, "schedule": "constant", "max_grad_norm": 1.0})
  graphdef, _ = init_train_state(model, opt)
  step = make_update_step(graphdef, opt, masked_nll)
  # The equivalence tests take one clipped SGD step: its parameter change is -lr * g, so
  # comparing changes compares gradients. An Adam first step (~lr * sign(g)) would turn float
  # noise in near-zero gradient entries into lr-sized parameter differences. lr = 1 keeps the
  # change well above the float32 rounding of the parameters it is added to.
  sgd = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0))
  return dict(
      model=model,
      opt=opt,
      batch=batch,
      step=step,
      graphdef=graphdef,
      sgd=sgd,
      sgd_step=make_update_step(graphdef, sgd, masked_nll),
  )


def _params_np(state):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(state.params))


def _fresh(setup, mesh=None, opt="opt"):
  return init_train_state(setup["model"], setup[opt], mesh=mesh)[1]


def _assert_same_change(state, ref_state, start):
  """Parameter changes agree leaf by leaf: rtol, plus an atol scaled to the leaf's largest
  change (entries whose gradient nearly cancels, summed in a different order) and to the
  float32 spacing of its parameters (the change is read back from ``p0 + change``)."""

  def check(a, b, p0):
    da, db = np.asarray(a, np.float64) - p0, np.asarray(b, np.float64) - p0
    ulp = np.spacing(np.abs(p0).max().astype(np.float32))
    np.testing.assert_allclose(da, db, rtol=1e-5, atol=1e-5 * np.abs(db).max() + 2 * ulp)

  jax.tree.map(check, _params_np(state), _params_np(ref_state), start)


def test_loss_decreases(setup):
  state = _fresh(setup)
  losses = []
  for _ in range(6):
    state, metrics = setup["step"](state, setup["batch"])
    losses.append(float(metrics["loss"]))
    assert float(metrics["skipped"]) == 0.0
  assert losses[-1] < losses[0] - 0.05, losses
  assert int(state.step) == 6
  assert float(metrics["masked_tokens"]) == setup["batch"]["loss_mask"].sum()


def test_grad_accumulation_matches_full_batch(setup):
  start = _params_np(_fresh(setup, opt="sgd"))
  ref_state, ref_m = setup["sgd_step"](_fresh(setup, opt="sgd"), setup["batch"])
  accum = make_update_step(setup["graphdef"], setup["sgd"], masked_nll, grad_accum=2)
  state, m = accum(_fresh(setup, opt="sgd"), setup["batch"])
  np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m["grad_norm"]), float(ref_m["grad_norm"]), rtol=1e-5)
  _assert_same_change(state, ref_state, start)


def weighted_nll(model, batch):
  """``masked_nll`` as the optimizer step defines it: Σ_r row_weight_r · per-row mean NLL,
  with row_weight = 1 / (non-empty rows of the whole step), so micro-batch losses add up."""
  logp = model_token_logprobs(model, batch["inputs"], None, None, batch["targets"], chunk_size=48)
  mask = batch["loss_mask"]
  per_row = -jnp.sum(logp * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
  loss = jnp.sum(per_row * batch["row_weight"])
  return loss, {"nll_loss": loss, "masked_tokens": jnp.sum(mask)}


def test_step_weighted_accumulation_sums_micro_batches(setup):
  """Rows 4-7 empty: with grad_accum 4 (strided: micro-batch i = rows i, i+4) every micro-batch
  holds one non-empty row. The step-weighted sum equals the full batch's mean over non-empty
  rows; the per-micro-batch mean (no row_weight) would weight the rows alike only by chance."""
  batch = dict(setup["batch"])
  mask = batch["loss_mask"].copy()
  mask[4:] = 0.0
  mask[0, 1:] = 0.0  # unequal rows
  batch["loss_mask"] = mask
  valid = (mask.sum(1) > 0).astype(np.float32)
  weighted = dict(batch, row_weight=valid / valid.sum())
  start = _params_np(_fresh(setup, opt="sgd"))
  ref_state, ref_m = make_update_step(setup["graphdef"], setup["sgd"], weighted_nll)(
      _fresh(setup, opt="sgd"), weighted
  )
  # An independent reference: the plain mean over the 4 non-empty rows, one micro-batch.
  full = dict(
      batch,
      loss_mask=mask[:4],
      inputs=batch["inputs"][:4],
      targets=batch["targets"][:4],
      scale=batch["scale"][:4],
  )
  plain_state, plain_m = setup["sgd_step"](_fresh(setup, opt="sgd"), full)
  np.testing.assert_allclose(float(ref_m["loss"]), float(plain_m["loss"]), rtol=1e-5)
  _assert_same_change(ref_state, plain_state, start)
  for n in (2, 4):
    accum = make_update_step(setup["graphdef"], setup["sgd"], weighted_nll, grad_accum=n)
    state, m = accum(_fresh(setup, opt="sgd"), weighted)
    np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m["nll_loss"]), float(ref_m["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m["grad_norm"]), float(ref_m["grad_norm"]), rtol=1e-5)
    _assert_same_change(state, ref_state, start)


def test_nonfinite_loss_skips_update(setup):
  state = _fresh(setup)
  before = _params_np(state)
  count_before = jax.tree.map(np.asarray, state.opt_state)
  bad = dict(setup["batch"], scale=np.full((B,), np.nan, np.float32))
  state, metrics = setup["step"](state, bad)
  assert float(metrics["skipped"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  assert int(state.step) == 1  # the call is counted ...
  jax.tree.map(np.testing.assert_array_equal, _params_np(state), before)
  # ... but the optimizer state (its step count drives the LR schedule) is unchanged.
  jax.tree.map(
      np.testing.assert_array_equal, jax.tree.map(np.asarray, state.opt_state), count_before
  )
  state, metrics = setup["step"](state, setup["batch"])  # a good batch still trains after
  assert float(metrics["skipped"]) == 0.0
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, _params_np(state), before)))


def test_sharded_update_matches_single_device(setup):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices")
  mesh = jdiff.sharding.make_mesh((2, 2, 2))
  start = _params_np(_fresh(setup, opt="sgd"))
  ref_state, ref_m = setup["sgd_step"](_fresh(setup, opt="sgd"), setup["batch"])
  state = _fresh(setup, mesh, opt="sgd")
  wq = state.params["backbone"]["layers"]["wq"]  # logical (layers, embed, heads, head_dim)
  assert wq.get_value().sharding.spec == P(None, "fsdp", "tensor", None)
  sharded = make_update_step(setup["graphdef"], setup["sgd"], masked_nll, mesh=mesh, grad_accum=2)
  state, m = sharded(state, setup["batch"])
  new_wq = state.params["backbone"]["layers"]["wq"].get_value()
  assert new_wq.sharding.spec == P(None, "fsdp", "tensor", None)
  embed = state.params["backbone"]["embed"].get_value()  # (vocab, embed)
  assert embed.sharding.spec == P("tensor", "fsdp")
  np.testing.assert_allclose(float(m["loss"]), float(ref_m["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m["grad_norm"]), float(ref_m["grad_norm"]), rtol=1e-5)
  _assert_same_change(state, ref_state, start)


def test_optimizer_schedules():
  lr = lambda **kw: [float(make_schedule(dict(lr=1.0, **kw))(s)) for s in (0, 5, 10, 20)]
  assert lr(schedule="constant") == [1.0] * 4
  np.testing.assert_allclose(
      lr(schedule="constant_with_warmup", warmup_steps=10), [0, 0.5, 1, 1], atol=1e-6
  )
  np.testing.assert_allclose(
      lr(schedule="linear", warmup_steps=10, total_steps=20), [0, 0.5, 1, 0], atol=1e-6
  )
  np.testing.assert_allclose(
      lr(schedule="cosine", warmup_steps=0, total_steps=20),
      [1, (1 + np.cos(np.pi / 4)) / 2, 0.5, 0],
      atol=1e-6,
  )
  with pytest.raises(ValueError, match="schedule"):
    make_schedule({"schedule": "nope"})
  # max_grad_norm clips before AdamW; wd applies to matrices only.
  opt = make_optimizer({"lr": 0.1, "max_grad_norm": 0.5, "weight_decay": 0.1})
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  grads = {"w": jnp.zeros((2, 2)), "b": jnp.zeros((2,))}
  updates, _ = opt.update(grads, opt.init(params), params)
  assert float(jnp.abs(updates["b"]).max()) == 0.0 and float(updates["w"][0, 0]) < 0
  assert isinstance(opt, optax.GradientTransformation)
