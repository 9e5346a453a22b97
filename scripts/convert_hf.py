#!/usr/bin/env python
"""Convert between HF checkpoint directories and jdiff checkpoints.

  python scripts/convert_hf.py import HF_DIR OUT_DIR [--family sdar] [--param-dtype float32]
  python scripts/convert_hf.py export CKPT_DIR HF_DIR [--torch-dtype bfloat16]

Import streams one stacked parameter at a time (an 8B model is never held twice in
memory); export writes the family's original parameter names, config.json and the
tokenizer files, so the original tools load the result.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jdiff.checkpoint import CheckpointError, export_hf, import_hf  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  sub = p.add_subparsers(dest="cmd", required=True)
  imp = sub.add_parser("import", help="HF checkpoint dir -> jdiff checkpoint dir")
  imp.add_argument("src")
  imp.add_argument("dst")
  imp.add_argument(
      "--family",
      choices=["llada", "dream", "sdar"],
      default=None,
      help="needed only for stock llama/qwen2/qwen3 checkpoints (A2D)",
  )
  imp.add_argument(
      "--param-dtype",
      choices=["float32", "bfloat16", "float16"],
      default=None,
      help="dtype of the stored parameters (default: the checkpoint's own)",
  )
  imp.add_argument("--mask-token-id", type=int, default=None)
  imp.add_argument("--block-size", type=int, default=None)
  imp.add_argument("--max-shard-gb", type=float, default=5.0)
  exp = sub.add_parser("export", help="jdiff checkpoint dir -> HF checkpoint dir")
  exp.add_argument("src")
  exp.add_argument("dst")
  exp.add_argument(
      "--torch-dtype",
      choices=["float32", "bfloat16", "float16"],
      default=None,
      help="dtype written (default: the dtype the checkpoint was imported from)",
  )
  exp.add_argument("--max-shard-gb", type=float, default=5.0)
  args = p.parse_args(argv)
  shard = int(args.max_shard_gb * 2**30)
  try:
    if args.cmd == "import":
      overrides = {
          k: v
          for k, v in dict(mask_token_id=args.mask_token_id, block_size=args.block_size).items()
          if v is not None
      }
      cfg = import_hf(
          args.src,
          args.dst,
          family=args.family,
          param_dtype=args.param_dtype,
          max_shard_bytes=shard,
          **overrides,
      )
      print(
          f"imported {cfg.family} model ({cfg.num_params() / 1e6:.1f}M parameters, "
          f"{cfg.param_dtype}) into {args.dst}"
      )
    else:
      export_hf(args.src, args.dst, torch_dtype=args.torch_dtype, max_shard_bytes=shard)
      print(f"exported {args.src} to {args.dst}")
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
