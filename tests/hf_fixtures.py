"""Tiny random HF checkpoints in each family's on-disk format, plus their torch twins.

Each builder creates a stock transformers model (Llama / Qwen2 / Qwen3) with a tiny
random config, saves it as safetensors under the family's *original* names and config
(LLaDA keys renamed, Dream/SDAR model_type and mask ids set), and returns the torch model
to serve as the numerical reference.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers
from safetensors.torch import load_file, save_file

VOCAB = 160
MASK_ID = 150
EOS_ID = 1
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)

_LLAMA_TO_LLADA = [
    ("model.embed_tokens.weight", "model.transformer.wte.weight"),
    ("model.norm.weight", "model.transformer.ln_f.weight"),
    ("lm_head.weight", "model.transformer.ff_out.weight"),
    (".input_layernorm.", ".attn_norm."),
    (".self_attn.q_proj.", ".q_proj."),
    (".self_attn.k_proj.", ".k_proj."),
    (".self_attn.v_proj.", ".v_proj."),
    (".self_attn.o_proj.", ".attn_out."),
    (".post_attention_layernorm.", ".ff_norm."),
    (".mlp.gate_proj.", ".ff_proj."),
    (".mlp.up_proj.", ".up_proj."),
    (".mlp.down_proj.", ".ff_out."),
]


def llada_key(name: str) -> str:
  for a, b in _LLAMA_TO_LLADA:
    if name == a:
      return b
  name = name.replace("model.layers.", "model.transformer.blocks.")
  for a, b in _LLAMA_TO_LLADA[3:]:
    name = name.replace(a, b)
  return name


def _random_init(model, seed):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.08 * torch.randn(p.shape, generator=gen))
  return model.eval()


def _save(model, directory, rename=None, config_json=None):
  os.makedirs(directory, exist_ok=True)
  sd = {
      (rename(k) if rename else k): v.contiguous()
      for k, v in model.state_dict().items()
      if "rotary_emb" not in k
  }
  save_file(sd, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config_json, f, indent=2)


def make_llada(directory, seed=0, **overrides):
  kw = dict(TINY, rope_theta=500000.0, rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False)
  kw.update(overrides)
  cfg = transformers.LlamaConfig(**kw, attn_implementation="eager")
  model = _random_init(transformers.LlamaForCausalLM(cfg), seed)
  cj = {
      "model_type": "llada",
      "architectures": ["LLaDAModelLM"],
      "d_model": kw["hidden_size"],
      "n_heads": kw["num_attention_heads"],
      "n_kv_heads": kw["num_key_value_heads"],
      "n_layers": kw["num_hidden_layers"],
      "mlp_hidden_size": kw["intermediate_size"],
      "vocab_size": kw["vocab_size"],
      "embedding_size": kw["vocab_size"],
      "rope_theta": kw["rope_theta"],
      "rms_norm_eps": kw["rms_norm_eps"],
      "max_sequence_length": kw["max_position_embeddings"],
      "weight_tying": False,
      "include_bias": False,
      "include_qkv_bias": False,
      "activation_type": "silu",
      "mask_token_id": MASK_ID,
      "eos_token_id": EOS_ID,
      "pad_token_id": EOS_ID,
      "torch_dtype": "float32",
  }
  if kw["num_attention_heads"] * kw["head_dim"] != kw["hidden_size"]:
    raise ValueError("LLaDA derives head_dim from d_model / n_heads")
  _save(model, directory, llada_key, cj)
  return model


def make_dream(directory, seed=0, **overrides):
  kw = dict(TINY, rope_theta=1000000.0, rms_norm_eps=1e-6, use_sliding_window=False)
  kw.pop("head_dim")
  kw.update(overrides)
  cfg = transformers.Qwen2Config(**kw, attn_implementation="eager")
  model = _random_init(transformers.Qwen2ForCausalLM(cfg), seed)
  cj = cfg.to_dict()
  cj.update(
      model_type="Dream",
      architectures=["DreamModel"],
      mask_token_id=MASK_ID,
      eos_token_id=EOS_ID,
      pad_token_id=EOS_ID,
      torch_dtype="float32",
  )
  cj.pop("dtype", None)
  _save(model, directory, None, cj)
  return model


def make_sdar(directory, seed=0, block_size=4, **overrides):
  kw = dict(TINY, rope_theta=1000000.0, rms_norm_eps=1e-6, attention_bias=False)
  kw.update(overrides)
  cfg = transformers.Qwen3Config(**kw, attn_implementation="eager")
  model = _random_init(transformers.Qwen3ForCausalLM(cfg), seed)
  cj = cfg.to_dict()
  cj.update(
      model_type="sdar",
      architectures=["SDARForCausalLM"],
      mask_token_id=MASK_ID,
      eos_token_id=EOS_ID,
      pad_token_id=EOS_ID,
      block_size=block_size,
      torch_dtype="float32",
  )
  cj.pop("dtype", None)
  _save(model, directory, None, cj)
  return model


MAKERS = {"llada": make_llada, "dream": make_dream, "sdar": make_sdar}


def torch_logits(model, input_ids, mask_bool, positions) -> np.ndarray:
  """Reference logits with an explicit float additive 4D mask (eager attention)."""
  ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
  m = torch.as_tensor(np.asarray(mask_bool), dtype=torch.bool)[:, None]
  additive = torch.zeros(m.shape, dtype=torch.float32).masked_fill(
      ~m, torch.finfo(torch.float32).min
  )
  pos = torch.as_tensor(np.asarray(positions), dtype=torch.long)
  with torch.no_grad():
    out = model(input_ids=ids, attention_mask=additive, position_ids=pos)
  return out.logits.float().numpy()


def read_tensors(directory):
  """All tensors of an HF dir, read with the safetensors library (follows the index)."""
  index = os.path.join(directory, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  else:
    files = ["model.safetensors"]
  out = {}
  for name in files:
    out.update(load_file(os.path.join(directory, name)))
  return out


_QWEN_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "rms_norm_eps",
    "max_position_embeddings",
    "tie_word_embeddings",
    "hidden_act",
    "attention_bias",
    "use_sliding_window",
    "rope_parameters",
)


def load_exported(family: str, directory: str, attn_implementation: str = "sdpa"):
  """An HF directory written by ``jdiff.checkpoint.export_hf``, as a float32 transformers model.

  SDAR / Dream load through ``Qwen3ForCausalLM`` / ``Qwen2ForCausalLM``; LLaDA's original
  tensor names are mapped back to ``LlamaForCausalLM``'s (the inverse of the test fixture's
  renaming) and loaded with ``strict=True``.
  """
  with open(os.path.join(directory, "config.json")) as f:
    cj = json.load(f)
  if family == "llada":
    cfg = transformers.LlamaConfig(
        vocab_size=cj["vocab_size"],
        hidden_size=cj["d_model"],
        intermediate_size=cj["mlp_hidden_size"],
        num_hidden_layers=cj["n_layers"],
        num_attention_heads=cj["n_heads"],
        num_key_value_heads=cj["n_kv_heads"],
        head_dim=cj["d_model"] // cj["n_heads"],
        rope_theta=cj["rope_theta"],
        rms_norm_eps=cj["rms_norm_eps"],
        max_position_embeddings=cj["max_sequence_length"],
        tie_word_embeddings=cj["weight_tying"],
        attention_bias=False,
        mlp_bias=False,
        attn_implementation=attn_implementation,
    )
    model = transformers.LlamaForCausalLM(cfg)
    to_llama = {llada_key(n): n for n in model.state_dict()}
    sd = {to_llama[k]: v.float() for k, v in read_tensors(directory).items()}
    model.load_state_dict(sd, strict=True)
  else:
    kw = {k: cj[k] for k in _QWEN_FIELDS if k in cj}
    if family == "dream":
      cfg, cls = transformers.Qwen2Config(**kw), transformers.Qwen2ForCausalLM
    else:
      cfg, cls = transformers.Qwen3Config(**kw), transformers.Qwen3ForCausalLM
    model = cls.from_pretrained(
        directory,
        config=cfg,
        attn_implementation=attn_implementation,
        dtype=torch.float32,
        local_files_only=True,
    )
  return model.float().eval()
