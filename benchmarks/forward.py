#!/usr/bin/env python
"""Forward throughput: jdiff (JAX, jit) vs transformers (torch eager) on the same weights.

Prints tokens/s and achieved GFLOP/s for both, side by side in one run, at a tiny and a
small (~30M parameter) size, plus the machine's measured float32 matmul peak. Run:

  python benchmarks/forward.py [--batch 8] [--seq 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import hf_fixtures  # noqa: E402
import jdiff  # noqa: E402
from jdiff.models import masks  # noqa: E402

SIZES = {
    "tiny": dict(),
    "small": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=4096,
    ),
}


def _time(fn, repeats):
  fn()  # warm-up / compile
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def matmul_peak(n=2048, repeats=5):
  a = jnp.asarray(np.random.RandomState(0).randn(n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  t_jax = _time(lambda: f(a).block_until_ready(), repeats)
  ta = torch.randn(n, n)
  t_torch = _time(lambda: ta @ ta, repeats)
  flops = 2 * n**3
  return flops / t_jax / 1e9, flops / t_torch / 1e9


def bench_size(name, batch, seq, repeats, family="sdar"):
  with tempfile.TemporaryDirectory() as d:
    tm = hf_fixtures.MAKERS[family](d, **SIZES[name])
    tm.config._attn_implementation = "sdpa"
    model = jdiff.from_pretrained(d)
  cfg = model.config
  rng = np.random.RandomState(0)
  ids = rng.randint(0, cfg.vocab_size - 20, (batch, seq)).astype(np.int32)
  pos = np.broadcast_to(np.arange(seq), (batch, seq))
  mask = np.asarray(masks.native(cfg.block_size if cfg.block_causal else None, jnp.asarray(pos)))
  t_jdiff = _time(lambda: jdiff.forward(model, ids).block_until_ready(), repeats)
  tids = torch.as_tensor(ids, dtype=torch.long)
  additive = torch.zeros((batch, 1, seq, seq)).masked_fill(
      ~torch.as_tensor(mask)[:, None], torch.finfo(torch.float32).min
  )
  tpos = torch.as_tensor(pos, dtype=torch.long)

  def run_torch():
    with torch.no_grad():
      tm(input_ids=tids, attention_mask=additive, position_ids=tpos)

  t_torch = _time(run_torch, repeats)
  got = np.asarray(jdiff.forward(model, ids))
  with torch.no_grad():
    ref = tm(input_ids=tids, attention_mask=additive, position_ids=tpos).logits.numpy()
  flops = cfg.flops_per_token(seq) * batch * seq
  return dict(
      size=name,
      params=cfg.num_params(),
      tokens=batch * seq,
      jdiff_tok_s=batch * seq / t_jdiff,
      torch_tok_s=batch * seq / t_torch,
      jdiff_gflops=flops / t_jdiff / 1e9,
      torch_gflops=flops / t_torch / 1e9,
      max_abs_diff=float(np.abs(got - ref).max()),
  )


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  peak_jax, peak_torch = matmul_peak()
  print(f"devices: {jax.devices()}  torch threads: {torch.get_num_threads()}")
  print(f"float32 matmul peak (2048^3): jax {peak_jax:.1f} GFLOP/s, torch {peak_torch:.1f} GFLOP/s")
  print(f"batch {args.batch} x seq {args.seq}, sdar (Qwen3) layout, block-causal mask, float32")
  hdr = (
      f"{'size':6} {'params':>8} {'jdiff tok/s':>12} {'torch tok/s':>12} {'ratio':>6} "
      f"{'jdiff GF/s':>10} {'torch GF/s':>10} {'% peak':>7} {'max|dlogit|':>11}"
  )
  print(hdr)
  print("-" * len(hdr))
  for name in SIZES:
    r = bench_size(name, args.batch, args.seq, args.repeats)
    print(
        f"{r['size']:6} {r['params'] / 1e6:7.2f}M {r['jdiff_tok_s']:12.0f} {r['torch_tok_s']:12.0f} "
        f"{r['jdiff_tok_s'] / r['torch_tok_s']:6.2f} {r['jdiff_gflops']:10.1f} "
        f"{r['torch_gflops']:10.1f} {100 * r['jdiff_gflops'] / peak_jax:6.1f}% "
        f"{r['max_abs_diff']:11.2e}"
    )


if __name__ == "__main__":
  main()
