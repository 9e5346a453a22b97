"""jdiff logits vs transformers' Llama (LLaDA), Qwen2 (Dream) and Qwen3 (SDAR), float32.

The torch models are the stock transformers classes that share each family's layout; the
attention pattern is passed to them as an explicit additive 4D mask (docs/formats.md
§B5). All comparisons use one input shape ``[3, 16]`` so each model compiles once.
"""

import numpy as np
import pytest

import hf_fixtures
import jdiff
from jdiff.models import masks

B, L = 3, 16
TOL = 1e-4
PADS = (0, 3, 6)  # left padding per row for the padded batch


def _ids(seed=0, length=L, with_masks=True):
  rng = np.random.RandomState(seed)
  ids = rng.randint(4, hf_fixtures.MASK_ID, size=(B, length))
  if with_masks:
    ids[rng.rand(B, length) < 0.3] = hf_fixtures.MASK_ID
  return ids.astype(np.int32)


def _arange_positions(length=L):
  return np.broadcast_to(np.arange(length, dtype=np.int32), (B, length)).copy()


def _compare(ckpt, model, ids, mask, positions, rows=None, *, name, record, jdiff_mask="same"):
  """Max |jdiff - torch| over the query rows ``rows`` (bool [B, L]); asserts <= TOL."""
  mask = np.array(mask, bool)  # a writable copy for torch
  ours = np.asarray(
      jdiff.forward(
          model,
          ids,
          attention_mask=mask if jdiff_mask == "same" else jdiff_mask,
          positions=positions,
      )
  )
  ref = hf_fixtures.torch_logits(ckpt.torch_model, ids, mask, positions)
  assert ours.dtype == np.float32 and ours.shape == ref.shape == (*ids.shape, hf_fixtures.VOCAB)
  if rows is None:
    rows = np.ones(ids.shape, bool)
  assert np.all(np.isfinite(ours[rows]))
  diff = float(np.max(np.abs(ours[rows] - ref[rows])))
  record(f"{ckpt.family}/{name}", diff)
  assert diff <= TOL, f"{ckpt.family} {name}: max abs logit diff {diff:.3e} > {TOL}"
  return ours, ref


@pytest.fixture
def ckpt_model(hf_dir, jdiff_models):
  return hf_dir, jdiff_models(hf_dir)


def test_bidirectional(ckpt_model, record_diff):
  ckpt, model = ckpt_model
  assert model.config.num_heads == 4 and model.config.num_kv_heads == 2  # GQA fixture
  mask = np.ones((B, L, L), bool)
  _compare(
      ckpt, model, _ids(0), mask, _arange_positions(), name="bidirectional", record=record_diff
  )


@pytest.mark.parametrize("block_size", [2, 4, 8])
def test_block_causal(ckpt_model, block_size, record_diff):
  ckpt, model = ckpt_model
  pos = _arange_positions()
  mask = np.asarray(masks.block_causal(pos, block_size))
  ours, _ = _compare(
      ckpt, model, _ids(1), mask, pos, name=f"block_causal_{block_size}", record=record_diff
  )
  # The mask must matter: block-causal logits differ from bidirectional ones.
  bidir = np.asarray(jdiff.forward(model, _ids(1), attention_mask=np.ones((B, L, L), bool)))
  assert np.abs(ours[:, :block_size] - bidir[:, :block_size]).max() > 1e-3


@pytest.mark.parametrize("block_size", [2, 4])
def test_xt_x0_layout(ckpt_model, block_size, record_diff):
  ckpt, model = ckpt_model
  n = L // 2
  rng = np.random.RandomState(2)
  x0 = rng.randint(4, hf_fixtures.MASK_ID, size=(B, n)).astype(np.int32)
  xt = np.where(rng.rand(B, n) < 0.5, hf_fixtures.MASK_ID, x0).astype(np.int32)
  ids = np.concatenate([xt, x0], axis=1)
  pos_n = _arange_positions(n)
  positions = np.concatenate([pos_n, pos_n], axis=1)
  mask = np.asarray(masks.xt_x0(pos_n, block_size))
  assert mask.shape == (B, 2 * n, 2 * n)
  _compare(ckpt, model, ids, mask, positions, name=f"xt_x0_{block_size}", record=record_diff)


