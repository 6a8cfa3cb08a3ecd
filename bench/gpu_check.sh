#!/usr/bin/env bash
# One-invocation GPU check (bench/README.md): build soap_kernels offline against the preinstalled torch, print
# the build report, run the GPU tests, run the benchmark suites at the paper's sizes, and leave at most 8 files
# in $OUT (default bench/results/gpu): gpu_check.log (everything printed), summary.txt (step table + results
# table), info.json, one JSON per suite that ran, and one PNG of all suites.
#
#   bash bench/gpu_check.sh              # on the GPU machine, from the repository root or anywhere
#   bash bench/gpu_check.sh --dry-run    # anywhere: checks the script starts and each step resolves (CI)
#
# Environment: OUT (results folder), PYTHON (default python3; .venv/bin/python in a dry run when present),
# SOAP_KERNELS_GPU_CHECK_DRY_RUN=1 (same as --dry-run), SOAP_KERNELS_GPU_CHECK_BUDGET_S (default 540: the whole
# check stays inside a device call's 600 s with timeout_s 590), SOAP_KERNELS_GPU_CHECK_SUITES (default
# "soap_step refresh residual train_step"), SOAP_KERNELS_GPU_CHECK_STEPS (the steps in order, each NAME or
# NAME:LIMIT_S; default "build info tests <suites, jet_kernels before train_step> triton refresh_profile trace"),
# SOAP_KERNELS_GPU_CHECK_PYTEST_K (the tests step's -k expression, default "cuda": the cuda-marked tests and the
# device-parametrised ones on cuda; the tests of the Triton kernels, which tests/conftest.py marks triton_kernel
# on a GPU, are the triton step), SOAP_KERNELS_GPU_CHECK_PYTEST_ARGS (more pytest words),
# SOAP_KERNELS_GPU_CHECK_WORKERS (pytest-xdist workers, default 6), SOAP_KERNELS_CUDA_ARCHS (default: this GPU's,
# e.g. 90a on Hopper). Wheels under .whl/ (baselines such as pytorch_optimizer and heavyball, which the GPU
# machine lacks) are installed to a private folder first. Exit status: 0 only if no step failed.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
DRY_RUN="${SOAP_KERNELS_GPU_CHECK_DRY_RUN:-0}"
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
OUT="${OUT:-bench/results/gpu}"
[[ "$DRY_RUN" == 1 && "$OUT" == bench/results/gpu ]] && OUT="${TMPDIR:-/tmp}/soap_kernels_gpu_check_dry_run"
mkdir -p "$OUT" || exit 1
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
BUDGET_S="${SOAP_KERNELS_GPU_CHECK_BUDGET_S:-540}"
SUITES="${SOAP_KERNELS_GPU_CHECK_SUITES:-soap_step refresh residual train_step}"
PYTEST_K="${SOAP_KERNELS_GPU_CHECK_PYTEST_K:-cuda}"
PYTEST_ARGS="${SOAP_KERNELS_GPU_CHECK_PYTEST_ARGS:-}"
# the CUDA tests, then the benchmarks the issues' goals name (jet_kernels, whose fused-vs-split rows set the jets'
# defaults, before train_step), then the Triton kernels' own GPU tests and the profiles (log only)
DEFAULT_STEPS="build info tests"
for suite in $SUITES; do
  [[ "$suite" == train_step ]] && DEFAULT_STEPS+=" jet_kernels"
  DEFAULT_STEPS+=" $suite"
done
[[ " $DEFAULT_STEPS " == *" jet_kernels "* ]] || DEFAULT_STEPS+=" jet_kernels"
STEPS="${SOAP_KERNELS_GPU_CHECK_STEPS:-$DEFAULT_STEPS triton refresh_profile trace}"
MAX_FILES=8
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=python3
  [[ "$DRY_RUN" == 1 && -x "$ROOT/.venv/bin/python" ]] && PYTHON="$ROOT/.venv/bin/python"
fi
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
START_EPOCH=$(date +%s)
TABLE="$(mktemp /tmp/soap_kernels_results_table.XXXXXX)"
export PYTHONUNBUFFERED=1 SOAP_KERNELS_RESULTS_DIR="$OUT" MPLBACKEND=Agg
export ROOT DRY_RUN OUT BUDGET_S PYTEST_K PYTEST_ARGS MAX_FILES PYTHON START_EPOCH TABLE
STEP_LINES=()
FAILURES=0
NOT_RUN=0

default_limit() {  # seconds a step may take by default (the first H100 check: build 50 s, refresh 50 s, trace 32 s);
  # their sum passes the budget, so the steps last in STEPS run when the earlier ones end early
  case "$1" in
    build) echo 240 ;;
    tests) echo 100 ;;
    soap_step) echo 80 ;;
    info | refresh | residual | train_step | triton) echo 60 ;;
    jet_kernels) echo 50 ;;
    trace) echo 40 ;;
    refresh_profile) echo 30 ;;
    *) echo 90 ;;
  esac
}

