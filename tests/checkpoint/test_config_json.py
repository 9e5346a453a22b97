"""config.json survives import -> export, and tokenizers load without prompting.

The original model classes read config.json fields jdiff does not model (SDAR's
``SDARModel`` uses ``pad_token_id`` as the embedding's ``padding_idx``), so export must give
back the source checkpoint's fields unchanged and add none of its own.
"""

import builtins
import json
import os
import shutil

import pytest

import hf_fixtures
from jdiff.checkpoint import export_hf, from_pretrained, import_hf, load_tokenizer
from jdiff.data.char_tokenizer import build_char_tokenizer

_AUTO_MAP = {"AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel"}


def _read(directory):
  with open(os.path.join(directory, "config.json")) as f:
    return json.load(f)


def _edited_copy(src, dst, drop=(), **extra):
  """A copy of checkpoint ``src`` whose config.json lacks ``drop`` and gains ``extra``."""
  shutil.copytree(src, dst)
  cj = _read(dst)
  for key in drop:
    cj.pop(key)
  cj.update(extra)
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(cj, f, indent=2)
  return cj


# SDAR's released config.json has no pad_token_id; LLaDA's and Dream's have one.
@pytest.mark.parametrize(
    "family,drop",
    [
        ("llada", ()),
        ("dream", ()),
        ("sdar", ()),
        ("sdar", ("pad_token_id",)),
        ("llada", ("pad_token_id",)),
    ],
)
def test_import_export_gives_back_config_json(family, drop, hf_checkpoints, tmp_path):
  src = str(tmp_path / "src")
  original = _edited_copy(hf_checkpoints(family).path, src, drop, auto_map=_AUTO_MAP)
  jdir, out, out2 = (str(tmp_path / n) for n in ("jdiff", "hf", "hf_from_model"))
  import_hf(src, jdir)
  export_hf(jdir, out)
  assert _read(out) == original
  model = from_pretrained(src, dtype="float32")
  export_hf(model, out2)  # the in-memory path keeps the fields too
  assert _read(out2) == original
  # The export loads again with the same pad behaviour (pad = EOS when config.json has none).
  again = from_pretrained(out, dtype="float32")
  assert again.config.pad_token_id == model.config.pad_token_id == hf_fixtures.EOS_ID
  assert again.config == model.config


def test_changed_fields_are_written_and_others_kept(hf_checkpoints, tmp_path):
  src = str(tmp_path / "src")
  original = _edited_copy(hf_checkpoints("sdar").path, src, ("pad_token_id",))
  model = from_pretrained(src, dtype="float32")
  model.config = model.config.replace(block_size=8, bos_token_id=7)
  out = str(tmp_path / "hf")
  export_hf(model, out)
  cj = _read(out)
  assert cj["block_size"] == 8 and cj["bos_token_id"] == 7
  assert "pad_token_id" not in cj
  assert {k: v for k, v in cj.items() if k not in ("block_size", "bos_token_id")} == {
      k: v for k, v in original.items() if k not in ("block_size", "bos_token_id")
  }


def _checkpoint_with_auto_map(directory):
  tok = build_char_tokenizer()
  tok.save_pretrained(directory)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(
        {"model_type": "sdar", "architectures": ["SDARForCausalLM"], "auto_map": _AUTO_MAP}, f
    )
  path = os.path.join(directory, "tokenizer_config.json")
  with open(path) as f:
    tc = json.load(f)
  tc["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
  with open(path, "w") as f:
    json.dump(tc, f)
  return tok


def test_tokenizer_with_auto_map_loads_without_prompting(tmp_path, monkeypatch):
  tok = _checkpoint_with_auto_map(str(tmp_path))

  prompts = []

  def no_prompt(prompt=""):
    # transformers swallows an exception here (and falls back), so record the prompt instead.
    prompts.append(prompt)
    return "n"

  monkeypatch.setattr(builtins, "input", no_prompt)
  with open(os.devnull) as devnull:
    monkeypatch.setattr("sys.stdin", devnull)
    loaded = load_tokenizer(str(tmp_path))
  assert prompts == []
  assert loaded.get_vocab() == tok.get_vocab()
  assert loaded.encode("12+3") == tok.encode("12+3")
