// The one source list of the native addon, read by CMakeLists.txt (cmake-js build) and by
// binding.gyp (node-gyp build), so the two builds can never drift apart.
//   node native/sources.js            prints the lists as JSON
//   node native/sources.js cmake      prints CMake `set(...)` lines (CMakeLists.txt includes them)
//   node native/sources.js gyp KEY    prints one list, space separated (binding.gyp)
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
module.exports = sources;

if (require.main === module) {
  const mode = process.argv[2];
  if (mode === 'cmake') {
    for (const [k, v] of Object.entries(sources)) {
      console.log(`set(MVEB_${k.toUpperCase()}_SOURCES ${v.join(' ')})`);
    }
  } else if (mode === 'gyp') {
    console.log(sources[process.argv[3]].join(' '));
  } else {
    console.log(JSON.stringify(sources, null, 2));
  }
}
