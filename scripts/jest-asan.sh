#!/bin/sh
# jest-asan.sh: the jest suite (the whole TypeScript API, the CLI and the N-API binding) against an
# addon built with AddressSanitizer + UBSan: a use after free, an out-of-bounds access or undefined
# behaviour behind any public call aborts the run with a report. The addon is the CPU-only node-gyp
# build (binding.gyp) of a copy of native/ in $MVEB_ASAN_ADDON (default /tmp/mveb-addon-asan); node
# runs with the sanitizer runtimes preloaded and MVEB_ADDON_PATH pointing at it. Leak checking is off
# (node itself keeps memory until exit). The one test that measures RSS (tensors dropped -> RSS back to
# baseline) runs separately without ASan's quarantine, which otherwise holds freed memory on purpose.
#   npm run test:asan     (~2 min build + ~1.5 min tests on 2 cores; needs gcc's libasan / libubsan)
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MVEB_ASAN_ADDON:-/tmp/mveb-addon-asan}
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
rm -rf "$build/native" "$build/binding.gyp"
mkdir -p "$build"
cp -r "$root/native" "$root/binding.gyp" "$build/"
ln -sfn "$root/node_modules" "$build/node_modules"
(cd "$build" && CXXFLAGS="$san" LDFLAGS="-fsanitize=address,undefined" "$root/node_modules/.bin/node-gyp" rebuild -j 2 >"$build/build.log" 2>&1) ||
  { tail -30 "$build/build.log"; exit 1; }
cd "$root"
npx tsc -p tsconfig.json
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
rss='RSS return to baseline'
export MVEB_ADDON_PATH="$build/build/Release/mveb.node" LD_PRELOAD="$preload" UBSAN_OPTIONS=print_stacktrace=1
ASAN_OPTIONS=detect_leaks=0 npx jest --runInBand -t "^(?!.*$rss)"
ASAN_OPTIONS=detect_leaks=0:quarantine_size_mb=0:allocator_release_to_os_interval_ms=0 npx jest --runInBand test/tensor.test.ts -t "$rss"
