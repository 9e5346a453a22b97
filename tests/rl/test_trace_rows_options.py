"""TraceRL's post_num (pads kept in the loss) and L1 (the block rows' normaliser) switches."""

import types

import numpy as np
import pytest

from jdiff.rl.tracerl import TraceRLConfig, build_batch
from jdiff.sampling.common import Trajectory

PAD, MASK, IM_END = 0, 1, 9  # pad == EOS (0); IM_END: a stop token that is not the pad


def _traj():
  """Three responses of width G = 8 (two blocks of 4), one token per step.

  0: "3 4 <eos>" (stops at the pad/EOS, length 3); 1: six tokens, the last IM_END (length 6);
  2: "5 <eos>" (length 2)."""
  tokens = np.array(
      [
          [3, 4, PAD, PAD, PAD, PAD, PAD, PAD],
          [3, 4, 5, 6, 7, IM_END, PAD, PAD],
          [5, PAD, PAD, PAD, PAD, PAD, PAD, PAD],
      ],
      np.int32,
  )
  lengths = np.array([3, 6, 2], np.int32)
  steps = np.where(np.arange(8) < lengths[:, None], np.arange(1, 9), 0).astype(np.int32)
  z = np.zeros((3, 8), np.float32)
  return Trajectory(
      prompt_ids=np.full((3, 4), 2, np.int32),
      prompt_mask=np.ones((3, 4), bool),
      tokens=tokens,
      step_map=steps,
      logprobs=z,
      lengths=lengths,
      num_steps=lengths.copy(),
  )


def _model_config(block_causal: bool):
  return types.SimpleNamespace(
      block_causal=block_causal, block_size=4, mask_token_id=MASK, pad_token_id=PAD
  )


def _supervised(rows, n_resp: int, g: int):
  """Per response, the response positions supervised in any row (each at most once)."""
  out = np.zeros((n_resp, g), int)
  for r in range(rows["loss_mask"].shape[0]):
    out[rows["response_index"][r]] += rows["loss_mask"][r, -g:]
  return out


@pytest.mark.parametrize("block_causal", [True, False])
def test_post_num_zero_drops_the_pad_stop_only(block_causal):
  traj, adv = _traj(), np.ones(3, np.float32)
  mc = _model_config(block_causal)
  keep = _supervised(build_batch(traj, adv, None, TraceRLConfig(post_num=1, shrink=1), mc), 3, 8)
  drop = _supervised(build_batch(traj, adv, None, TraceRLConfig(post_num=0, shrink=1), mc), 3, 8)
  kept = np.arange(8) < traj.lengths[:, None]
  np.testing.assert_array_equal(keep, kept.astype(int))  # the stop token is trained
  expected = kept.copy()
  expected[0, 2] = expected[2, 1] = False  # the pad/EOS stops leave the loss
  np.testing.assert_array_equal(drop, expected.astype(int))  # IM_END (not a pad) stays
  assert TraceRLConfig().post_num == 0  # the reference's default


def test_l1_longest_is_the_steps_longest_response():
  traj, adv = _traj(), np.ones(3, np.float32)
  mc = _model_config(True)
  rows = build_batch(traj, adv, None, TraceRLConfig(l1="gen_length"), mc)
  np.testing.assert_array_equal(rows["row_norm"], 8.0)  # the canvas width G
  rows = build_batch(traj, adv, None, TraceRLConfig(l1="longest"), mc)
  np.testing.assert_array_equal(rows["row_norm"], 6.0)  # max(lengths) = 6
  full = traj.replace(lengths=np.array([8, 8, 8], np.int32))
  rows = build_batch(full, adv, None, TraceRLConfig(l1="longest"), mc)
  np.testing.assert_array_equal(rows["row_norm"], 8.0)  # capped at the generation length


@pytest.mark.parametrize("bad", [dict(post_num=2), dict(post_num=-1), dict(l1="max")])
def test_bad_values_name_the_key(bad):
  with pytest.raises(ValueError, match=r"config\.method\." + next(iter(bad))):
    TraceRLConfig(**bad)
