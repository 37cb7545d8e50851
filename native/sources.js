// The one source list of the native addon, read by CMakeLists.txt (cmake-js build) and by
// binding.gyp (node-gyp build), so the two builds can never drift apart.
//   node native/sources.js            prints the lists as JSON
//   node native/sources.js cmake      prints CMake `set(...)` lines, lists and ISA flags (CMakeLists.txt includes them)
//   node native/sources.js gyp KEY    prints one list, space separated (binding.gyp)
//   node native/sources.js flags KEY  prints the compiler flags of an ISA group (avx512, amx, avx2)
// Files are found by folder and suffix: *_avx512.cpp, *_amx.cpp and *_avx2.cpp get their ISA flags,
// *.cu goes to the CUDA library, test/native/*.cpp to the native test executable.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
function list(dir, test) {
  const abs = path.join(root, dir);
  if (!fs.existsSync(abs)) return [];
  return fs.readdirSync(abs).filter(test).sort().map((f) => `${dir}/${f}`);
}
const isCpp = (f) => f.endsWith('.cpp');
const plain = (f) => isCpp(f) && !f.endsWith('_avx512.cpp') && !f.endsWith('_avx2.cpp') && !f.endsWith('_amx.cpp');

const sources = {
  // backend-agnostic core + the CPU backend's portable code + the data pipeline
  core: [...list('native/core', plain), ...list('native/cpu', plain), ...list('native/data', plain)],
  avx512: [...list('native/cpu', (f) => f.endsWith('_avx512.cpp')), ...list('native/data', (f) => f.endsWith('_avx512.cpp'))],
  amx: list('native/cpu', (f) => f.endsWith('_amx.cpp')),
  avx2: [...list('native/cpu', (f) => f.endsWith('_avx2.cpp')), ...list('native/data', (f) => f.endsWith('_avx2.cpp'))],
  cuda: [...list('native/cuda', (f) => f.endsWith('.cu') || isCpp(f))],
  binding: list('native/binding', isCpp),
  tests: list('test/native', isCpp),
};
// The compiler flags of the ISA-specific groups (the other groups take none).
const avx512Flags = ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mfma', '-mavx2'];
const flags = {
  avx512: avx512Flags,
  amx: [...avx512Flags, '-mavx512bf16', '-mamx-tile', '-mamx-bf16'],
  avx2: ['-mavx2', '-mfma'],
};
// (flags: not enumerable, so the source lists stay the only entries of the object)
Object.defineProperty(sources, 'flags', { value: flags, enumerable: false });
module.exports = sources;

if (require.main === module) {
  const mode = process.argv[2];
  if (mode === 'cmake') {
    for (const [k, v] of Object.entries(sources)) {
      console.log(`set(MVEB_${k.toUpperCase()}_SOURCES ${v.join(' ')})`);
    }
    for (const [k, v] of Object.entries(flags)) console.log(`set(MVEB_${k.toUpperCase()}_FLAGS ${v.join(' ')})`);
  } else if (mode === 'gyp') {
    console.log(sources[process.argv[3]].join(' '));
  } else if (mode === 'flags') {
    console.log(flags[process.argv[3]].join(' '));
  } else {
    console.log(JSON.stringify(sources, null, 2));
  }
}
