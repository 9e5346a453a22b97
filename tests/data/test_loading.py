"""Tests for local dataset loading, templating, prompt encoding and left padding."""

import json

import numpy as np
import pytest

from jdiff.data import (
    apply_template,
    build_char_tokenizer,
    encode_prompt_rows,
    encode_prompts,
    left_pad,
    load_prompts,
)

RECORDS = [
    {"question": "Compute 1+2", "gold": "3", "id": 0},
    {"question": "Compute 4*5", "gold": "20", "id": 1},
    {"question": "Compute 9-7", "gold": "2", "id": 2},
]
EXPECTED = [{"prompt": r["question"], "answer": r["gold"], "id": r["id"]} for r in RECORDS]
FIELD_MAP = {"prompt": "question", "answer": "gold"}


@pytest.fixture(scope="module")
def tok():
  return build_char_tokenizer()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return path


def test_load_jsonl_with_field_map(tmp_path):
  path = _write_jsonl(tmp_path / "data.jsonl", RECORDS)
  assert load_prompts(path, field_map=FIELD_MAP) == EXPECTED
  assert load_prompts(str(path), field_map=FIELD_MAP, limit=2) == EXPECTED[:2]
  # Without a map, columns are unchanged.
  assert load_prompts(path) == RECORDS


def test_load_json_parquet_csv(tmp_path):
  import datasets

  ds = datasets.Dataset.from_list(RECORDS)
  ds.to_parquet(str(tmp_path / "data.parquet"))
  ds.to_csv(str(tmp_path / "data.csv"), index=False)
  (tmp_path / "data.json").write_text(json.dumps(RECORDS))
  for name in ("data.parquet", "data.csv", "data.json"):
    rows = load_prompts(tmp_path / name, field_map=FIELD_MAP)
    assert [r["prompt"] for r in rows] == [e["prompt"] for e in EXPECTED], name
    assert [str(r["answer"]) for r in rows] == [e["answer"] for e in EXPECTED], name


def test_load_save_to_disk(tmp_path):
  import datasets

  dd = datasets.DatasetDict(
      {
          "train": datasets.Dataset.from_list(RECORDS),
          "test": datasets.Dataset.from_list(RECORDS[:1]),
      }
  )
  dd.save_to_disk(str(tmp_path / "dd"))
  assert load_prompts(tmp_path / "dd", field_map=FIELD_MAP) == EXPECTED
  assert load_prompts(tmp_path / "dd", split="test", field_map=FIELD_MAP) == EXPECTED[:1]
  with pytest.raises(ValueError, match="available splits"):
    load_prompts(tmp_path / "dd", split="validation")
  dd["train"].save_to_disk(str(tmp_path / "single"))
  assert load_prompts(tmp_path / "single", field_map=FIELD_MAP, limit=1) == EXPECTED[:1]
  # In-memory datasets objects work too.
  assert load_prompts(dd, split="test", field_map=FIELD_MAP) == EXPECTED[:1]


def test_load_directory_of_files_by_split(tmp_path):
  data_dir = tmp_path / "files"
  data_dir.mkdir()
  _write_jsonl(data_dir / "train.jsonl", RECORDS[:2])
  _write_jsonl(data_dir / "test.jsonl", RECORDS[2:])
  assert load_prompts(data_dir, split="test", field_map=FIELD_MAP) == EXPECTED[2:]
  assert len(load_prompts(data_dir)) == 3
  with pytest.raises(ValueError, match="no data file for split"):
    load_prompts(data_dir, split="dev")


def test_missing_field_error_lists_columns(tmp_path):
  path = _write_jsonl(tmp_path / "data.jsonl", RECORDS)
  with pytest.raises(ValueError) as err:
    load_prompts(path, field_map={"prompt": "problem"})
  msg = str(err.value)
  assert "'prompt'" in msg and "'problem'" in msg
  for col in ("question", "gold", "id"):
    assert col in msg
  with pytest.raises(ValueError, match="available columns"):
    load_prompts(RECORDS, field_map={"answer": "solution"})


