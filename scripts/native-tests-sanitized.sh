#!/bin/sh
# native-tests-sanitized.sh: builds the native test executable (CPU backend) with a sanitizer and runs
# its tests; a report aborts the run (the plain build can only compare results).
#   address: AddressSanitizer + UBSan in /tmp/build-asan: out-of-bounds accesses, use after free,
#            leaks, undefined behaviour in the kernels, the model and the parsers
#   thread:  ThreadSanitizer in /tmp/build-tsan: data races in the thread pool and the multithreaded
#            kernels (the tests run 1-, 2- and 3-thread backends)
#   npm run test:native:asan | npm run test:native:tsan     every native test (~5 min each on 2 cores)
#   sh scripts/native-tests-sanitized.sh address safetensors:  the safetensors tests, with the 12,000-file fuzz
# The filter is a substring of the test names, as for `npm run test:native`. Results: benchmarks/RESULTS.md.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
kind=${1:-address}
[ $# -gt 0 ] && shift
case "$kind" in
  address) build=${MVEB_ASAN_BUILD:-/tmp/build-asan}
           flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
           export ASAN_OPTIONS=detect_leaks=1 ;;
  thread)  build=${MVEB_TSAN_BUILD:-/tmp/build-tsan}
           flags="-fsanitize=thread -g"
           export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ;;
  *) echo "usage: native-tests-sanitized.sh address|thread [test-filter]" >&2; exit 2 ;;
esac
cmake -S "$root" -B "$build" -G Ninja -DMVEB_CUDA=off -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" > "$build.configure.log"
cmake --build "$build" --target mveb_native_tests -j2
"$build/mveb_native_tests" "$@"
