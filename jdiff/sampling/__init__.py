"""Jit-compiled diffusion samplers that record the decoding trajectory RL trains on."""

from jdiff.sampling.common import (Trajectory, filter_logits, gumbel_argmax, left_pad,
                                   sample_categorical, select_top_n, token_logprob,
                                   transfer_schedule)

__all__ = ["Trajectory", "filter_logits", "gumbel_argmax", "left_pad", "sample_categorical",
           "select_top_n", "token_logprob", "transfer_schedule"]
