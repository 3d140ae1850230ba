#!/usr/bin/env bash
# The whole study, offline: a generated Stanford-Dogs-shaped sample, the built-in emulator standing
# in for the OpenAI API, zero-shot through the Batch API, a fine-tune, the fine-tuned model, a
# latency study and the decision report. Every number it prints is EMULATED, not a real model's.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${DEMO:-demo-output}
CLI="$BIN/vlm-classify"
MODEL=gpt-4o-2024-08-06

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# A fresh run every time (nothing answered before is reused); only the demo's own folders go.
rm -rf "$OUT/source" "$OUT/prepared" "$OUT/emulator.env" "$OUT/emulator.log"

step "1/9 sample: generate a Stanford-Dogs-shaped tree (offline stand-in for the real dataset)"
"$CLI" sample "$OUT/source" --classes 12 --per-class 20

step "2/9 prepare: validate, normalise, deduplicate, split 12/3/5 per class"
"$CLI" prepare "$OUT/source" --out "$OUT/prepared" --split 12,3,5

step "3/9 export: fine-tuning JSONL (train, val) and Batch API input (test)"
"$CLI" export "$OUT/prepared" --model "openai/$MODEL"

step "4/9 estimate: what the experiment costs before a cent is spent"
"$CLI" estimate "$OUT/prepared" --model "azure/$MODEL"

step "5/9 emulator: a local stand-in for the OpenAI API (no key, no network)"
# Its accuracies are SETTINGS (the study's 74% zero-shot, 83% fine-tuned), not measurements: the
# verdict at the end shows how the report reads, not a finding about any model.
rm -f "$OUT/emulator.env"
"$CLI" emulator --port 0 --manifest "$OUT/prepared" --env-file "$OUT/emulator.env" \
  --accuracy 0.74 --ft-accuracy 0.83 --latency-profile seed-study --latency-scale 0.05 --batch-seconds 2 --ft-seconds 4 \
  >"$OUT/emulator.log" 2>&1 &
EMULATOR_PID=$!
trap 'kill $EMULATOR_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$OUT/emulator.env" ] && break; sleep 0.1; done
[ -s "$OUT/emulator.env" ] || { cat "$OUT/emulator.log"; echo "the emulator did not start"; exit 1; }
# shellcheck disable=SC1090
. "$OUT/emulator.env"
echo "emulator at $OPENAI_BASE_URL (log: $OUT/emulator.log)"

step "6/9 zero-shot through the Batch API"
"$CLI" classify "$OUT/prepared" --model "openai/$MODEL" --name zero-shot --mode batch --poll 0.5

step "7/9 fine-tune, then evaluate the fine-tuned model realtime"
"$CLI" finetune "$OUT/prepared" --model "openai/$MODEL" --name ft-job --poll 0.5
FT_MODEL=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["fine_tuned_model"])' "$OUT/prepared/arms/ft-job/finetune.json")
"$CLI" classify "$OUT/prepared" --model "openai/$FT_MODEL" --name fine-tuned --concurrency 8

step "8/9 latency: both models at concurrency 1, 4 and 16"
"$CLI" latency "$OUT/prepared" --model "openai/$MODEL" --name zero-shot --requests 60 --concurrency 1,4,16
"$CLI" latency "$OUT/prepared" --model "openai/$FT_MODEL" --name fine-tuned --requests 60 --concurrency 1,4,16

step "9/9 report: should you fine-tune?"
"$CLI" report "$OUT/prepared" --baseline zero-shot --volume 10000

echo
echo "Done. The decision report: $OUT/prepared/report/report.html (and report.md, results.csv, metrics.json)"
echo "Every model number above came from the built-in emulator, not a real model."