remaining_s() { echo $((BUDGET_S - ($(date +%s) - START_EPOCH))); }

record() {  # record NAME STATUS SECONDS [NOTE]
  STEP_LINES+=("$(printf '%-10s %-8s %5ss  %s' "$1" "$2" "$3" "${4:-}")")
  [[ "$2" == FAIL ]] && FAILURES=$((FAILURES + 1))
  echo "=== [$1] $2 after $3 s ${4:-}"
}

# step NAME LIMIT_S COMMAND...: run COMMAND (a program or one of the functions below, exported) in its own
# bash with a time limit cut to what is left of the budget.
step() {
  local name="$1" limit="$2" left began rc reserve=45
  shift 2
  [[ "$name" == results || "$name" == files ]] && reserve=0  # the summary always gets its time
  left=$(($(remaining_s) - reserve))
  if ((left < 15)); then  # not a failure of what it checks, but said in the last line
    record "$name" skipped 0 "not run: the ${BUDGET_S} s budget is spent"
    NOT_RUN=$((NOT_RUN + 1))
    return 1
  fi
  ((limit > left)) && limit=$left
  echo
  echo "=== [$name] $(date -u +%H:%M:%S) limit ${limit}s: $*"
  began=$SECONDS
  STEP_LIMIT_S="$limit" timeout --kill-after=10 "$limit" bash -c '"$@"' step "$@"
  rc=$?
  if ((rc == 124 || rc == 137)); then
    record "$name" FAIL $((SECONDS - began)) "timed out after ${limit} s"
  elif ((rc != 0)); then
    record "$name" FAIL $((SECONDS - began)) "exit status $rc"
  else
    record "$name" ok $((SECONDS - began))
  fi
  return $rc
}

skip() { record "$1" skipped 0 "$2"; }

check_environment() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(hostname)  cores: $(nproc)  dry run: $DRY_RUN"
  echo "repository: $ROOT at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  git -C "$ROOT" status --short 2>/dev/null | head -20
  echo "python: $PYTHON ($(command -v "$PYTHON" || echo 'NOT FOUND'))"
  "$PYTHON" - <<'EOF' || return 1
import sys

import torch

print("python", sys.version.split()[0], "| torch", torch.__version__, "| torch CUDA", torch.version.cuda,
      "| CUDA available", torch.cuda.is_available())
try:
    import triton
    print("triton", triton.__version__)
except ImportError as error:
    print("triton: not importable:", error)
from soap_kernels import profile
print("NVML:", profile.nvml_status())
EOF
  for tool in nvcc cmake ninja nvidia-smi; do echo "$tool: $(command -v $tool || echo 'not on PATH')"; done
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.sm,power.limit,temperature.gpu \
      --format=csv
  fi
  if [[ "$DRY_RUN" != 1 ]]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this is not a GPU machine')" || return 1
    command -v nvcc >/dev/null || { echo "nvcc is not on PATH: the CUDA kernels cannot be built"; return 1; }
  fi
}

