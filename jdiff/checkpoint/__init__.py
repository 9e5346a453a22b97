"""HF checkpoint import/export and jdiff model checkpoints."""

from jdiff.checkpoint.hf_io import (
    export_hf,
    from_pretrained,
    import_hf,
    is_jdiff_checkpoint,
    load_tokenizer,
    save_jdiff,
)
from jdiff.checkpoint.safetensors_io import CheckpointError, CheckpointReader, write_checkpoint

__all__ = [
    "CheckpointError",
    "CheckpointReader",
    "export_hf",
    "from_pretrained",
    "import_hf",
    "is_jdiff_checkpoint",
    "load_tokenizer",
    "save_jdiff",
    "write_checkpoint",
]
