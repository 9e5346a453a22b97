"""Log-probs of chosen targets: re-exported from :mod:`jdiff.models.logprobs`, the one
implementation that RL and SFT share (kept here so ``jdiff.rl.logprobs`` imports still work)."""

from jdiff.models.logprobs import (
    DEFAULT_CHUNK,
    model_token_logprobs,
    predicting_hidden,
    shift_for_dream,
    token_logprobs,
    token_logprobs_chunked,
)

__all__ = [
    "DEFAULT_CHUNK",
    "model_token_logprobs",
    "predicting_hidden",
    "shift_for_dream",
    "token_logprobs",
    "token_logprobs_chunked",
]
