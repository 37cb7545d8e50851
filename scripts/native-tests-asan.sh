#!/bin/sh
# native-tests-asan.sh: builds the native test executable with AddressSanitizer + UBSan (CPU backend
# only) in /tmp/build-asan and runs its tests: an out-of-bounds access, a leak or undefined behaviour in
# the kernels, the model or the parsers aborts the run (the plain build can only compare results).
#   npm run test:native:asan                    every native test (~3 min build + ~1.5 min on 2 cores)
#   sh scripts/native-tests-asan.sh safetensors:  the safetensors tests, with the 12,000-file mutation fuzz
# The filter is a substring of the test names, as for `npm run test:native`. Results: benchmarks/RESULTS.md.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MVEB_ASAN_BUILD:-/tmp/build-asan}
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
cmake -S "$root" -B "$build" -G Ninja -DMVEB_CUDA=off -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > "$build.configure.log"
cmake --build "$build" --target mveb_native_tests -j2
ASAN_OPTIONS=detect_leaks=1 "$build/mveb_native_tests" "$@"
