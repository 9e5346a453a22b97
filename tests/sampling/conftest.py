"""Fixtures the LLaDA sampler tests share (the exact sampler's and Fast-dLLM's)."""

import pytest

from jdiff.sampling import common

# Left-padded to 8 tokens: rows with 5, 3, 0 and 6 pads.
LLADA_PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27], [40, 41]]


@pytest.fixture(scope="module")
def llada_ckpt(hf_checkpoints):
  """The tiny LLaDA HF checkpoint (and its torch reference model)."""
  return hf_checkpoints("llada")


@pytest.fixture(scope="module")
def llada_model(llada_ckpt, jdiff_models):
  """The jdiff model loaded from :func:`llada_ckpt`."""
  return jdiff_models(llada_ckpt)


@pytest.fixture(scope="module")
def llada_prompts():
  """``(ids, mask)`` ``[4, 8]``: :data:`LLADA_PROMPTS` left-padded with pad id 1."""
  ids, mask, _ = common.left_pad(LLADA_PROMPTS, pad_id=1, length=8)
  return ids, mask
