"""Jit-compiled diffusion samplers that record the decoding trajectory RL trains on.

- :mod:`jdiff.sampling.block`: SDAR/TraDo block diffusion with a KV cache;
- :mod:`jdiff.sampling.llada`: LLaDA semi-AR low-confidence remasking, EOSER, ASS, CFG;
- :mod:`jdiff.sampling.fast_dllm`: Fast-dLLM prefix / dual cache and threshold decoding;
- :mod:`jdiff.sampling.dream`: Dream's origin / maskgit_plus / topk_margin / entropy;
- :mod:`jdiff.sampling.registry`: the samplers by name (what configs pick).
"""

from jdiff.sampling.common import (
    Trajectory,
    filter_logits,
    gumbel_argmax,
    left_pad,
    sample_categorical,
    select_top_n,
    token_logprob,
    transfer_schedule,
)

__all__ = [
    "Trajectory",
    "filter_logits",
    "gumbel_argmax",
    "left_pad",
    "sample_categorical",
    "select_top_n",
    "token_logprob",
    "transfer_schedule",
]
