"""PyTorch eager reference samplers for ``benchmarks/sampler.py`` (greedy decoding only).

Each function runs a stock transformers model (``Qwen3ForCausalLM`` for SDAR,
``LlamaForCausalLM`` for LLaDA) loaded from a checkpoint that jdiff *exported*
(:func:`load_exported`), step by step in eager mode, the way the original Python reference
code does it. They are written for one batch of prompts that all have the same length
(no padding), so every row sits at the same positions and the batch moves in lockstep.

Greedy rules shared with jdiff: the mask token's logit is set to -inf before the argmax and
the confidence (softmax at temperature 1 of the remaining logits, evaluated at the argmax);
top-n selection breaks confidence ties towards the leftmost position.

- :func:`sdar_block_generate`: the SDAR HF ``generate.py`` block-diffusion loop with a
  transformers ``DynamicCache``: block-causal prefill of the whole-block part of the prompt,
  then per block up to S denoising forwards of the block's L tokens against the cache (float
  additive 4D mask; the window's K/V are appended by the forward and cropped off again, i.e.
  ``store_kv=False``), and one final forward of the clean block that keeps its K/V
  (``store_kv=True``). Unmasking rule ``low_confidence_dynamic`` (every mask with confidence
  > threshold if at least n_k qualify, else the top n_k) or ``low_confidence_static``.
- :func:`llada_generate`: LLaDA's semi-autoregressive low-confidence remasking: every step is
  a full bidirectional forward over ``[prompt | completion]``; logits are only projected for
  the current block (the rest of LLaDA's full-canvas logits are never used).
- :func:`dream_generate`: Dream's ``diffusion_generate`` with ``alg='maskgit_plus'``: full
  canvas forward each step, logits shifted right by one, MaskGIT linear schedule.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

NEG = torch.finfo(torch.float32).min


# --------------------------------------------------------------------------- loading
# The exported directory is loaded by transformers' own classes (shared with the tests).
from hf_fixtures import load_exported  # noqa: E402,F401  (re-exported for sampler.py)


# --------------------------------------------------------------------------- shared pieces
def transfer_schedule(num_masked: int, steps: int) -> list:
  """Even split of ``num_masked`` over ``steps``, the remainder going to the early steps."""
  base, rem = divmod(num_masked, steps)
  return [base + 1 if i < rem else base for i in range(steps)]


def greedy_candidates(logits: torch.Tensor, mask_id: int):
  """(argmax ids, their temperature-1 probability) with the mask token excluded."""
  logits = logits.float().clone()
  logits[..., mask_id] = float("-inf")
  conf, ids = torch.softmax(logits, dim=-1).max(dim=-1)
  return ids, conf


def top_n(conf: torch.Tensor, eligible: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
  """Bool mask of the ``n`` (per row) most confident eligible positions, ties -> leftmost."""
  c = torch.where(eligible, conf, torch.full_like(conf, float("-inf")))
  order = torch.sort(c, dim=-1, descending=True, stable=True).indices
  ranks = torch.empty_like(order)
  ranks.scatter_(1, order, torch.arange(c.shape[1]).expand_as(order).contiguous())
  n = torch.minimum(n, eligible.sum(-1))
  return eligible & (ranks < n[:, None])


def _additive(visible: torch.Tensor) -> torch.Tensor:
  """Bool ``[B, Q, K]`` visibility -> float additive mask ``[B, 1, Q, K]``."""
  return torch.zeros(visible.shape, dtype=torch.float32).masked_fill(~visible, NEG)[:, None]


# --------------------------------------------------------------------------- SDAR block
@torch.no_grad()
def sdar_block_generate(
    model,
    prompt_ids,
    gen_length: int,
    block_length: int,
    steps_per_block: int,
    mask_id: int,
    strategy: str = "low_confidence_dynamic",
    threshold: float = 0.9,
):
  """Block diffusion with a DynamicCache (SDAR ``generate.py``), greedy. Returns
  ``(tokens [B, G] int64 numpy, [(query tokens, key length)] of every model forward)``.

  Blocks sit at absolute positions (multiples of L); the prompt's partial last block is
  decoded together with the first completion tokens. Positions past ``P + G`` in the last
  block are invisible as keys and never decoded. No stop token (all G tokens are generated).
  """
  ids = torch.as_tensor(np.asarray(prompt_ids), dtype=torch.long)
  b, p = ids.shape
  bl, total = block_length, p + gen_length
  size = -(-total // bl) * bl
  x = torch.full((b, size), mask_id, dtype=torch.long)
  x[:, :p] = ids
  cache = transformers.DynamicCache(config=model.config)
  sched = transfer_schedule(bl, steps_per_block)
  calls = []

  p0 = (p // bl) * bl  # prefill: the whole blocks of the prompt, block-causal
  if p0:
    pos = torch.arange(p0)
    vis = (pos[:, None] // bl >= pos[None, :] // bl).expand(b, p0, p0)
    model.model(
        input_ids=x[:, :p0],
        position_ids=pos.expand(b, p0),
        attention_mask=_additive(vis),
        past_key_values=cache,
        use_cache=True,
    )
    calls.append((p0, p0))

  for start in range(p0, total, bl):
    win_pos = torch.arange(start, start + bl)
    win_valid = win_pos < total
    decodable = win_valid & (win_pos >= p)
    # Keys: every cached (committed) position, plus the window's valid slots.
    keys = torch.cat([torch.ones(start, dtype=torch.bool), win_valid])
    mask = _additive(keys.expand(b, bl, start + bl))
    pos_ids = win_pos.expand(b, bl)
    for step in range(steps_per_block):
      win = x[:, start : start + bl]
      eligible = (win == mask_id) & decodable
      if not bool(eligible.any()):
        break
      logits = model(
          input_ids=win,
          position_ids=pos_ids,
          attention_mask=mask,
          past_key_values=cache,
          use_cache=True,
      ).logits
      cache.crop(-bl)  # store_kv=False: drop the window's K/V again
      calls.append((bl, start + bl))
      x0, conf = greedy_candidates(logits, mask_id)
      n = torch.full((b,), sched[step], dtype=torch.long)
      pick = top_n(conf, eligible, n)
      if strategy == "low_confidence_dynamic":
        above = eligible & (conf > threshold)
        enough = above.sum(-1) >= n
        pick = torch.where(enough[:, None], above, pick)
      elif strategy != "low_confidence_static":
        raise ValueError(f"unsupported strategy {strategy!r}")
      x[:, start : start + bl] = torch.where(pick, x0, win)
    # store_kv=True: the clean block's K/V go into the cache (hidden states are not needed).
    model.model(
        input_ids=x[:, start : start + bl],
        position_ids=pos_ids,
        attention_mask=mask,
        past_key_values=cache,
        use_cache=True,
    )
    calls.append((bl, start + bl))
  return x[:, p:total].numpy(), calls


# --------------------------------------------------------------------------- LLaDA
@torch.no_grad()
def llada_generate(model, prompt_ids, gen_length: int, block_length: int, steps: int, mask_id: int):
  """LLaDA ``generate`` (semi-AR, low-confidence remasking, temperature 0, no CFG). Returns
  ``(tokens [B, G] int64 numpy, number of model forwards)``."""
  ids = torch.as_tensor(np.asarray(prompt_ids), dtype=torch.long)
  b, p = ids.shape
  n = p + gen_length
  x = torch.cat([ids, torch.full((b, gen_length), mask_id, dtype=torch.long)], dim=1)
  pos = torch.arange(n).expand(b, n)
  mask = torch.zeros((b, 1, n, n), dtype=torch.float32)  # bidirectional, no padding
  num_blocks = gen_length // block_length
  per_block = steps // num_blocks
  forwards = 0
  for blk in range(num_blocks):
    bs, be = p + blk * block_length, p + (blk + 1) * block_length
    counts = transfer_schedule(int(block_length), per_block)  # every block starts all masks
    for i in range(per_block):
      h = model.model(input_ids=x, position_ids=pos, attention_mask=mask).last_hidden_state
      logits = model.lm_head(h[:, bs:be])  # only the block's logits are ever used
      forwards += 1
      x0, conf = greedy_candidates(logits, mask_id)
      win = x[:, bs:be]
      eligible = win == mask_id
      pick = top_n(conf, eligible, torch.full((b,), counts[i], dtype=torch.long))
      x[:, bs:be] = torch.where(pick, x0, win)
  return x[:, p:].numpy(), forwards


# --------------------------------------------------------------------------- Dream
@torch.no_grad()
def dream_generate(model, prompt_ids, gen_length: int, steps: int, mask_id: int, eps: float = 1e-3):
  """Dream ``diffusion_generate`` with ``alg='maskgit_plus'``, temperature 0, no blocks.
  Returns ``(tokens [B, G] int64 numpy, number of model forwards)``."""
  ids = torch.as_tensor(np.asarray(prompt_ids), dtype=torch.long)
  b, p = ids.shape
  n = p + gen_length
  x = torch.cat([ids, torch.full((b, gen_length), mask_id, dtype=torch.long)], dim=1)
  pos = torch.arange(n).expand(b, n)
  mask = torch.zeros((b, 1, n, n), dtype=torch.float32)
  ts = np.linspace(1.0, eps, steps + 1).astype(np.float32)
  forwards = 0
  for i in range(steps):
    h = model.model(input_ids=x, position_ids=pos, attention_mask=mask).last_hidden_state
    logits = model.lm_head(h[:, p - 1 : n - 1])  # shifted: completion j reads output j-1
    forwards += 1
    x0, conf = greedy_candidates(logits, mask_id)
    win = x[:, p:]
    eligible = win == mask_id
    n_row = eligible.sum(-1)
    if i == steps - 1:
      count = n_row
    else:
      ratio = np.float32(1.0) - ts[i + 1] / ts[i]
      count = torch.floor(n_row.float() * float(ratio)).long()
    pick = top_n(conf, eligible, count)
    x[:, p:] = torch.where(pick, x0, win)
  return x[:, p:].numpy(), forwards
