#!/usr/bin/env bash
# check.sh: the one GPU-machine run of mveb's CUDA backend (see benchmarks/device/README.md for the
# exact device-tool call). Builds the native tests with -DMVEB_CUDA=on for sm_90, then, most telling
# first: the CUDA cross-backend tests (`mveb_native_tests cuda:`) as the GPU plans them and again with
# MVEB_CUDA_SM_COUNT=2 (the tests' small shapes then take the large GEMM tiles and split-K plans a
# 132-SM GPU keeps for large products), the same tests under compute-sanitizer memcheck, racecheck
# and synccheck (the races and barrier misuse the CPU emulator cannot show), the CUDA
# micro-benchmark beside PyTorch when bench_cuda.cpp and torch are there, and the whole native suite
# last. Writes at most 8 files to $OUT (the device tool brings back only 8); summary.txt gets a row
# as each step ends (a run killed at the call's limit keeps what finished) and is printed last. Each
# step has its own time limit; a normal run takes a few minutes.
# Locally (no GPU) it still runs: the CUDA cases report "skip ... no GPU".
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OUT=${OUT:-/tmp/mveb-device-out}
mkdir -p "$OUT"
BUILD=${MVEB_GPU_BUILD_DIR:-build-gpu}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 4)}
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
row() { printf '%-28s %s\n' "$1" "$2" >> "$SUMMARY"; }
now() { date +%s; }

# nvcc must be on PATH for CMake's check_language(CUDA)
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break; done
fi

# ---- environment (env.txt) ----
{
  echo "date: $(date -u +%FT%TZ)"; echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "host: $(uname -a)"; echo "cores: $JOBS"
  nvidia-smi 2>&1 | head -20
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1; ninja --version 2>&1 | head -1
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no gpu')" 2>&1
} > "$OUT/env.txt" 2>&1
row "gpu" "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo none)"

# ---- node (CMake runs native/sources.js) ----
if ! command -v node >/dev/null 2>&1; then
  if [ -x /tmp/node-bin/node ]; then export PATH=/tmp/node-bin:$PATH
  elif [ -f .device/unpack-node.sh ]; then sh .device/unpack-node.sh .device >/dev/null && export PATH=/tmp/node-bin:$PATH
  fi
fi
row "node" "$(node --version 2>/dev/null || echo MISSING)"

# ---- build (build.log) ----
t0=$(now)
GEN=""; command -v ninja >/dev/null 2>&1 && GEN="-G Ninja"
{
  timeout 120 cmake -S "$ROOT" -B "$BUILD" $GEN -DMVEB_CUDA=on -DMVEB_CUDA_ARCHS=90 -DCMAKE_BUILD_TYPE=Release &&
  timeout 420 cmake --build "$BUILD" --target mveb_native_tests -j "$JOBS"
} > "$OUT/build.log" 2>&1
build_rc=$?
row "build (cmake, MVEB_CUDA=on)" "rc=$build_rc in $(( $(now) - t0 )) s"
TESTS="$BUILD/mveb_native_tests"

