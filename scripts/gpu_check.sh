#!/usr/bin/env bash
# One prepared check for a machine with a GPU, within 9 minutes:
#   1. the devices JAX sees,
#   2. the quick test tier,
#   3. scripts/bench.py: lstm_impl fast vs reference (scratch) and flax's cell, at d2l, big,
#      shakespeare, shakespeare_small and word,
#   4. JAX's cuDNN LSTM (jax.experimental.rnn), where it imports and runs, at the same sizes,
#   5. experiments/ptb_medium.py (Zaremba's medium PTB model) for a 120 s budget: tokens/s and the
#      start of its perplexity curve (its full run is GPU hours),
#   6. the seed's two runs (experiments/scratch.py, 50 epochs; experiments/concise.py,
#      500 epochs) and the scratch run with bfloat16 compute,
# then a short table (last lines of the output, also in OUT/table.md): which path to make
# the GPU's default can be read off one run.
#
#   scripts/gpu_check.sh [--out DIR]      # on the GPU machine (pip install -e '.[cuda12,dev]')
#   scripts/gpu_check.sh --cpu-quick      # here, on CPU, about 2 minutes: same steps, small sizes
#
# Every step has its own time limit and the whole script a budget (540 s; 9 minutes);
# a step that fails or overruns is marked in the table and the next one runs.
# PYTHON=/path/to/python picks the interpreter (default: python, else python3).
# Exit status: 0 if every step passed or was skipped, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=0
OUT=runs/gpu_check
BUDGET_S=540
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-quick) QUICK=1 ;;
    --out) OUT=$2; shift ;;
    --out=*) OUT=${1#*=} ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-python}
command -v "$PY" >/dev/null 2>&1 || PY=python3
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Test subprocesses share the GPU with the test process: allocate on demand.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1
if [ "$QUICK" = 1 ]; then
  export JAX_PLATFORMS=cpu
fi

START=$SECONDS
ROWS=()
FAILED=0

# step NAME LIMIT_S RESULT_FN COMMAND...: run with a time limit, log to OUT/NAME.log,
# and add a table row: name | status | seconds | what RESULT_FN prints.
step() {
  local name=$1 limit=$2 result_fn=$3
  shift 3
  local left=$((BUDGET_S - (SECONDS - START) - 5))
  if [ "$left" -lt 10 ]; then
    ROWS+=("| $name | skipped: out of time | 0 | |")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (limit ${limit} s): $*"
  local t0=$SECONDS rc status
  timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/$name.log") 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT after ${limit} s"; FAILED=1 ;;
    *) status="FAILED (exit $rc)"; FAILED=1 ;;
  esac
  ROWS+=("| $name | $status | $((SECONDS - t0)) | $($result_fn "$name") |")
}

devices_result() { grep '^devices:' "$OUT/$1.log" | head -1 | sed 's/^devices: //'; }
tests_result() {
  local last failed
  last=$(grep -E '(passed|failed|error)' "$OUT/$1.log" | grep -E ' in [0-9.]+s' | tail -1 | tr -d '=' | sed 's/^ *//')
  failed=$(grep -E '^(FAILED|ERROR) ' "$OUT/$1.log" | head -3 | awk '{print $2}' | tr '\n' ' ')
  echo "${last:-no pytest summary}${failed:+; first failures: $failed}"
}
bench_result() {
  "$PY" - "$OUT/bench.json" <<'EOF' 2>/dev/null || echo "see bench.log"
import json, sys
rows = json.load(open(sys.argv[1]))["results"]
print("; ".join(f"{r['config']} {r['impl']} {r['tokens_per_sec_median']:,.0f} tok/s" for r in rows))
EOF
}
train_result() {
  "$PY" - "$OUT/$1/summary.json" <<'EOF' 2>/dev/null || echo "no summary.json"
import json, sys
s = json.load(open(sys.argv[1]))
print(f"perplexity {s['final_train_ppl']:.2f} after {s['epochs']} epochs, "
      f"{s['tokens_per_sec_median']:,.0f} tok/s, compile {s['compile_s']:.1f} s, train {s['train_s']:.1f} s")
EOF
}
ptb_result() {
  "$PY" - "$OUT/$1/summary.json" <<'EOF' 2>/dev/null || echo "no summary.json"
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{s['steps']} updates in {s['train_s']:.0f} s, {s['tokens_per_sec_median']:,.0f} tok/s, "
      f"validation perplexity {s['final_val_ppl']:.1f}, test {s.get('test_ppl', float('nan')):.1f}")
