#!/usr/bin/env bash
# The benchmark set at paper scale on a GPU, in under 8 minutes; installs nothing.
#
#   benchmarks/gpu_suite.sh OUT_DIR            # needs a GPU (or TPU) visible to JAX
#   benchmarks/gpu_suite.sh OUT_DIR --dry-run  # tiny sizes on whatever JAX sees (CPU is fine)
#
# Writes one JSON per benchmark and RESULTS.md into OUT_DIR. Each step has its own
# time limit, so one slow or failing step cannot take the whole budget; the exit
# status is non-zero if any step failed. Python is $PYTHON (default: python).
set -uo pipefail

usage() {
  cat <<'USAGE'
usage: benchmarks/gpu_suite.sh OUT_DIR [--dry-run]

Runs the benchmark set at paper scale on a GPU (or TPU) visible to JAX, in under
8 minutes, and writes one JSON per benchmark plus RESULTS.md into OUT_DIR.

  OUT_DIR    results folder (created if missing)
  --dry-run  tiny sizes on whatever JAX sees (a CPU is fine), to check the suite
  -h, --help show this help

Environment: PYTHON, the interpreter to use (default: python).
USAGE
}
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" || "${2:-}" == "-h" || "${2:-}" == "--help" ]]; then
  usage
  exit 0
fi
if [[ $# -lt 1 || "$1" == -* ]]; then
  usage >&2
  exit 2
fi
OUT="$1"
MODE="${2:-}"
PY="${PYTHON:-python}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"

if [[ "$MODE" == "--dry-run" ]]; then
  "$PY" -c "import jax; print('dry run on', jax.default_backend(), jax.devices())" || exit 1
  FEATURES=(--arch vgg11 --width 0.0625 --image-size 32 --batch-size 8 --images 32 --repeat 1)
  SOLVER=(--refs 500 --boundaries 10 --batch 50 --repeat 1 --lanes 0 8
          --grid-q 10 20 --grid-r 200 500 --grid-b 1 50)
  BOUNDARIES=(--sizes 10 20 --repeat 1)
  END_TO_END=(--limit 64 --chunk 32 --batch-size 32)
  VARIANTS=(--inputs 8 --repeat 1)
  LIMITS=(300 300 300 300 300)
elif [[ -n "$MODE" ]]; then
  echo "unknown option: $MODE (expected --dry-run)" >&2
  exit 2
else
  "$PY" - <<'EOF' || exit 1
import sys
import jax
backend = jax.default_backend()
if backend not in ("gpu", "tpu"):
    sys.exit(f"no GPU/TPU visible to JAX (backend {backend!r}, devices {jax.devices()}); "
             "use --dry-run to exercise the suite without one")
print("accelerator:", backend, jax.devices())
EOF
  # Paper scale: VGG-19 width 1 at 224 px; |R| = 5,000, |Q| = 50, 1,000 inputs.
  FEATURES=(--arch vgg19 --width 1 --image-size 224 --batch-size 64 --images 1024)
  SOLVER=(--refs 5000 --boundaries 50 --batch 1000 --lanes 0 8 64
          --grid-q 10 50 200 --grid-r 1000 20000 100000 --grid-b 1 100 1000 --full)
  BOUNDARIES=(--sizes 50 200 1000)
  END_TO_END=()
  VARIANTS=()  # the embedded model, 64 inputs, |Q| = 50: the two RI variants side by side
  LIMITS=(90 180 60 90 50)  # seconds per step: 470 s in all, under the 8-minute budget
fi

status=0
run() {  # run LIMIT NAME ARGS...: one benchmark under its time limit
  local limit="$1" name="$2"
  shift 2
  echo "== $name (limit ${limit}s)"
  if ! timeout "$limit" "$PY" -m "benchmarks.$name" --out "$OUT" "$@"; then
    echo "!! $name failed or ran past ${limit}s" >&2
    status=1
  fi
}

start=$SECONDS
run "${LIMITS[0]}" bench_features "${FEATURES[@]}"
run "${LIMITS[1]}" bench_solver "${SOLVER[@]}"
run "${LIMITS[2]}" bench_boundaries "${BOUNDARIES[@]}"
run "${LIMITS[3]}" bench_end_to_end "${END_TO_END[@]}"
run "${LIMITS[4]}" bench_variants "${VARIANTS[@]}"
"$PY" -m benchmarks.report "$OUT" --output "$OUT/RESULTS.md" || status=1
echo "suite finished in $((SECONDS - start)) s with status $status; results in $OUT"
exit "$status"