def test_non_local_path_refused():
  with pytest.raises(FileNotFoundError, match="no Hugging Face Hub downloads"):
    load_prompts("openai/gsm8k", field_map={"prompt": "question"})
  with pytest.raises(TypeError):
    load_prompts(42)


def test_in_memory_rows_and_callable_fields():
  rows = load_prompts(
      RECORDS, field_map={"prompt": "question", "answer": lambda r: r["gold"] + "!"}, limit=2
  )
  assert rows == [
      {"prompt": "Compute 1+2", "gold": "3", "id": 0, "answer": "3!"},
      {"prompt": "Compute 4*5", "gold": "20", "id": 1, "answer": "20!"},
  ]
  # Swapping two columns keeps both.
  swapped = load_prompts(RECORDS[:1], field_map={"question": "gold", "gold": "question"})
  assert swapped == [{"question": "3", "gold": "Compute 1+2", "id": 0}]


def test_apply_template_chat_and_plain(tok):
  ids = apply_template(tok, "Compute 1+2")
  assert tok.decode(ids) == "<|im_start|>user\nCompute 1+2<|im_end|>\n<|im_start|>assistant\n"
  assert all(isinstance(i, int) for i in ids)
  with_sys = apply_template(tok, "hi", system="Be brief.")
  assert tok.decode(with_sys).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
  suffixed = apply_template(tok, "Compute 1+2", suffix="<answer>")
  assert suffixed == ids + tok.encode("<answer>")
  plain = apply_template(tok, "Compute 1+2", use_chat_template=False, suffix="=")
  assert tok.decode(plain) == "Compute 1+2="
  assert tok.decode(apply_template(tok, "q", system="s", use_chat_template=False)) == "s\n\nq"


def test_encode_prompts_drops_long(tok):
  rows = [{"prompt": "short"}, {"prompt": "x" * 100}, {"prompt": "also short"}]
  overhead = len(apply_template(tok, ""))
  ids, dropped = encode_prompts(tok, rows, max_prompt_len=overhead + 20)
  assert dropped == 1 and len(ids) == 2
  assert ids[0] == apply_template(tok, "short")
  kept, ids2, dropped2 = encode_prompt_rows(tok, rows, max_prompt_len=overhead + 20)
  assert kept == [rows[0], rows[2]] and ids2 == ids and dropped2 == 1
  ids3, dropped3 = encode_prompts(tok, ["abc"], max_prompt_len=3, use_chat_template=False)
  assert ids3 == [tok.encode("abc")] and dropped3 == 0
  assert encode_prompts(tok, rows, max_prompt_len=1) == ([], 3)


def test_left_pad_shapes_and_positions():
  batch = [[5, 6, 7], [8], []]
  ids, mask, pos = left_pad(batch, pad_id=0)
  assert ids.shape == mask.shape == pos.shape == (3, 3)
  assert ids.dtype == np.int32 and pos.dtype == np.int32 and mask.dtype == np.bool_
  np.testing.assert_array_equal(ids, [[5, 6, 7], [0, 0, 8], [0, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1], [0, 0, 0]])
  np.testing.assert_array_equal(pos, [[0, 1, 2], [0, 0, 0], [0, 0, 0]])

  ids, mask, pos = left_pad(batch, pad_id=9, length=5)
  assert ids.shape == (3, 5)
  np.testing.assert_array_equal(ids[1], [9, 9, 9, 9, 8])
  np.testing.assert_array_equal(pos[0], [0, 0, 0, 1, 2])

  ids, _, _ = left_pad(batch, pad_id=0, bucket=4)
  assert ids.shape == (3, 4)
  assert left_pad([[1] * 8], pad_id=0, bucket=4)[0].shape == (1, 8)
  assert left_pad([[1] * 9], pad_id=0, bucket=4)[0].shape == (1, 12)
  with pytest.raises(ValueError):
    left_pad(batch, pad_id=0, length=2)
