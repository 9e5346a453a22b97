"""Logical-axis sharding: one rules table, a mesh builder and helpers to shard a model."""

from jdiff.sharding.mesh import make_mesh, shard_model, shard_state, state_shardings
from jdiff.sharding.rules import (
    MESH_AXES,
    SAMPLING_RULES,
    TRAIN_RULES,
    active_rules,
    constrain,
    logical_spec,
    use_rules,
)

__all__ = [
    "MESH_AXES",
    "SAMPLING_RULES",
    "TRAIN_RULES",
    "active_rules",
    "constrain",
    "logical_spec",
    "make_mesh",
    "shard_model",
    "shard_state",
    "state_shardings",
    "use_rules",
]
