#!/bin/sh
# build-and-run-kernels.sh: builds the CPU kernel benchmark (benchmarks/kernels/kernels_bench.cpp)
# against libmveb_core.a in a scratch build folder and runs it next to PyTorch (run.py).
# Usage: sh benchmarks/build-and-run-kernels.sh [threads] [parts]     (npm run bench:cpu)
# parts: comma-separated subset of gemm,conv,bn (default all; see run.py).
# Env: MVEB_BENCH_BUILD (build folder, default /tmp/mveb-bench-kernels), CXX.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MVEB_BENCH_BUILD:-/tmp/mveb-bench-kernels}
threads=${1:-2}
cmake -S "$root" -B "$build" -G Ninja -DMVEB_CUDA=off -DCMAKE_BUILD_TYPE=Release >"$build.log" 2>&1 ||
  { cat "$build.log"; exit 1; }
cmake --build "$build" --target mveb_core -j2 >>"$build.log" 2>&1 || { cat "$build.log"; exit 1; }
${CXX:-g++} -O2 -std=c++17 -I"$root/native" "$root/benchmarks/kernels/kernels_bench.cpp" "$build/libmveb_core.a" \
  -lpthread -ldl -o "$build/kernels_bench"
echo "commit: $(git -C "$root" rev-parse --short HEAD)  date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cpus"
/usr/bin/python3 "$root/benchmarks/kernels/run.py" "$build/kernels_bench" "$threads" ${2:+"$2"}
