"""Trajectory consistency of full-attention TraceRL with the real samplers (LLaDA, Dream).

A left-padded batch (prompts of different lengths) is sampled at temperature 1; the TraceRL
rows (``shrink=1``: one row per decoding step) must rebuild exactly the states the sampler
saw, so ``tracerl.logprob_fn`` at every supervised position equals the log-prob the sampler
recorded for that token, and every kept completion token is supervised exactly once.

Positions: the rows count real tokens (``cumsum``), as both samplers do by default. LLaDA's
``padding_blind_positions`` shifts a left-padded row's real tokens by its pad count; with
RoPE and pad keys masked that is a uniform shift, so the log-probs agree as well (checked).
Dream's sampler gives pads position 1 instead of 0: pads are never attended to and their
outputs are never read (Dream's shift reads the last real prompt token for the first
completion slot), so that difference is invisible too.
"""

import json

import jax
import numpy as np
import pytest

import hf_fixtures
import jdiff
from jdiff.rl import tracerl
from jdiff.sampling import dream as dream_sampler
from jdiff.sampling import llada as llada_sampler

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15, 16, 17, 18]]
GEN = 16


def _left_padded(pad_id):
  p = max(len(q) for q in PROMPTS)
  ids = np.full((len(PROMPTS), p), pad_id, np.int32)
  mask = np.zeros((len(PROMPTS), p), bool)
  for b, q in enumerate(PROMPTS):
    ids[b, p - len(q) :] = q
    mask[b, p - len(q) :] = True
  return ids, mask


def _check_rows_reproduce_sampler(model, traj, max_steps):
  traj = jax.device_get(traj)
  nb, g = np.shape(traj.tokens)
  adv = np.linspace(-1.0, 1.0, nb).astype(np.float32)
  # post_num=1: the stop token is supervised too, so every kept token is covered once.
  cfg = tracerl.TraceRLConfig(shrink=1, max_steps=max_steps, post_num=1)
  batch = tracerl.build_batch(traj, adv, None, cfg, model.config)
  assert batch["input_ids"].shape[0] == nb * max_steps
  logp = np.asarray(jax.jit(lambda b: tracerl.logprob_fn(model, b, cfg))(batch))
  lengths = np.asarray(traj.lengths)
  kept = np.arange(g)[None] < lengths[:, None]
  step_map = np.asarray(traj.step_map)
  covered = np.zeros((nb, g), int)
  for r in range(batch["input_ids"].shape[0]):
    b = int(batch["response_index"][r])
    sel = batch["loss_mask"][r, -g:]
    covered[b] += sel
    if sel.any():
      # shrink=1: each row supervises the tokens of a single decoding step.
      assert len(np.unique(step_map[b][sel])) == 1
      np.testing.assert_array_equal(batch["targets"][r, -g:][sel], np.asarray(traj.tokens)[b][sel])
      np.testing.assert_allclose(
          logp[r, -g:][sel],
          np.asarray(traj.logprobs)[b][sel],
          rtol=2e-5,
          atol=1e-5,
          err_msg=f"row {r} (response {b})",
      )
      np.testing.assert_allclose(batch["advantages"][r, -g:][sel], adv[b])
  np.testing.assert_array_equal(covered, kept.astype(int))
  assert kept.sum() > nb  # the check is not vacuous
  return batch


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("llada_consistency"))
  hf_fixtures.make_llada(d, seed=5)
  return jdiff.from_pretrained(d)


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("dream_consistency"))
  hf_fixtures.make_dream(d, seed=6)
  return jdiff.from_pretrained(d)


@pytest.mark.parametrize("padding_blind", [False, True])
def test_llada_sampler_rows_reproduce_logprobs(llada, padding_blind):
  c = llada.config
  ids, mask = _left_padded(c.pad_token_id)
  cfg = llada_sampler.LLaDASamplerConfig(
      gen_length=GEN,
      block_length=8,
      steps=GEN,
      temperature=1.0,
      padding_blind_positions=padding_blind,
  )
  traj = llada_sampler.sample(llada, ids, mask, jax.random.key(7), cfg)
  # steps == gen_length: every step commits exactly one token in every row.
  np.testing.assert_array_equal(
      np.sort(np.asarray(traj.raw_step_map), -1), np.tile(np.arange(1, GEN + 1), (len(PROMPTS), 1))
  )
  _check_rows_reproduce_sampler(llada, traj, max_steps=GEN)


def _most_common_token(traj):
  return int(np.bincount(np.asarray(traj.raw_tokens).ravel()).argmax())


def _reload_with_eos(make, seed, directory, eos):
  """The fixture's weights under a config whose EOS is ``eos`` (pad unchanged)."""
  make(str(directory), seed=seed)
  with open(directory / "config.json") as f:
    config = json.load(f)
  config.update(eos_token_id=eos)
  with open(directory / "config.json", "w") as f:
    json.dump(config, f)
  model = jdiff.from_pretrained(str(directory))
  assert model.config.eos_token_id == eos
  return model


def test_llada_sampler_rows_reproduce_logprobs_with_stop(llada, tmp_path):
  """Responses that stop early: tokens after the EOS were decoded (and seen by the later
  steps) but are not kept; the rows must still show them as the sampler did."""
  ids, mask = _left_padded(llada.config.pad_token_id)
  cfg = llada_sampler.LLaDASamplerConfig(gen_length=GEN, block_length=8, steps=GEN, temperature=1.0)
  traj = llada_sampler.sample(llada, ids, mask, jax.random.key(7), cfg)
  # Make a token the random model proposes often the EOS, so that some responses stop.
  stop_model = _reload_with_eos(hf_fixtures.make_llada, 5, tmp_path, _most_common_token(traj))
  traj = llada_sampler.sample(stop_model, ids, mask, jax.random.key(7), cfg)
  assert np.asarray(traj.lengths).min() < GEN
  _check_rows_reproduce_sampler(stop_model, traj, max_steps=GEN)


def test_dream_sampler_rows_reproduce_logprobs_with_stop(dream, tmp_path):
  """Dream with blocks stops a row after the block holding its stop token: the later blocks
  are never decoded (raw step 0) and stay masked in every row, as in the sampler."""
  ids, mask = _left_padded(dream.config.pad_token_id)
  cfg = dream_sampler.DreamSamplerConfig(
      gen_length=GEN, steps=GEN, temperature=1.0, alg="maskgit_plus", block_length=4
  )
  traj = dream_sampler.sample(dream, ids, mask, jax.random.key(11), cfg)
  stop_model = _reload_with_eos(hf_fixtures.make_dream, 6, tmp_path, _most_common_token(traj))
  traj = jax.device_get(dream_sampler.sample(stop_model, ids, mask, jax.random.key(11), cfg))
  assert (np.asarray(traj.raw_step_map) == 0).any()  # some blocks were never decoded
  assert np.asarray(traj.lengths).min() < GEN
  _check_rows_reproduce_sampler(stop_model, traj, max_steps=GEN)


@pytest.mark.parametrize(
    "block_length,alg", [(None, "maskgit_plus"), (8, "maskgit_plus"), (None, "origin")]
)
def test_dream_sampler_rows_reproduce_logprobs(dream, block_length, alg):
  c = dream.config
  assert c.shift_logits
  ids, mask = _left_padded(c.pad_token_id)
  cfg = dream_sampler.DreamSamplerConfig(
      gen_length=GEN, steps=GEN, temperature=1.0, alg=alg, block_length=block_length
  )
  traj = dream_sampler.sample(dream, ids, mask, jax.random.key(11), cfg)
  _check_rows_reproduce_sampler(dream, traj, max_steps=GEN)