install_wheels() {
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/soap_kernels_wheels "$ROOT"/.whl/*.whl
}

build() {
  local archs="${SOAP_KERNELS_CUDA_ARCHS:-}"
  if [[ -z "$archs" ]]; then
    archs=$("$PYTHON" -c "import torch; m, n = torch.cuda.get_device_capability(); print(f'{m}{n}a' if m == 9 else f'{m}{n}')") || return 1
  fi
  echo "building with SOAP_KERNELS_CUDA=1 SOAP_KERNELS_CUDA_ARCHS=$archs"
  SOAP_KERNELS_CUDA=1 SOAP_KERNELS_CUDA_ARCHS="$archs" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -e "$ROOT"
}

build_resolves() {  # dry run: the build's tools are there (the compilers only warn: CI may lack nvcc)
  "$PYTHON" -m pip --version || return 1
  "$PYTHON" -c "import scikit_build_core; print('scikit-build-core', scikit_build_core.__version__)" || return 1
  for tool in cmake ninja nvcc; do command -v $tool >/dev/null || echo "WARNING: $tool is not on PATH here"; done
  echo "would run: SOAP_KERNELS_CUDA=1 SOAP_KERNELS_CUDA_ARCHS=<this GPU's> $PYTHON -m pip install" \
    "--no-build-isolation --no-deps --no-index -e $ROOT"
}

build_info() {
  "$PYTHON" -m soap_kernels info >"$OUT/info.json" || return 1
  cat "$OUT/info.json"
  [[ "$DRY_RUN" == 1 ]] && return 0
  "$PYTHON" - "$OUT/info.json" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
backends = info["backends_here"]
if not backends["cuda"]:
    sys.exit(f"the CUDA C++ kernels are not usable here: native_extension={info['native_extension']}, "
             f"cuda_devices={info['cuda_devices']}")
print("backends here:", ", ".join(name for name, on in backends.items() if on))
EOF
}

pytest_plugins_args() {  # pytest_plugins_args serial|loadfile|load: the GPU machine's pytest plugins, where installed
  # pytest-timeout stops a test that hangs; pytest-xdist spreads the tests over workers (Triton compiles each
  # kernel variant on the CPU, one core per process: the first check spent most of its test time there), a
  # file per worker (loadfile: its kernels compile once) or, for the Triton kernels' tests, test by test (load:
  # one file's many variants, e.g. test_jet_triton.py's, compile on every worker at once)
  "$PYTHON" -c "import pytest_timeout" 2>/dev/null && echo "--timeout 60"
  [[ "$1" == serial ]] && return 0
  "$PYTHON" -c "import xdist" 2>/dev/null && echo "-n ${SOAP_KERNELS_GPU_CHECK_WORKERS:-6} --dist $1"
  return 0
}

gpu_tests() {
  # The optimizer's tests first (and the trainer's captured step): under the step's time limit, Triton's first
  # compilations (several seconds per jet kernel variant) must not starve them; then every other file by name.
  local first=(tests/test_soap.py tests/test_soap_capturable.py tests/test_adam_moments.py
               tests/test_refresh_eigenbasis.py tests/test_block_jacobi.py tests/test_rotated_adam.py
               tests/test_factor_update.py tests/soap_pinn/test_step_graph.py)
  local files=("${first[@]}") file
  for file in tests/test_*.py tests/soap_pinn/test_*.py; do
    [[ " ${first[*]} " == *" $file "* ]] || files+=("$file")
  done
  # each test named as it finishes (the log shows how far a step got if its limit stops it), and one that hangs
  # is stopped by pytest-timeout where that is installed
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of words
  two_phase_pytest loadfile "" -k "$PYTEST_K" $PYTEST_ARGS "${files[@]}"
  local rc=$?
  if ((rc == 5)); then
    echo "WARNING: pytest collected no tests for -k '$PYTEST_K' $PYTEST_ARGS"
    return 0
  fi
  return $rc
}

two_phase_pytest() {  # two_phase_pytest DIST MARK_EXPRESSION PYTEST_ARGS...: the selected tests over the workers
  # (xdist's --dist DIST), then the gpu_memory_heavy ones alone (tens of GiB each: several at once would not fit)
  local dist="$1" marks="$2" rc_shared rc_alone
  shift 2
  "$PYTHON" -m pytest -v -rfEs --tb=short -p no:cacheprovider $(pytest_plugins_args "$dist") \
    -m "${marks:+($marks) and }not gpu_memory_heavy" "$@"
  rc_shared=$?
  "$PYTHON" -m pytest -v -rfEs --tb=short -p no:cacheprovider $(pytest_plugins_args serial) \
    -m "${marks:+($marks) and }gpu_memory_heavy" "$@"
  rc_alone=$?
  ((rc_shared == 5)) && rc_shared=$rc_alone  # nothing in the first phase: the second decides
  ((rc_alone == 5)) && rc_alone=0
  ((rc_shared != 0)) && return $rc_shared
  return $rc_alone
}

run_suite() {  # run_suite NAME: one suite in its own process, so one that hangs or crashes spares the rest
  # The suite starts no new case once its budget is spent and saves what it has: one killed at the step's
  # limit would save nothing. The margin covers the last case started and the saving.
  local device=cuda sizes=paper budget
  [[ "$DRY_RUN" == 1 ]] && device=cpu sizes=smoke
  budget=$((${STEP_LIMIT_S:-$(remaining_s)} - 25))
  ((budget < 20)) && budget=20
  "$PYTHON" -m bench "$1" --device "$device" --sizes "$sizes" --out "$OUT" --plots none --time-budget-s "$budget"
}

summarize() {  # the results table of every suite JSON in $OUT (to $TABLE) and one PNG of them all
  local results=() device f
  for f in "$OUT"/*.json; do [[ -e "$f" && "$f" != "$OUT/info.json" ]] && results+=("$f"); done
  if ((${#results[@]} == 0)); then
    echo "no suite wrote results" | tee "$TABLE"
    return 1
  fi
  device=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['machine']['device'])" "${results[0]}")
  "$PYTHON" -m bench --summarize "${results[@]}" --plot "$OUT/bench-$device-$(date -u +%Y-%m-%d).png" >"$TABLE"
  local rc=$?
  cat "$TABLE"
  return $rc
}

keep_file_budget() {  # the device tool brings back at most 8 files: pack surplus suite JSONs into one archive
  local count
  count=$(find "$OUT" -maxdepth 1 -type f | wc -l)
  echo "$count files in $OUT (+ summary.txt to come)"
  if ((count + 1 > MAX_FILES)); then
    (cd "$OUT" && tar czf suites-json.tar.gz --exclude=info.json ./*.json && find . -maxdepth 1 -name '*.json' \
      ! -name info.json -delete) || return 1
    echo "packed the suite JSON files into suites-json.tar.gz to stay within $MAX_FILES files"
  fi
}

gpu_triton_tests() {
  # every test of a Triton kernel (the users of the triton_device fixture) on the GPU; Triton compiles each
  # kernel variant on first use, so the slowest are listed for the next check's time limits
  two_phase_pytest load triton_kernel --durations=10 tests
  local rc=$?
  ((rc == 5)) && { echo "WARNING: no test marked triton_kernel (no CUDA?)"; return 0; }
  return $rc
}

export -f default_limit pytest_plugins_args two_phase_pytest remaining_s check_environment install_wheels build build_resolves build_info gpu_tests \
  gpu_triton_tests run_suite summarize keep_file_budget

main() {
  echo "soap-kernels GPU check: results in $OUT"
  local stale
  stale=$(find "$OUT" -maxdepth 1 -type f ! -name gpu_check.log | wc -l)
  ((stale > 0)) && echo "WARNING: $OUT already holds $stale file(s); their JSON results join the summary"
  if ! step env 60 check_environment; then
    for name in build info tests triton $SUITES; do skip "$name" "the environment check failed"; done
  else
    if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
      step wheels 60 install_wheels && export PYTHONPATH="/tmp/soap_kernels_wheels${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if [[ "$DRY_RUN" == 1 ]]; then
      step build 60 build_resolves
      step info 60 build_info
      step tests 30 "$PYTHON" -m pytest --version
      step triton 30 "$PYTHON" -m pytest --markers
      # shellcheck disable=SC2086  # SUITES is a list of words
      step suites 60 "$PYTHON" -m bench --dry-run $SUITES
      step ceilings 60 run_suite ceilings
    else
      # a failed build still leaves the torch and Triton paths to test and time, so the check goes on
      local word name limit
      for word in $STEPS; do
        name=${word%%:*}
        limit=$(default_limit "$name")
        [[ "$word" == *:* ]] && limit=${word#*:}
        case "$name" in
          build) step build "$limit" build ;;
          info) step info "$limit" build_info ;;
          tests) step tests "$limit" gpu_tests ;;
          triton) step triton "$limit" gpu_triton_tests ;;
          # where a training step's time goes (printed to the log only: no files)
          trace) step trace "$limit" "$PYTHON" -m bench.trace --device cuda --sizes paper --rows 12 \
            --providers autograd+pytorch_optimizer_soap,jets+soap_kernels,jets+soap_kernels_triton,jets+adam ;;
          # where one refresh's time goes (log only): the refresh goal's 1 ms hinges on launches vs kernels
          refresh_profile) step refresh_profile "$limit" "$PYTHON" bench/refresh.py --device cuda --profile \
            --n 256 --batch 1 40 --rows 25 --providers soap_kernels_qr soap_kernels_exact ;;
          *) step "$name" "$limit" run_suite "$name" ;;
        esac
      done
      if ! compgen -G "$OUT/*-*-*.json" >/dev/null; then  # no suite ran: at least the machine's ceilings
        step ceilings 60 run_suite ceilings
      fi
    fi
  fi
  step results 60 summarize
  step files 30 keep_file_budget
  {
    echo "soap-kernels GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ), $(($(date +%s) - START_EPOCH)) s, dry run: $DRY_RUN"
    printf '%s\n' "${STEP_LINES[@]}"
    echo
    cat "$TABLE" 2>/dev/null
    rm -f "$TABLE"
    echo
    if ((FAILURES > 0)); then echo "GPU CHECK FAILED: $FAILURES step(s) failed (see gpu_check.log)"
    elif ((NOT_RUN > 0)); then echo "GPU CHECK PASSED what ran; $NOT_RUN step(s) not run for want of time"
    else echo "GPU CHECK PASSED"; fi
  } >"$SUMMARY"
  echo
  ls -la "$OUT"
  echo
  cat "$SUMMARY"  # the summary is printed last: the device tool's reply carries the end of the output
  ((FAILURES == 0))
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # sourced (tests): define the steps, run nothing
  main "$@" 2>&1 | tee "$LOG"
  exit "${PIPESTATUS[0]}"
fi
