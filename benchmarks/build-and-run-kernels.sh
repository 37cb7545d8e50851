#!/bin/sh
# build-and-run-kernels.sh: builds the CPU kernel benchmark (benchmarks/kernels/kernels_bench.cpp)
# against libmveb_core.a in a scratch build folder and runs it next to PyTorch (run.py).
# Usage: sh benchmarks/build-and-run-kernels.sh [threads] [parts]     (npm run bench:cpu)
# parts: comma-separated subset of gemm,conv,bn,step (default all). gemm, conv and bn are run.py's
# kernel tables; step is the ResNet training-step table (benchmarks/train-step.js: resnet50 224 b16,
# resnet18-cifar b128 and the default pretrain encoder, img/s and peak memory next to PyTorch, our
# step and PyTorch's interleaved: --interleave), which needs the addon (npm run build:native;
# MVEB_ADDON_PATH as there).
# Env: MVEB_BENCH_BUILD (build folder, default /tmp/mveb-bench-kernels), CXX, MVEB_BENCH_STEPS (rounds
# of timed training steps, default 4).
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
parts=${2:-gemm,conv,bn,step}
kernel_parts=$(echo "$parts" | tr ',' '\n' | grep -v '^step$' | paste -sd, -)
if [ -n "$kernel_parts" ]; then
  /usr/bin/python3 "$root/benchmarks/kernels/run.py" "$build/kernels_bench" "$threads" "$kernel_parts"
fi
case ",$parts," in
  *,step,*)
    echo
    echo "## ResNet training step (benchmarks/train-step.js)"
    MVEB_NUM_THREADS=$threads node "$root/benchmarks/train-step.js" --interleave --steps "${MVEB_BENCH_STEPS:-4}" ;;
esac