EOF
}
none_result() { :; }

# 1. Devices.
step devices 60 devices_result "$PY" -c '
import jax, jaxlib
from lstm_jax import distributed
print(f"devices: {distributed.describe()}; backend {jax.default_backend()}, jax {jax.__version__}")
for d in jax.devices():
    print(" ", d, d.device_kind)
'
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L

# 2. Tests.
if [ "$QUICK" = 1 ]; then
  step tests 240 tests_result "$PY" -m pytest -q -p no:cacheprovider -n 0 \
    tests/test_train.py::test_a_few_epochs_learn_the_book \
    tests/test_distributed.py::test_batch_size_message_without_a_smaller_size \
    tests/test_distributed.py::test_initialize_needs_every_part
else
  step tests 150 tests_result "$PY" -m pytest -q -p no:cacheprovider -m "not slow"
fi

# 3. Benchmark: which implementation is fastest on this device.
if [ "$QUICK" = 1 ]; then
  step bench 120 bench_result "$PY" scripts/bench.py --rounds 1 --warmup 1 --configs tiny \
    --impls scratch,scratch_reference,concise --json "$OUT/bench.json"
else
  step bench 180 bench_result "$PY" scripts/bench.py --rounds 3 --warmup 1 \
    --configs d2l,big,shakespeare_small,ptb --impls scratch,scratch_reference,concise --json "$OUT/bench.json"
fi

# 4. JAX's cuDNN LSTM binding (GPU only): does it import and run, and how fast is it here?
step cudnn 60 none_result "$PY" scripts/cudnn_check.py $( [ "$QUICK" = 1 ] && echo --quick )

# 5. Zaremba's medium PTB model for a budget (the quick variant: a narrow one for a few seconds).
if [ "$QUICK" = 1 ]; then
  PTB=(--config.time_budget_s=5 --config.num_hiddens=32 --config.embed_dim=32)
else
  PTB=(--config.time_budget_s=120)
fi
step ptb_medium 200 ptb_result "$PY" -m lstm_jax.train --config experiments/ptb_medium.py \
  --workdir "$OUT/ptb_medium" "${PTB[@]}"

# 6. The seed's two runs, and bf16 compute.
if [ "$QUICK" = 1 ]; then
  SCRATCH=(--config.num_epochs=2 --config.log_every=1)
  CONCISE=(--config.num_epochs=5 --config.log_every=5)
else
  SCRATCH=()
  CONCISE=()
fi
step scratch 40 train_result "$PY" -m lstm_jax.train --config experiments/scratch.py \
  --workdir "$OUT/scratch" "${SCRATCH[@]}"
step concise 90 train_result "$PY" -m lstm_jax.train --config experiments/concise.py \
  --workdir "$OUT/concise" "${CONCISE[@]}"
step scratch_bf16 40 train_result "$PY" -m lstm_jax.train --config experiments/scratch.py \
  --workdir "$OUT/scratch_bf16" --config.dtype=bfloat16 "${SCRATCH[@]}"

# The table, last.
{
  echo
  echo "gpu_check $( [ "$QUICK" = 1 ] && echo '--cpu-quick ')on $(hostname), $(date -u +%Y-%m-%dT%H:%MZ), total $((SECONDS - START)) s"
  echo
  echo "| step | status | seconds | result |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/table.md"
exit $FAILED