def _padded_batch():
  ids = _ids(3)
  valid = np.arange(L)[None, :] >= np.asarray(PADS)[:, None]
  ids = np.where(valid, ids, hf_fixtures.EOS_ID).astype(np.int32)
  return ids, valid


def test_left_padding(ckpt_model, record_diff):
  ckpt, model = ckpt_model
  ids, valid = _padded_batch()
  if ckpt.family == "llada":  # LLaDA's RoPE is padding-blind: positions are arange(L)
    positions = _arange_positions()
  else:  # Dream's generate: tok_idx = cumsum(mask) - 1 with pads set to 1
    positions = np.cumsum(valid, axis=1) - 1
    positions = np.where(valid, positions, 1 if ckpt.family == "dream" else 0).astype(np.int32)
  if ckpt.family == "sdar":
    mask = np.asarray(masks.block_causal(positions, 4, valid))
  else:
    mask = np.asarray(masks.bidirectional(valid))
  # Key padding is enforced: no valid query attends to a pad key.
  assert not np.any(mask & valid[:, :, None] & ~valid[:, None, :])
  ours, _ = _compare(
      ckpt, model, ids, mask, positions, rows=valid, name="left_padding", record=record_diff
  )
  # The [B, L] key-padding form of attention_mask gives the same logits.
  ours2 = np.asarray(jdiff.forward(model, ids, attention_mask=valid, positions=positions))
  np.testing.assert_allclose(ours2[valid], ours[valid], rtol=1e-6, atol=1e-6)


def test_mha_variant(family, hf_checkpoints, jdiff_models, record_diff):
  ckpt = hf_checkpoints(family, num_key_value_heads=4)
  model = jdiff_models(ckpt)
  assert model.config.num_kv_heads == model.config.num_heads == 4
  pos = _arange_positions()
  _compare(
      ckpt,
      model,
      _ids(4),
      np.ones((B, L, L), bool),
      pos,
      name="mha_bidirectional",
      record=record_diff,
  )
  _compare(
      ckpt,
      model,
      _ids(5),
      np.asarray(masks.block_causal(pos, 4)),
      pos,
      name="mha_block_causal_4",
      record=record_diff,
  )


def test_native_pattern_when_mask_is_none(ckpt_model, record_diff):
  ckpt, model = ckpt_model
  ids, pos = _ids(6), _arange_positions()
  if ckpt.family == "sdar":
    assert model.config.block_size == 4
    native = np.asarray(masks.block_causal(pos, 4))
  else:
    assert model.config.block_size is None
    native = np.ones((B, L, L), bool)
  ours, ref = _compare(
      ckpt, model, ids, native, pos, name="native(mask=None)", record=record_diff, jdiff_mask=None
  )
  other = (
      np.ones((B, L, L), bool) if ckpt.family == "sdar" else np.array(masks.block_causal(pos, 4))
  )
  ref_other = hf_fixtures.torch_logits(ckpt.torch_model, ids, other, pos)
  assert np.abs(ours - ref_other).max() > 1e-3  # the other pattern would not match


def test_dream_logits_are_raw_not_shifted(ckpt_model, record_diff):
  ckpt, model = ckpt_model
  assert model.config.shift_logits == (ckpt.family == "dream")
  if ckpt.family != "dream":
    return
  ids, pos = _ids(7), _arange_positions()
  ours, ref = _compare(
      ckpt, model, ids, np.ones((B, L, L), bool), pos, name="raw_logits", record=record_diff
  )
  # A shift by one position (either way) would not match HF's raw logits.
  assert np.abs(ours[:, 1:] - ref[:, :-1]).max() > 1e-2
  assert np.abs(ours[:, :-1] - ref[:, 1:]).max() > 1e-2
