"""Trace SFT: TraceRL's rows, a plain NLL under TraceRL's normalisation, reward filtering and a
collected set reused by a rerun."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hf_fixtures
import jdiff
from jdiff.models import masks
from jdiff.rl import tracerl
from jdiff.sampling import Trajectory
from jdiff.sft import trace_sft

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  out = {}
  for family, make in (("sdar", hf_fixtures.make_sdar), ("llada", hf_fixtures.make_llada)):
    d = str(tmp_path_factory.mktemp(family))
    make(d, seed=5)
    out[family] = jdiff.from_pretrained(d)
  return out


def _trajectory(model, seed=0, b=3, p=5, g=8, steps_per_token=2):
  """A random left-padded batch with per-row lengths and a valid step map."""
  rng = np.random.default_rng(seed)
  c = model.config
  vocab = min(c.vocab_size, 100)
  plen = rng.integers(2, p + 1, size=b)
  pmask = np.arange(p)[None] >= (p - plen)[:, None]
  pids = np.where(pmask, rng.integers(3, vocab, size=(b, p)), c.pad_token_id).astype(np.int32)
  lengths = rng.integers(g // 2, g + 1, size=b).astype(np.int32)
  toks = rng.integers(3, vocab, size=(b, g)).astype(np.int32)
  steps = np.zeros((b, g), np.int32)
  for i in range(b):
    order = rng.permutation(lengths[i])
    steps[i, order] = 1 + np.arange(lengths[i]) // steps_per_token
    toks[i, lengths[i] :] = c.pad_token_id
  return Trajectory(
      prompt_ids=pids,
      prompt_mask=pmask,
      tokens=toks,
      step_map=steps,
      logprobs=np.zeros((b, g), np.float32),
      lengths=lengths,
      num_steps=steps.max(-1),
  )


def _records(traj):
  out = []
  for i in range(len(traj.lengths)):
    n = int(traj.lengths[i])
    out.append(
        dict(
            prompt_ids=traj.prompt_ids[i][traj.prompt_mask[i]].tolist(),
            tokens=traj.tokens[i, :n].tolist(),
            step_map=traj.step_map[i, :n].tolist(),
        )
    )
  return out


@pytest.mark.parametrize("family,shrink", [("sdar", 1), ("sdar", 2), ("llada", 1)])
def test_rows_are_tracerls_rows(models, family, shrink):
  model = models[family]
  traj = _trajectory(model, seed=shrink)
  cc = trace_sft.TraceCollectConfig(shrink=shrink, max_steps=8)
  ref = tracerl.build_batch(
      traj,
      np.ones(3, np.float32),
      None,
      tracerl.TraceRLConfig(shrink=shrink, max_steps=8),
      model.config,
  )
  nonempty = ref["loss_mask"].any(-1)
  assert 0 < nonempty.sum() < len(nonempty) or family == "llada"
  # Through the stored records, as a rerun reads them back.
  rows = trace_sft.build_rows(
      trace_sft.as_trajectory(_records(traj), model.config.pad_token_id, gen_width=8),
      model.config,
      cc,
  )
  for k, v in rows.items():
    np.testing.assert_array_equal(v, ref[k][nonempty], err_msg=k)
  assert set(rows) >= {"input_ids", "positions", "valid", "targets", "loss_mask"}


@pytest.mark.parametrize("family", ["sdar", "llada"])
def test_loss_is_hand_computed_nll(models, family):
  model = models[family]
  rows = trace_sft.build_rows(
      _trajectory(model, seed=7), model.config, trace_sft.TraceCollectConfig(max_steps=8)
  )
  mask = masks.dense(tracerl.attention_mask(rows, model.config))
  logits = jdiff.forward(
      model,
      jnp.asarray(rows["input_ids"]),
      attention_mask=mask,
      positions=jnp.asarray(rows["positions"]),
  )
  logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), -1), np.float64)
  per_row = []
  for r in range(len(rows["input_ids"])):
    js = np.flatnonzero(rows["loss_mask"][r])
    nll = -sum(logp[r, j, rows["targets"][r, j]] for j in js)
    # Block rows: over the padded response width L1; full attention: over |P|.
    per_row.append(nll / (rows["row_norm"][r] if family == "sdar" else len(js)))
  loss, metrics = jax.jit(trace_sft.loss_fn)(model, rows)
  np.testing.assert_allclose(float(loss), np.mean(per_row), rtol=1e-5)
  assert float(metrics["num_supervised"]) == rows["loss_mask"].sum()


def test_filter_keeps_exactly_the_preferred(models):
  model = models["sdar"]
  base = _trajectory(model, b=4)
  rewards = {0: 1.0, 1: 0.0, 2: 0.5, 3: 1.0}  # per prompt index

  def sample_rows(idx, key):
    del key
    traj = _trajectory(model, b=len(idx))
    return traj, np.array([rewards[i] for i in idx])

  prompt_ids = [base.prompt_ids[i].tolist() for i in range(4)]
  correct = lambda r: r >= 1.0  # noqa: E731
  cc = trace_sft.TraceCollectConfig(samples_per_prompt=2, rollout_batch=3)
  records, stats = trace_sft.collect(sample_rows, correct, prompt_ids, cc, jax.random.key(0))
  # Prompts 0 and 3, twice each; the padding rows of the second call (prompt 3 repeated) are
  # not kept twice.
  assert [r["prompt_index"] for r in records] == [0, 0, 3, 3]
  assert stats == {"trace_prompts": 4, "trace_sampled": 8, "trace_kept": 4, "trace_acceptance": 0.5}
  cc = trace_sft.TraceCollectConfig(samples_per_prompt=1, rollout_batch=4, min_reward=0.5)
  records, _ = trace_sft.collect(sample_rows, correct, prompt_ids, cc, jax.random.key(0))
  assert [r["prompt_index"] for r in records] == [0, 2, 3]
  assert [r["reward"] for r in records] == [1.0, 0.5, 1.0]


def test_rerun_reuses_the_collected_set(tmp_path):
  calls = []

  def make():
    calls.append(1)
    return [dict(prompt_ids=[5], tokens=[6, 7], step_map=[1, 2], reward=1.0)], {
        "trace_prompts": 1,
        "trace_sampled": 1,
        "trace_kept": 1,
        "trace_acceptance": 1.0,
    }

  first, _ = trace_sft.collected(str(tmp_path), make, log=lambda *_: None)
  second, stats = trace_sft.collected(str(tmp_path), make, log=lambda *_: None)
  assert calls == [1] and first == second and stats["trace_reused"]
  with pytest.raises(ValueError, match="no trajectory passed"):
    trace_sft.collected(
        str(tmp_path / "empty"),
        lambda: (
            [],
            {"trace_prompts": 1, "trace_sampled": 1, "trace_kept": 0, "trace_acceptance": 0.0},
        ),
        log=lambda *_: None,
    )


def _load_script(name):
  spec = importlib.util.spec_from_file_location(
      f"_trace_{name}", os.path.join(ROOT, "scripts", f"{name}.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", ["trace_sft_block", "trace_sft_llada"])
def test_configs_run_end_to_end(tmp_path, name):
  sft = _load_script("sft")
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  cfg.tensorboard = False
  cfg.task.num_train, cfg.task.num_eval = 16, 4
  cfg.sft.steps, cfg.sft.batch_size = 2, 4
  # min_reward below every reward: the barely warm-started model keeps everything it decodes.
  cfg.sft.trace.update(dict(warm_start_steps=2, num_prompts=4, rollout_batch=4, min_reward=-1.0))
  workdir = str(tmp_path / "run")
  res = sft.run(cfg, workdir, log=lambda *_: None)
  assert res["trace_kept"] == 8 and res["trace_acceptance"] == 1.0
  assert np.isfinite(res["loss_after"])
  with open(os.path.join(workdir, trace_sft.TRAJECTORIES_FILE)) as f:
    assert len([json.loads(line) for line in f]) == 8
  again = sft.run(cfg, workdir, log=lambda *_: None)  # reuses the set, samples nothing
  assert again["trace_reused"]
