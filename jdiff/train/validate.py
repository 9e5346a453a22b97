"""Whole-config validation before anything is loaded: ``validate_config(config)``.

The schema and every check live in :mod:`jdiff.train.config` (``RunConfig.from_config``); this
module keeps the public name where callers import it from.
"""

from jdiff.train.config import RunConfig, mesh_shape, validate_config

__all__ = ["RunConfig", "mesh_shape", "validate_config"]
