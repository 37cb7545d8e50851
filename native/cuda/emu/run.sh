#!/usr/bin/env bash
# run.sh: runs the CUDA backend's kernels on the CPU, without a GPU. Translates native/cuda/*.cu
# (launch syntax only, translate.py), compiles them against the emulated runtime (cuda_runtime.h,
# emu.cpp) with AddressSanitizer + UBSan, links them with the core/CPU sources and the native test
# runner + test/native/test_cuda.cpp, and runs `cuda:` (the cross-backend CPU-vs-CUDA tests).
# What it shows: index arithmetic, tiling, bounds, split-K, reductions, host logic and the test
# itself are right (every op against the CPU backend, every device buffer bounds-checked).
# What it cannot show: GPU-only behaviour (real concurrency, races, warp timing, performance,
# driver/arch issues); that is benchmarks/device/check.sh on a GPU machine.
# Usage: native/cuda/emu/run.sh [test-filter, default "cuda:"]   (build in $EMU_BUILD, default
# /tmp/mveb-cuda-emu; objects are reused when newer than their sources and every header). Needs g++
# and node.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
B=${EMU_BUILD:-/tmp/mveb-cuda-emu}
FILTER=${1:-cuda:}
JOBS=${JOBS:-2}
mkdir -p "$B/gen" "$B/obj"
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
FLAGS=(-std=c++20 -O1 -g -fno-strict-aliasing $SAN -I"$ROOT/native/cuda/emu" -I"$ROOT/native" -DMVEB_WITH_CUDA=1 -DMVEB_CUDA_EMU=1
       "-DMVEB_CUDA_ARCHS_STR='\"emu\"'" -Wno-unused-result)

objs=()
pending=()
# The newest header of the tree: an object older than it is rebuilt (a changed op table in
# core/backend.h would otherwise leave objects with the old virtual-call layout).
NEWEST_H=$(ls -t $(find "$ROOT/native" "$ROOT/test/native" -name '*.h') | head -1)
compile() {  # compile SRC OBJ [extra flags]: only when SRC or any header is newer than OBJ
  local src=$1 obj=$2; shift 2
  objs+=("$obj")
  if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$NEWEST_H" -nt "$obj" ]; then
    pending+=("g++ ${FLAGS[*]} $* -c $src -o $obj")
  fi
}
for cu in "$ROOT"/native/cuda/*.cu; do
  name=$(basename "$cu" .cu)
  python3 "$ROOT/native/cuda/emu/translate.py" "$cu" "$B/gen/$name.tmp.cpp" >/dev/null
  if ! cmp -s "$B/gen/$name.tmp.cpp" "$B/gen/$name.cpp" 2>/dev/null; then mv "$B/gen/$name.tmp.cpp" "$B/gen/$name.cpp"; else rm "$B/gen/$name.tmp.cpp"; fi
  compile "$B/gen/$name.cpp" "$B/obj/cuda_$name.o"
done
compile "$ROOT/native/cuda/emu/emu.cpp" "$B/obj/emu.o"
src_list() { (cd "$ROOT" && node -e "const s=require('./native/sources.js'); console.log((s['$1']||[]).join('\n'))"); }
for f in $(src_list core); do compile "$ROOT/$f" "$B/obj/$(echo "$f" | tr / _).o"; done
isa_flags() { (cd "$ROOT" && node native/sources.js flags "$1"); }
for isa in avx512 amx avx2; do
  fl=$(isa_flags $isa)
  for f in $(src_list $isa); do compile "$ROOT/$f" "$B/obj/$(echo "$f" | tr / _).o" $fl; done
done
for f in test/native/test_main.cpp test/native/test_cuda.cpp; do compile "$ROOT/$f" "$B/obj/$(echo "$f" | tr / _).o"; done

if [ ${#pending[@]} -gt 0 ]; then
  echo "emu: compiling ${#pending[@]} files" >&2
  printf '%s\n' "${pending[@]}" | xargs -d '\n' -P "$JOBS" -I{} sh -c '{}'
fi
g++ $SAN -o "$B/mveb_cuda_emu_tests" "${objs[@]}" -lpthread
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:detect_stack_use_after_return=0} "$B/mveb_cuda_emu_tests" "$FILTER"
