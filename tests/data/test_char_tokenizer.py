"""Tests for the character-level HF tokenizer."""

import json

import pytest

from jdiff.data.char_tokenizer import (
    CHAT_TEMPLATE,
    DEFAULT_ALPHABET,
    SPECIAL_TOKENS,
    build_char_tokenizer,
    special_token_ids,
)

TRICKY = [
    "",
    " ",
    "  leading and trailing  ",
    "a\nb\n\n\nc",
    "\n",
    "x , y . z ? ! ' \" don't",
    "<answer>1234 3412</answer>",
    "(4+17)*2 = 42",
    "tabs\tand é unicode",  # not in the alphabet -> <unk>
    "a" * 300,
]


@pytest.fixture(scope="module")
def tok():
  return build_char_tokenizer()


def test_special_token_ids_fixed(tok):
  assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
  assert special_token_ids(tok) == {"mask": 1, "eos": 0, "pad": 0}
  assert tok.eos_token == tok.pad_token == "<|endoftext|>"
  assert tok.mask_token == "<|mask|>" and tok.mask_token_id == 1
  assert tok.unk_token_id == 4
  assert {"<|im_start|>", "<|im_end|>"} <= set(tok.all_special_tokens)
  assert len(tok) == len(SPECIAL_TOKENS) + len(DEFAULT_ALPHABET) == 101


def test_one_token_per_character(tok):
  text = "ab 1\n2"
  ids = tok.encode(text)
  assert len(ids) == len(text)
  assert tok.convert_ids_to_tokens(ids) == list(text)
  assert tok.encode("abc", add_special_tokens=True) == tok.encode("abc", add_special_tokens=False)


@pytest.mark.parametrize("text", [t for t in TRICKY if "\t" not in t])
def test_round_trip_exact(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_unknown_characters(tok):
  ids = tok.encode("a\tb")
  assert ids[1] == tok.unk_token_id and len(ids) == 3
  assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_special_tokens_in_text(tok):
  ids = tok.encode("<|im_start|>hi<|im_end|><|mask|><|endoftext|>")
  assert ids == [2, tok.convert_tokens_to_ids("h"), tok.convert_tokens_to_ids("i"), 3, 1, 0]
  assert tok.decode(ids, skip_special_tokens=True) == "hi"
  assert tok.decode(ids) == "<|im_start|>hi<|im_end|><|mask|><|endoftext|>"


def test_custom_alphabet():
  small = build_char_tokenizer("0123456789 ")
  assert len(small) == 5 + 11
  assert small.decode(small.encode("12 34")) == "12 34"
  assert small.encode("x") == [small.unk_token_id]
  assert len(build_char_tokenizer("aab")) == 7  # duplicates ignored
  with pytest.raises(ValueError):
    build_char_tokenizer("")


def test_chat_template(tok):
  msgs = [{"role": "user", "content": "Solve: 1030"}]
  text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
  assert text == "<|im_start|>user\nSolve: 1030<|im_end|>\n<|im_start|>assistant\n"
  no_gen = tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
  assert no_gen == "<|im_start|>user\nSolve: 1030<|im_end|>\n"
  sys_msgs = [{"role": "system", "content": "S"}] + msgs
  with_sys = tok.apply_chat_template(sys_msgs, add_generation_prompt=True, tokenize=False)
  assert with_sys.startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n")
  assert tok.chat_template == CHAT_TEMPLATE


def test_save_and_autotokenizer_reload(tok, tmp_path, monkeypatch):
  from transformers import AutoTokenizer

  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  tok.save_pretrained(tmp_path)
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert "auto_map" not in config  # no custom code needed
  loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
  assert len(loaded) == len(tok)
  assert loaded.get_vocab() == tok.get_vocab()
  for text in TRICKY:
    assert loaded.encode(text) == tok.encode(text)
    if "\t" not in text:
      assert loaded.decode(loaded.encode(text)) == text
  assert special_token_ids(loaded) == special_token_ids(tok)
  assert loaded.mask_token == "<|mask|>" and loaded.eos_token == "<|endoftext|>"
  assert set(loaded.all_special_tokens) == set(tok.all_special_tokens)
  assert loaded.chat_template == tok.chat_template
  msgs = [{"role": "user", "content": "Use 3 5 7 to get 22"}]
  assert loaded.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == (
      tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
  )
