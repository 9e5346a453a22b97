"""config.task.length_penalty / reward_text reach the rollout rewards; method.std_normalize is
rejected (it did nothing: only config.rl.std_normalize is read)."""

import types

import jax
import numpy as np
import pytest

from config_utils import load_config
from jdiff.rewards import register_reward, unregister_reward
from jdiff.rl.diffu_grpo import DiffuGRPOConfig
from jdiff.sampling.common import Trajectory
from jdiff.train import rl_loop
from jdiff.train.config import RunConfig

PAD, EOS = 0, 0  # pad == EOS, as in the SDAR / LLaDA tokenizers


class _Tok:
  """Token t decodes to "t<t>"; the pad / EOS id is special (skipped)."""

  def decode(self, ids, skip_special_tokens=False):
    return " ".join(f"t{t}" for t in ids if not (skip_special_tokens and t == PAD))


def _traj():
  # Row 0 stops at its EOS (length 3); the sampler decoded tokens 7, 8 after it in the canvas.
  # Row 1 runs to the full width G = 6 (length 6).
  tokens = np.array([[5, 6, EOS, PAD, PAD, PAD], [1, 2, 3, 4, 5, 6]], np.int32)
  raw = np.array([[5, 6, EOS, 7, 8, PAD], [1, 2, 3, 4, 5, 6]], np.int32)
  z = np.zeros((2, 6), np.int32)
  return Trajectory(
      prompt_ids=np.ones((2, 2), np.int32),
      prompt_mask=np.ones((2, 2), bool),
      tokens=tokens,
      step_map=z,
      logprobs=z.astype(np.float32),
      lengths=np.array([3, 6], np.int32),
      num_steps=np.ones(2, np.int32),
      raw_tokens=raw,
  )


@pytest.fixture
def seen():
  """A registered reward that records what it was called with and returns 1.0 each."""
  calls = []

  def spy(completions, answer, response_length=None, max_tokens=None):
    calls.append(
        dict(texts=list(completions), response_length=response_length, max_tokens=max_tokens)
    )
    return [1.0] * len(completions)

  register_reward("_spy_reward", spy, overwrite=True)
  yield calls
  unregister_reward("_spy_reward")


def _ctx(monkeypatch, **task):
  traj = _traj()
  monkeypatch.setattr(rl_loop, "rollout", lambda *a, **k: (traj, np.arange(2)))
  train = types.SimpleNamespace(batch=lambda start, n: [0], ids=[[9, 9]], rows=[{"answer": "1"}])
  run = types.SimpleNamespace(
      train=types.SimpleNamespace(require=lambda split: train),
      tokenizer=_Tok(),
      mesh=None,
      sampler=("block", types.SimpleNamespace(gen_length=10)),
      model=types.SimpleNamespace(config=types.SimpleNamespace(pad_token_id=PAD)),
      task=types.SimpleNamespace(reward="_spy_reward", columns=("answer",)),
  )
  task_section = dict(reward="_spy_reward", **task)
  config = types.SimpleNamespace(task=task_section, data=types.SimpleNamespace(max_prompt_len=2))
  rc = types.SimpleNamespace(group_size=2, prompts_per_step=1, rollout_batch=0)
  return types.SimpleNamespace(run=run, rc=rc, config=config)


def _collect(ctx, *args):
  """rl_loop._collect with the stubbed rollout (a policy stub and step 0's key)."""
  policy = types.SimpleNamespace(sampling_model=lambda: None)
  return rl_loop._collect(ctx, policy, 0, jax.random.key(0))


def test_length_penalty_passes_lengths_and_gen_length(monkeypatch, seen):
  _collect(_ctx(monkeypatch, length_penalty=True))
  assert seen[0]["response_length"] == [3, 6] and seen[0]["max_tokens"] == 10


def test_length_penalty_off_passes_nothing(monkeypatch, seen):
  _collect(_ctx(monkeypatch))
  assert seen[0]["response_length"] is None and seen[0]["max_tokens"] is None


def test_length_penalty_zeroes_a_capped_math_answer(monkeypatch):
  """End to end with the math reward: both answers are right, the one that ran to the cap
  scores 0 with the switch on (TraceRL: length >= max_tokens - 5 = 5: row 1, 6 tokens)."""
  from jdiff.rewards.math import math_reward

  ctx = _ctx(monkeypatch, length_penalty=True)
  ctx.run.tokenizer = types.SimpleNamespace(
      decode=lambda ids, skip_special_tokens=False: "\\boxed{1}"
  )
  ctx.config.task["reward"] = math_reward
  _, rewards = _collect(ctx)
  np.testing.assert_array_equal(rewards, [1.0, 0.0])
  ctx.config.task["length_penalty"] = False
  _, rewards = _collect(ctx)
  np.testing.assert_array_equal(rewards, [1.0, 1.0])


def test_reward_text_to_eos_and_whole(monkeypatch, seen):
  _collect(_ctx(monkeypatch))
  _collect(_ctx(monkeypatch, reward_text="whole"))
  # to_eos: the text up to the stop (the EOS is special, skipped in both).
  assert seen[0]["texts"] == ["t5 t6", "t1 t2 t3 t4 t5 t6"]
  # whole: the canvas as decoded, incl. what followed the stop.
  assert seen[1]["texts"] == ["t5 t6 t7 t8", "t1 t2 t3 t4 t5 t6"]


def test_config_validates_the_switches():
  c = load_config("tracerl")
  c.task.reward_text = "all"
  with pytest.raises(ValueError, match=r"config\.task\.reward_text"):
    RunConfig.from_config(c)
  c = load_config("diffu_grpo")  # gsm8k's rewards have no length penalty
  c.task.length_penalty = True
  with pytest.raises(ValueError, match=r"config\.task\.length_penalty"):
    RunConfig.from_config(c)


def test_method_std_normalize_is_rejected():
  assert "std_normalize" not in DiffuGRPOConfig.__dataclass_fields__
  c = load_config("diffu_grpo")
  c.method.std_normalize = False
  with pytest.raises(ValueError, match=r"config\.method\.std_normalize.*config\.rl\.std_normalize"):
    RunConfig.from_config(c)


@pytest.mark.parametrize(
    "name, whole, penalty",
    [
        ("d1_llada8b_gsm8k", "whole", False),
        ("cj_grpo_llada8b_countdown", "whole", False),
        ("tracerl_trado4b_math", "to_eos", True),
        ("tracerl_trado8b_math", "to_eos", True),
    ],
)
def test_recipes_carry_the_reference_values(name, whole, penalty):
  task = load_config(name).task
  assert task.reward_text == whole and task.length_penalty == penalty
