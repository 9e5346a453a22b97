"""Broken or incomplete checkpoint directories give a CheckpointError naming the culprit."""

import json
import os
import re
import shutil

import pytest
import safetensors.torch

import hf_fixtures
import jdiff
from jdiff.checkpoint import CheckpointError, from_pretrained, import_hf


@pytest.fixture
def sdar_copy(hf_checkpoints, tmp_path):
  """A private copy of the tiny SDAR checkpoint that a test may break."""
  dst = str(tmp_path / "ckpt")
  shutil.copytree(hf_checkpoints("sdar").path, dst)
  return dst


def _edit_config(directory, **changes):
  path = os.path.join(directory, "config.json")
  with open(path) as f:
    cj = json.load(f)
  for k, v in changes.items():
    if v is None:
      cj.pop(k, None)
    else:
      cj[k] = v
  with open(path, "w") as f:
    json.dump(cj, f)


def _shard(directory, n=2):
  """Rewrites the directory's model.safetensors as ``n`` shards plus an index."""
  single = os.path.join(directory, "model.safetensors")
  tensors = safetensors.torch.load_file(single)
  os.remove(single)
  names = sorted(tensors)
  weight_map = {}
  files = []
  for i in range(n):
    fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    group = names[i::n]
    safetensors.torch.save_file({k: tensors[k] for k in group}, os.path.join(directory, fname))
    weight_map.update({k: fname for k in group})
    files.append(fname)
  with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return files, weight_map


def test_checkpoint_error_is_a_value_error():
  assert issubclass(CheckpointError, ValueError)


def test_missing_shard(sdar_copy):
  files, _ = _shard(sdar_copy)
  assert isinstance(from_pretrained(sdar_copy), jdiff.DiffusionLM)  # sharded dir loads
  os.remove(os.path.join(sdar_copy, files[1]))
  with pytest.raises(CheckpointError, match=re.escape(files[1])):
    from_pretrained(sdar_copy)
  with pytest.raises(CheckpointError, match=re.escape(files[1])):
    import_hf(sdar_copy, sdar_copy + "_out")


def test_index_maps_tensor_to_shard_that_lacks_it(sdar_copy):
  files, weight_map = _shard(sdar_copy)
  name = next(k for k, v in weight_map.items() if v == files[0])
  weight_map[name] = files[1]
  with open(os.path.join(sdar_copy, "model.safetensors.index.json"), "w") as f:
    json.dump({"weight_map": weight_map}, f)
  with pytest.raises(CheckpointError, match=re.escape(name)):
    from_pretrained(sdar_copy)


def test_missing_tensor(sdar_copy):
  path = os.path.join(sdar_copy, "model.safetensors")
  tensors = safetensors.torch.load_file(path)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  safetensors.torch.save_file(tensors, path)
  with pytest.raises(CheckpointError, match=re.escape("model.layers.1.mlp.up_proj.weight")):
    from_pretrained(sdar_copy)


def test_wrong_shape_names_tensor_and_file(sdar_copy):
  path = os.path.join(sdar_copy, "model.safetensors")
  tensors = safetensors.torch.load_file(path)
  key = "model.layers.0.self_attn.q_proj.weight"
  tensors[key] = tensors[key][:-1].contiguous()
  safetensors.torch.save_file(tensors, path)
  with pytest.raises(CheckpointError) as e:
    from_pretrained(sdar_copy)
  msg = str(e.value)
  assert key in msg and "model.safetensors" in msg and "shape" in msg


def test_unknown_model_type_lists_supported(sdar_copy):
  _edit_config(sdar_copy, model_type="gpt2", architectures=["GPT2LMHeadModel"])
  with pytest.raises(CheckpointError) as e:
    from_pretrained(sdar_copy)
  msg = str(e.value)
  assert "gpt2" in msg and "supported" in msg
  for name in ("llada", "Dream", "sdar"):
    assert name in msg


