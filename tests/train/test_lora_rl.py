"""LoRA in the RL loop (diffu-GRPO on the tiny LLaDA): only the adapters train, the reference
policy is the adapter disabled (the base model, no copy of its weights), and a LoRA run resumes
from its checkpoint exactly."""

import copy

import jax
import numpy as np

from config_utils import load_config, policy_leaves, tiny
from jdiff.rl.method import score_all
from jdiff.train import rl_loop, setup
from jdiff.train.run_setup import open_run

LORA = dict(rank=4, alpha=8.0, targets=("wq", "wv", "w_up"), quantize_base="none")


def _config(steps=2):
  c = tiny(load_config("diffu_grpo"), steps=steps)
  c.sft.steps = 0
  c.method.num_iterations = 2
  c.model.lora = dict(LORA)
  return c


def _flat(state):
  return {k: np.array(v) for k, v in jax.tree_util.tree_leaves_with_path(state)}


def test_one_step_trains_only_the_adapters_against_the_base(tmp_path):
  config = _config()
  r = open_run(config, str(tmp_path), lambda msg: None)
  ctx, rt = rl_loop.build(config, r, r.model)
  params0, rest0 = _flat(rt.policy.state.params), _flat(rt.policy.state.rest)
  assert params0 and all("_lora_" in jax.tree_util.keystr(k) for k in params0)
  # The reference holds adapter-sized arrays only: no copy of the base weights.
  ref_size = sum(x.size for x in jax.tree.leaves(rt.policy.ref_params))
  assert ref_size == sum(x.size for x in params0.values())

  skey = jax.random.fold_in(r.key, 0)
  traj, _ = rl_loop._collect(ctx, rt.policy, 0, skey)
  rewards = np.arange(len(traj.lengths), dtype=np.float64)  # distinct: non-zero advantages
  batch, _, _, _ = rl_loop._train_batch(ctx, rt, traj, rewards, skey)
  policy, _ = rl_loop._policy_updates(ctx, rt.policy, batch)

  for k, v in _flat(policy.state.rest).items():  # every base weight, bit for bit
    np.testing.assert_array_equal(v, rest0[k], err_msg=jax.tree_util.keystr(k))
  changed = [not np.array_equal(v, params0[k]) for k, v in _flat(policy.state.params).items()]
  assert any(changed)

  # The reference log-probs are the base model's (built without adapters), before and after
  # the update; the updated policy's are not.
  plain_section = copy.deepcopy(config.model)
  plain_section.lora = None
  plain, _ = setup.load_policy(plain_section, config.seed)
  cfg = ctx.method_cfg
  base = score_all(lambda b: ctx.method.logprob_fn(plain, b, cfg), jax.tree.map(np.asarray, batch))
  base = np.asarray(base)
  np.testing.assert_allclose(batch["ref_logp"], base, rtol=1e-5, atol=1e-6)
  after_ref = policy.scores(batch, params=policy.ref_params)
  np.testing.assert_allclose(after_ref, base, rtol=1e-5, atol=1e-6)
  assert np.abs(policy.scores(batch) - base).max() > 1e-4


def test_lora_run_resumes_exactly(tmp_path):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  rl_loop.run(_config(steps=2), straight)
  rl_loop.run(_config(steps=1), resumed)
  rl_loop.run(_config(steps=2), resumed)  # restores the LoRA state of step 1
  for a, b in zip(policy_leaves(straight, 2), policy_leaves(resumed, 2)):
    np.testing.assert_array_equal(a, b)
