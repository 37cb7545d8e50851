#!/bin/sh
# fuzz-safetensors-asan.sh: builds the native test executable with AddressSanitizer + UBSan in
# /tmp/build-asan and runs the safetensors tests, including the 12,000-file mutation fuzz, so an
# out-of-bounds read in the parser would abort the run (the plain build can only check that every
# parse either succeeds with in-range entries or throws mveb::Error).
#   sh scripts/fuzz-safetensors-asan.sh     (a few minutes on 2 cores; result in benchmarks/RESULTS.md)
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MVEB_ASAN_BUILD:-/tmp/build-asan}
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
cmake -S "$root" -B "$build" -G Ninja -DMVEB_CUDA=off -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > "$build.configure.log"
cmake --build "$build" --target mveb_native_tests -j2
ASAN_OPTIONS=detect_leaks=1 "$build/mveb_native_tests" "safetensors:"