last_line() { tail -n 1 "$1" 2>/dev/null | tr -d '\n'; }
if [ $build_rc -eq 0 ] && [ -x "$TESTS" ]; then
  # ---- CUDA tests (test_cuda.log): as planned for this GPU, then as for a 2-SM one ----
  : > "$OUT/test_cuda.log"
  for sms in "" 2; do
    t0=$(now)
    echo "==== mveb_native_tests cuda: MVEB_CUDA_SM_COUNT=${sms:-unset}" >> "$OUT/test_cuda.log"
    MVEB_CUDA_SM_COUNT=$sms timeout 180 "$TESTS" cuda: > "$OUT/test_cuda.part" 2>&1
    rc=$?
    cat "$OUT/test_cuda.part" >> "$OUT/test_cuda.log"
    row "tests cuda: sms=${sms:-device}" "rc=$rc $(( $(now) - t0 )) s | $(last_line "$OUT/test_cuda.part")"
    grep -E '^FAIL|    FAIL ' "$OUT/test_cuda.part" | head -20 | cut -c1-200 | sed 's/^/    /' >> "$SUMMARY"
    skips=$(grep -c '^skip' "$OUT/test_cuda.part")
    [ "$skips" -gt 0 ] && echo "    $skips skipped, e.g. $(grep -m1 '^skip' "$OUT/test_cuda.part" | cut -c1-160)" >> "$SUMMARY"
  done
  rm -f "$OUT/test_cuda.part"

  # ---- compute-sanitizer (sanitizers.log): memcheck (out-of-bounds / misaligned accesses, API
  # errors), racecheck (shared-memory hazards), synccheck (barriers not reached by the whole block) ----
  SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)
  : > "$OUT/sanitizers.log"
  if [ -n "$SAN" ]; then
    for tool in memcheck racecheck synccheck; do
      t0=$(now)
      extra=""; [ "$tool" = memcheck ] && extra="--leak-check no"
      echo "==== compute-sanitizer --tool $tool" >> "$OUT/sanitizers.log"
      # exact allocation sizes (no size-class rounding), so memcheck sees overruns inside the rounding
      MVEB_CUDA_EXACT_ALLOC=1 timeout 240 "$SAN" --tool $tool $extra --error-exitcode 99 "$TESTS" cuda: > "$OUT/san.part" 2>&1
      rc=$?
      cat "$OUT/san.part" >> "$OUT/sanitizers.log"
      row "$tool cuda:" "rc=$rc $(( $(now) - t0 )) s | $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san.part" | tail -1)"
    done
    rm -f "$OUT/san.part"
  else
    row "compute-sanitizer" "not found"
  fi

  # ---- micro-benchmark beside PyTorch (bench.log) ----
  if [ -f benchmarks/device/bench_cuda.cpp ]; then
    t0=$(now)
    {
      CUDA_LIB=$(dirname "$(ls /usr/local/cuda/lib64/libcudart_static.a /usr/local/cuda*/lib*/libcudart_static.a /usr/local/cuda*/targets/*/lib/libcudart_static.a 2>/dev/null | head -1)")
      g++ -O2 -std=c++17 -I native benchmarks/device/bench_cuda.cpp -Wl,--start-group "$BUILD/libmveb_core.a" "$BUILD/libmveb_cuda.a" -Wl,--end-group \
        -L"$CUDA_LIB" -lcudart_static -lpthread -ldl -lrt -o "$BUILD/bench_cuda" &&
      timeout 120 "$BUILD/bench_cuda" | tee "$BUILD/bench_ours.txt" &&
      if [ -f benchmarks/device/bench_torch.py ]; then timeout 150 python3 benchmarks/device/bench_torch.py "$BUILD/bench_ours.txt"; fi
    } > "$OUT/bench.log" 2>&1
    rc=$?
    row "bench (ours, torch)" "rc=$rc $(( $(now) - t0 )) s (bench.log)"
    grep -E '^op ' "$OUT/bench.log" | head -20 | sed 's/^/    /' >> "$SUMMARY"
  fi

  # ---- whole native suite (test_all.log): the CPU areas too, last (they gain nothing from the GPU) ----
  t0=$(now)
  timeout 120 "$TESTS" > "$OUT/test_all.log" 2>&1
  rc=$?
  row "tests (all areas)" "rc=$rc $(( $(now) - t0 )) s | $(last_line "$OUT/test_all.log")"
  grep -E '^FAIL' "$OUT/test_all.log" | head -10 | sed 's/^/    /' >> "$SUMMARY"
else
  row "tests" "not run (build failed; see build.log)"
  grep -E 'error|FAILED' "$OUT/build.log" | head -15 | sed 's/^/    /' >> "$SUMMARY"
fi

echo "==== mveb device check summary ===="
cat "$SUMMARY"