def test_stock_qwen3_needs_family(sdar_copy):
  _edit_config(sdar_copy, model_type="qwen3", architectures=["Qwen3ForCausalLM"], block_size=None)
  with pytest.raises(CheckpointError) as e:
    from_pretrained(sdar_copy)
  assert "family=" in str(e.value) and "sdar" in str(e.value)
  model = from_pretrained(sdar_copy, family="sdar", block_size=8)
  assert model.config.family == "sdar" and model.config.block_size == 8
  assert model.config.mask_token_id == hf_fixtures.MASK_ID and model.config.qk_norm
  # Without a mask id in config.json the id can be given explicitly.
  _edit_config(sdar_copy, mask_token_id=None)
  with pytest.raises(CheckpointError, match="mask"):
    from_pretrained(sdar_copy, family="sdar")
  model = from_pretrained(sdar_copy, family="sdar", mask_token_id=7)
  assert model.config.mask_token_id == 7


def test_family_conflicting_with_config(hf_checkpoints):
  with pytest.raises(CheckpointError, match="family"):
    from_pretrained(hf_checkpoints("sdar").path, family="dream")


def test_missing_config_json(sdar_copy):
  os.remove(os.path.join(sdar_copy, "config.json"))
  with pytest.raises(CheckpointError, match=re.escape(f"no config.json in {sdar_copy}")):
    from_pretrained(sdar_copy)


def test_invalid_config_json(sdar_copy):
  with open(os.path.join(sdar_copy, "config.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(CheckpointError, match="config.json"):
    from_pretrained(sdar_copy)


def test_missing_directory(tmp_path):
  with pytest.raises(CheckpointError, match="not found"):
    from_pretrained(str(tmp_path / "nowhere"))


def test_missing_mask_id_without_tokenizer(sdar_copy):
  _edit_config(sdar_copy, mask_token_id=None)
  with pytest.raises(CheckpointError) as e:
    from_pretrained(sdar_copy)
  assert "mask_token_id" in str(e.value) and sdar_copy in str(e.value)


def test_truncated_safetensors(sdar_copy):
  path = os.path.join(sdar_copy, "model.safetensors")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size - 1000)
  with pytest.raises(CheckpointError) as e:
    from_pretrained(sdar_copy)
  assert path in str(e.value) and "truncated" in str(e.value)
  with open(path, "r+b") as f:  # cut inside the header
    f.truncate(20)
  with pytest.raises(CheckpointError, match=re.escape(path)):
    from_pretrained(sdar_copy)


def test_no_safetensors_files(sdar_copy):
  os.remove(os.path.join(sdar_copy, "model.safetensors"))
  with pytest.raises(CheckpointError, match="safetensors"):
    from_pretrained(sdar_copy)


def test_load_tokenizer_without_files(sdar_copy):
  with pytest.raises(CheckpointError) as e:
    jdiff.load_tokenizer(sdar_copy)
  assert sdar_copy in str(e.value) and "tokenizer" in str(e.value)


TOKENIZER_MASK_ID = 123


def _save_tokenizer(directory):
  import tokenizers
  import transformers
  from tokenizers import models, pre_tokenizers

  vocab = {f"w{i}": i for i in range(hf_fixtures.VOCAB)}
  vocab["[PAD]"], vocab["[EOS]"], vocab["[MASK]"] = 0, hf_fixtures.EOS_ID, TOKENIZER_MASK_ID
  del vocab["w0"], vocab[f"w{hf_fixtures.EOS_ID}"], vocab[f"w{TOKENIZER_MASK_ID}"]
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, mask_token="[MASK]", eos_token="[EOS]", pad_token="[PAD]"
  )
  fast.save_pretrained(directory)


def test_tokenizer_loads_offline_and_supplies_mask_id(sdar_copy, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  _save_tokenizer(sdar_copy)
  tok = jdiff.load_tokenizer(sdar_copy)
  assert tok.mask_token_id == TOKENIZER_MASK_ID
  assert tok("w5 w7 [MASK]")["input_ids"] == [5, 7, TOKENIZER_MASK_ID]
  _edit_config(sdar_copy, mask_token_id=None)
  model = from_pretrained(sdar_copy)
  assert model.config.mask_token_id == TOKENIZER_MASK_ID
  # A mask id present in config.json wins over the tokenizer's.
  _edit_config(sdar_copy, mask_token_id=hf_fixtures.MASK_ID)
  assert from_pretrained(sdar_copy).config.mask_token_id == hf_fixtures.MASK_ID
