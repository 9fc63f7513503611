#!/usr/bin/env bash
# One prepared check of fastinv on a lent NVIDIA GPU (H100 / H200), within 8 minutes: six steps, each
# under its own time limit, each writing JSON to benchmarks/results/gpu/; a failing or slow step is
# recorded and the next one still runs; summary.md (step, status, seconds, key figures) comes last.
#
#   bash benchmarks/gpu_check.sh [--only STEP,...] [--archive FILE]
#   bash benchmarks/gpu_check.sh --dry-run     # the plan: commands, time limits, outputs; no GPU needed
#
# The GPU image has torch, triton, transformers, pytest... but neither diffusers nor fastinv installed:
# stage the wheels here with ../shared/tools/device-wheels.sh, carry .whl, and start the device command
# with the pip line it prints (see device_command below). fastinv then runs from the working tree
# through PYTHONPATH. pyproject.toml maps fastinv.kernels to kernels/ and fastinv.export to export/,
# which a plain PYTHONPATH cannot; so, unless `import fastinv.kernels` already works (an installed or
# editable fastinv), this script builds a throw-away overlay in a temporary folder: fastinv/ holding
# symbolic links to every entry of the repo's fastinv/ plus kernels -> kernels/ and export -> export/,
# put first on PYTHONPATH. Nothing is installed or copied, and the repo is not touched (pytest runs with
# python -P, so the working directory does not shadow the overlay).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
RESULTS=benchmarks/results/gpu
TOTAL_LIMIT=480  # seconds: the whole script, summary included
RESERVE=15       # seconds kept back for the summary and the archive
GRACE=5          # seconds between a step's SIGTERM and SIGKILL
CUDA_TESTS=(tests/test_fast_path.py::test_real_cuda_graphs_equal_eager)  # the tests that skip without CUDA

STEPS=(env tests fast-path kernels denoiser deepinv-scale)
declare -A LIMIT=([env]=15 [tests]=80 [fast-path]=85 [kernels]=75 [denoiser]=135 [deepinv-scale]=60)
declare -A OUTPUT=(
  [env]=$RESULTS/env.json
  [tests]=$RESULTS/tests.json
  [fast-path]=$RESULTS/fast_path.json
  [kernels]=$RESULTS/kernels.json
  [denoiser]="$RESULTS/denoiser.json,$RESULTS/denoiser_compile.json"
  [deepinv-scale]=$RESULTS/deepinv_scale.json
)
declare -A COMMAND=(
  [env]="$PYTHON benchmarks/gpu_check.py env --out $RESULTS/env.json"
  [tests]="$PYTHON benchmarks/gpu_check.py tests --out $RESULTS/tests.json ${CUDA_TESTS[*]}"
  [fast-path]="$PYTHON benchmarks/gpu_check.py fast-path --steps 10 --repeats 2 --out $RESULTS/fast_path.json"
  [kernels]="$PYTHON benchmarks/kernels.py --sizes 1024 --batches 1 --repeats 50 --warmup 10 --graph-calls 20 \
--out $RESULTS/kernels.json"
  [denoiser]="rc=0; $PYTHON benchmarks/denoiser.py --models sd3-medium,flux-dev --variants eager,cuda-graph \
--warmup 2 --repeats 5 --out $RESULTS/denoiser.json || rc=\$?; $PYTHON benchmarks/denoiser.py --models sd3-medium \
--variants compile,compile+cuda-graph --warmup 2 --repeats 5 --out $RESULTS/denoiser_compile.json || rc=\$?; exit \$rc"
  [deepinv-scale]="$PYTHON benchmarks/deepinv_scale.py --steps 10,28 --repeats 3 --out $RESULTS/deepinv_scale.json"
)
declare -A WHAT=(
  [env]="nvidia-smi, GPU name and SM, torch / CUDA / Triton versions"
  [tests]="the CUDA-only tests: ${CUDA_TESTS[*]}"
  [fast-path]="shipped model, bf16: euler and deepinv at 10 steps, eager / fast / fast with torch kernels"
  [kernels]="fused step kernels at 1024², batch 1: eager vs torch.compile vs Triton, GB/s vs copy"
  [denoiser]="SD3-medium and FLUX-dev at 1024²: eager vs CUDA graph (both), compile (+graph) for SD3"
  [deepinv-scale]="SD3-medium size, preset sd3-medium: deepinv ÷ euler time at 10 and 28 steps"
)

