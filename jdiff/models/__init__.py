"""The three dLLM families on one backbone: config, masks, KV cache and the NNX modules."""

from jdiff.models import masks
from jdiff.models.config import FAMILIES, PRESETS, ModelConfig, preset
from jdiff.models.kv_cache import KVCache
from jdiff.models.transformer import Backbone, DiffusionLM, ValueModel

__all__ = [
    "FAMILIES",
    "PRESETS",
    "Backbone",
    "DiffusionLM",
    "KVCache",
    "ModelConfig",
    "ValueModel",
    "masks",
    "preset",
]
