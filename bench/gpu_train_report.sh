#!/usr/bin/env bash
# The GPU half of the trainer's report (soap-pinn on the paper preset), in one call on the GPU machine after
# bench/gpu_check.sh has built soap_kernels there (a warm machine keeps the build between calls):
#   1. seconds per training step of the paper preset on Allen-Cahn (PirateNet 3x256, batch 8192; SOAP and Adam,
#      jets and nested autograd, interleaved by `soap-pinn time-step`) with the fused kernels
#      (SOAP_KERNELS_BACKEND=triton; the jet variants also with steps replayed from a CUDA graph, --cuda-graph)
#      and with torch's paths (SOAP_KERNELS_BACKEND=torch), one process each;
#   2. a paper-preset SOAP run on Allen-Cahn stopped after MINUTES minutes of training (default 6, what a
#      15-minute device session leaves after the build): its summary.json holds the rel L2 reached in that time.
#      SOAP_PINN_REPORT_CUDA_GRAPH=1 trains with --cuda-graph (default off until step 1 has shown it on a GPU).
# Every step has a time limit (the defaults fit a device command's 600 s), and the run's files are copied out
# even when the call is killed.
# Files in $OUT (default bench/results/gpu-train, at most 8): report.log, time-step-{triton,torch}.json and the
# run's summary.json, run_info.json, metrics.jsonl, curves.png, solution.png. The run itself (checkpoints are
# tens of MB) stays in /tmp.
#
#   bash bench/gpu_train_report.sh [MINUTES]
#   bash bench/gpu_train_report.sh --dry-run    # anywhere: CPU, small preset, torch paths (a test runs it)
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
DRY_RUN=0
MINUTES=6
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
elif [[ -n "${1:-}" ]]; then
  MINUTES="$1"
  [[ "$MINUTES" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "MINUTES must be a number, got '$MINUTES'" >&2; exit 2; }
fi
PYTHON="${PYTHON:-python3}"
[[ "$DRY_RUN" == 1 && -x "$ROOT/.venv/bin/python" && "$PYTHON" == python3 ]] && PYTHON="$ROOT/.venv/bin/python"
OUT="${OUT:-bench/results/gpu-train}"
mkdir -p "$OUT" || exit 1
OUT="$(cd "$OUT" && pwd)"
RUN="$(mktemp -d /tmp/soap_pinn_gpu_run.XXXXXX)"
if [[ "$DRY_RUN" == 1 ]]; then  # the torch paths only: Triton's CPU interpreter takes minutes per step here
  DEVICE=cpu PRESET=small BACKENDS=(torch) TIMING=(--rounds 1 --steps-per-round 1)
  TRAIN=(--steps 3 --log-every 1 --no-plots)
else
  DEVICE=cuda PRESET=paper BACKENDS=(triton torch) TIMING=(--rounds 5 --steps-per-round 10)
  TRAIN=(--max-minutes "$MINUTES")
  [[ "${SOAP_PINN_REPORT_CUDA_GRAPH:-0}" == 1 ]] && TRAIN+=(--cuda-graph)
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# Each timing process gets at most TIMING_LIMIT_S, training MINUTES plus TRAIN_SLACK_S (final evaluation, plots),
# so the whole call stays inside a device command's 600 s limit at the defaults (2 x 90 + 360 + 60); after a GPU
# check in the same session, e.g. SOAP_PINN_REPORT_TIMING_LIMIT_S=60 SOAP_PINN_REPORT_TRAIN_SLACK_S=40 with
# MINUTES 2 fits 280 s.
TIMING_LIMIT_S="${SOAP_PINN_REPORT_TIMING_LIMIT_S:-90}"
TRAIN_SLACK_S="${SOAP_PINN_REPORT_TRAIN_SLACK_S:-60}"

copy_run_files() {  # also on a kill: what the run wrote so far still comes back
  local file
  for file in summary.json run_info.json metrics.jsonl curves.png solution.png; do
    [[ -e "$RUN/allen_cahn-soap/$file" ]] && cp "$RUN/allen_cahn-soap/$file" "$OUT/"
  done
  return 0
}
trap copy_run_files EXIT

main() {
  local failures=0 backend
  echo "soap-pinn GPU report: device $DEVICE, preset $PRESET, run in $RUN, results in $OUT"
  for backend in "${BACKENDS[@]}"; do
    echo "=== time-step with SOAP_KERNELS_BACKEND=$backend"
    local graph=()  # a captured SOAP step needs the native refresh, which the torch backend rules out
    [[ "$DEVICE" == cuda && "$backend" != torch ]] && graph=(--cuda-graph)
    SOAP_KERNELS_BACKEND=$backend timeout "$TIMING_LIMIT_S" "$PYTHON" -m soap_pinn time-step allen_cahn \
      --preset "$PRESET" --device "$DEVICE" "${TIMING[@]}" "${graph[@]}" --save "$OUT/time-step-$backend.json" \
      || failures=$((failures + 1))
  done
  echo "=== soap-pinn train allen_cahn --preset $PRESET ${TRAIN[*]}"
  timeout "$(awk -v m="$MINUTES" -v s="$TRAIN_SLACK_S" 'BEGIN { printf "%d", m * 60 + s }')" \
    "$PYTHON" -m soap_pinn train allen_cahn --optimizer soap --preset "$PRESET" --device "$DEVICE" \
    "${TRAIN[@]}" --out "$RUN/allen_cahn-soap" || failures=$((failures + 1))
  copy_run_files
  ls -la "$OUT"
  if ((failures > 0)); then
    echo "GPU REPORT FAILED: $failures step(s) failed"
    return 1
  fi
  echo "GPU REPORT DONE"
}

main 2>&1 | tee "$OUT/report.log"
exit "${PIPESTATUS[0]}"