usage() {
  cat <<EOF
usage: bash benchmarks/gpu_check.sh [--dry-run] [--only STEP,...] [--archive FILE] [--help]

One prepared check of fastinv on a lent CUDA GPU, at most $TOTAL_LIMIT s: each step runs under its own
time limit, a failing step is recorded and the next one runs; JSON per step and summary.md land in
$RESULTS/ (each step's output in $RESULTS/logs/).

  --dry-run        print the device command and the plan (command, time limit, output per step); exit 0
  --only LIST      run only these steps (comma-separated names or numbers); the others' rows are kept
  --archive FILE   also pack $RESULTS/ into FILE (.tar.gz), e.g. "\$OUT/gpu_check.tar.gz" on the device
  --help           this text

Steps: ${STEPS[*]}. Without a CUDA GPU it refuses to run (exit 2), except for --dry-run.
EOF
}

device_command() {
  cat <<'EOF'
Device tool: first stage the wheels here (diffusers, importlib_metadata into .whl/):
  ../shared/tools/device-wheels.sh
then call `run` with carry [".whl"], timeout_s 560, command:
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && bash benchmarks/gpu_check.sh --archive "$OUT/gpu_check.tar.gz"
(the results come back as gpu_check.tar.gz: unpack it into benchmarks/results/; summary.md is printed
at the end of the output. To rerun some steps only, while time is left: add --only STEP,... to the command.)
EOF
}

fail() {
  echo "error: $*" >&2
  exit 2
}

DRY_RUN=0
ONLY=""
ARCHIVE=""
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --only)
      (($# >= 2)) || fail "--only needs a comma-separated list of steps (${STEPS[*]})"
      ONLY=$2
      shift
      ;;
    --archive)
      (($# >= 2)) || fail "--archive needs a file name"
      ARCHIVE=$2
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) fail "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

declare -A SELECTED=()
if [[ -z $ONLY ]]; then
  for name in "${STEPS[@]}"; do SELECTED[$name]=1; done
else
  IFS=, read -r -a wanted <<<"$ONLY"
  for item in "${wanted[@]}"; do
    if [[ $item =~ ^[1-9]$ ]] && ((item <= ${#STEPS[@]})); then
      item=${STEPS[item - 1]}
    fi
    [[ -v "LIMIT[$item]" ]] || fail "unknown step '$item' in --only (steps: ${STEPS[*]}, or 1-${#STEPS[@]})"
    SELECTED[$item]=1
  done
fi

if ((DRY_RUN)); then
  device_command
  echo
  total=0
  echo "Plan (dry run: nothing is run):"
  for i in "${!STEPS[@]}"; do
    name=${STEPS[i]}
    [[ -v "SELECTED[$name]" ]] || continue
    total=$((total + ${LIMIT[$name]}))
    printf 'step %d/%d %-14s limit %3d s  output %s\n' "$((i + 1))" "${#STEPS[@]}" "$name" "${LIMIT[$name]}" \
      "${OUTPUT[$name]}"
    printf '    what: %s\n    command: %s\n' "${WHAT[$name]}" "${COMMAND[$name]}"
  done
  echo "summary: $RESULTS/summary.md (written last, also when steps fail); logs: $RESULTS/logs/"
  echo "total time limit of the steps: $total s; the script stops within $TOTAL_LIMIT s"
  exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1 ||
  ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
  fail "no CUDA GPU here (nvidia-smi missing or torch sees no CUDA device): --dry-run shows how to run it on one"
fi
command -v timeout >/dev/null 2>&1 || fail "needs GNU coreutils' timeout"
device_command
echo

START=$SECONDS
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET

# fastinv.kernels / fastinv.export without installing: the overlay described at the top.
OVERLAY=""
cleanup() {
  if [[ -n $OVERLAY ]]; then rm -rf "$OVERLAY"; fi
}
trap cleanup EXIT
importable() {
  (cd / && "$PYTHON" -c 'import fastinv.kernels, fastinv.export' >/dev/null 2>&1)
}
if ! importable; then
  OVERLAY=$(mktemp -d "${TMPDIR:-/tmp}/fastinv-overlay.XXXXXX")
  mkdir "$OVERLAY/fastinv"
  for entry in "$ROOT"/fastinv/*; do
    ln -s "$entry" "$OVERLAY/fastinv/$(basename "$entry")"
  done
  ln -s "$ROOT/kernels" "$OVERLAY/fastinv/kernels"
  ln -s "$ROOT/export" "$OVERLAY/fastinv/export"
  export PYTHONPATH="$OVERLAY${PYTHONPATH:+:$PYTHONPATH}"
  if importable; then
    echo "fastinv runs from $ROOT through the overlay $OVERLAY (kernels/ and export/ linked in)"
  else
    echo "warning: import fastinv.kernels still fails with PYTHONPATH=$PYTHONPATH; the steps will say why"
  fi
fi

mkdir -p "$RESULTS/logs"
TABLE=$RESULTS/steps.tsv
declare -A ROW=()
if [[ -n $ONLY && -f $TABLE ]]; then  # keep the rows of the steps not rerun
  while IFS= read -r line; do
    step=$(cut -f2 <<<"$line")
    if [[ $step != step && ! -v "SELECTED[$step]" ]]; then ROW[$step]=$line; fi
  done <"$TABLE"
fi

write_table() {
  {
    printf 'index\tstep\tstatus\treturncode\tseconds\tlimit\toutput\tlog\n'
    for name in "${STEPS[@]}"; do
      if [[ -v "ROW[$name]" ]]; then printf '%s\n' "${ROW[$name]}"; fi
    done
  } >"$TABLE"
}

run_step() {
  local index=$1 name=$2
  local limit=${LIMIT[$name]} log=$RESULTS/logs/$name.log rc=0 status
  local left=$((TOTAL_LIMIT - RESERVE - GRACE - (SECONDS - START)))
  if ((left < 5)); then
    ROW[$name]=$(printf '%d\t%s\t%s\t\t0\t%d\t%s\t' "$index" "$name" "skipped (no time left)" "$limit" \
      "${OUTPUT[$name]}")
    write_table
    return 0
  fi
  if ((limit > left)); then limit=$left; fi
  local stale
  IFS=, read -r -a stale <<<"${OUTPUT[$name]}"
  rm -f "${stale[@]}" "$log"  # an earlier run's files must not pass for this one's
  echo "== step $index/${#STEPS[@]} $name (limit $limit s): ${WHAT[$name]}"
  local began=$SECONDS
  timeout --kill-after="${GRACE}s" "${limit}s" bash -c "${COMMAND[$name]}" >"$log" 2>&1 || rc=$?
  local took=$((SECONDS - began))
  case $rc in
    0) status=ok ;;
    124 | 137) status="timeout after $limit s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  tail -n 4 "$log" | cut -c1-300 || true
  echo "-- $name: $status, $took s"
  ROW[$name]=$(printf '%d\t%s\t%s\t%d\t%d\t%d\t%s\t%s' "$index" "$name" "$status" "$rc" "$took" "$limit" \
    "${OUTPUT[$name]}" "$log")
  write_table
}

for i in "${!STEPS[@]}"; do
  name=${STEPS[i]}
  if [[ -v "SELECTED[$name]" ]]; then run_step "$((i + 1))" "$name"; fi
done

total=$((SECONDS - START))
if ! timeout 20s "$PYTHON" benchmarks/gpu_check.py summary --dir "$RESULTS" --total-seconds "$total"; then
  {  # the plain table, without key figures, when Python itself cannot write it
    echo "# GPU check"
    echo
    echo "| step | status | seconds | limit s | output |"
    echo "|---|---|---|---|---|"
    tail -n +2 "$TABLE" | while IFS=$'\t' read -r index step status _ seconds limit output _; do
      echo "| $index. $step | $status | $seconds | $limit | $output |"
    done
    echo
    echo "Total: $total s (benchmarks/gpu_check.py summary failed: no key figures)."
  } >"$RESULTS/summary.md"
  cat "$RESULTS/summary.md"
fi
if [[ -n $ARCHIVE ]]; then
  mkdir -p "$(dirname "$ARCHIVE")"
  tar -czf "$ARCHIVE" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
  echo "packed $RESULTS into $ARCHIVE"
fi
