"""jdiff: JAX/TPU-native post-training of diffusion language models.

Public contract (see README): :func:`from_pretrained`, :func:`forward`, :func:`load_tokenizer`.
"""

from jdiff.api import forward, from_pretrained, load_tokenizer
from jdiff.models import DiffusionLM, KVCache, ModelConfig, ValueModel, masks, preset

__version__ = "0.1.0"
__all__ = [
    "DiffusionLM",
    "KVCache",
    "ModelConfig",
    "ValueModel",
    "forward",
    "from_pretrained",
    "load_tokenizer",
    "masks",
    "preset",
]
