#!/usr/bin/env bash
# The README's main job as a new user runs it: a virtual environment with `pip install -e .`
# only (no test extra), then every script on the result of a short train.py run. Any error
# fails. Usage: bash .ci/smoke.sh VENV_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$1"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e .
export JAX_PLATFORMS=cpu
python tests/test_imports.py
w="$(mktemp -d)"
trap 'rm -rf "$w"' EXIT
start=$SECONDS
python scripts/train.py --config configs/tracerl.py --workdir "$w/rl" \
  --config.sft.steps=20 --config.rl.steps=2 --config.task.num_eval=16 --config.eval.batch_size=16
python scripts/eval.py --config configs/tracerl.py --workdir "$w/rl" --mode static \
  --config.task.num_eval=16 --config.eval.batch_size=16
python scripts/plot.py --workdir "$w/rl"
printf '{"prompt": "sort: 3 1 2"}\n{"prompt": "sort: 9 4 7"}\n' > "$w/prompts.jsonl"
python scripts/sample.py --model "$w/rl/model" --prompts "$w/prompts.jsonl" --out "$w/out.jsonl" \
  --config configs/tracerl.py
test "$(wc -l < "$w/out.jsonl")" -eq 2
python scripts/convert_hf.py export "$w/rl/model" "$w/hf"
python scripts/convert_hf.py import "$w/hf" "$w/reimported"
python scripts/sft.py --config configs/sft_llada.py --workdir "$w/sft" --config.sft.steps=3
echo "smoke: the main job and every script ran in $((SECONDS - start)) s"
