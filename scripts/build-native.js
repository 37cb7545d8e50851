#!/usr/bin/env node
// build-native.js: builds the native addon with cmake-js (run by `npm install` / `npm ci` and
// `npm run build:native`). Always the CPU backend; the CUDA backend too when nvcc is found.
//   MVEB_CUDA=auto|on|off     auto (default): CUDA when nvcc is found; on: fail without nvcc; off: CPU only
//   MVEB_CUDA_ARCHS=90        CMake CUDA_ARCHITECTURES list; a plain number embeds SASS + PTX
//   MVEB_BUILD_JOBS=N         parallel compile jobs (default: number of cores)
// The build is configured every time, so a changed switch always applies. Output:
// build/Release/mveb.node and build/mveb_native_tests.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const mode = (process.env.MVEB_CUDA || 'auto').toLowerCase();
if (!['auto', 'on', 'off'].includes(mode)) {
  console.error(`mveb: MVEB_CUDA must be auto, on or off (found '${process.env.MVEB_CUDA}')`);
  process.exit(1);
}
const archs = process.env.MVEB_CUDA_ARCHS || '90';
if (!/^[0-9a-z;\- ]+$/i.test(archs)) {
  console.error(`mveb: MVEB_CUDA_ARCHS must be a list like "90" or "80;90" (found '${archs}')`);
  process.exit(1);
}
const jobs = Number(process.env.MVEB_BUILD_JOBS) || os.cpus().length || 1;

function findNvcc() {
  const candidates = [];
  if (process.env.CUDACXX) candidates.push(process.env.CUDACXX);
  for (const dir of (process.env.PATH || '').split(path.delimiter)) if (dir) candidates.push(path.join(dir, 'nvcc'));
  if (process.env.CUDA_HOME) candidates.push(path.join(process.env.CUDA_HOME, 'bin', 'nvcc'));
  candidates.push('/usr/local/cuda/bin/nvcc');
  return candidates.find((p) => {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

const nvcc = mode === 'off' ? undefined : findNvcc();
if (mode === 'on' && !nvcc) {
  console.error(
    'mveb: MVEB_CUDA=on but no CUDA compiler (nvcc) was found on PATH, in CUDACXX, CUDA_HOME or /usr/local/cuda. ' +
      'Install the CUDA toolkit or use MVEB_CUDA=auto/off.',
  );
  process.exit(1);
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
function cmakeJsRun(command, cudaMode) {
  const args = [cmakeJs, command, '-d', root, '-p', String(jobs), `--CDMVEB_CUDA=${cudaMode}`, `--CDMVEB_CUDA_ARCHS=${archs}`];
  if (cudaMode !== 'off' && nvcc) args.push(`--CDCMAKE_CUDA_COMPILER=${nvcc}`);
  console.log(`mveb: cmake-js ${command} (MVEB_CUDA=${cudaMode}${nvcc && cudaMode !== 'off' ? `, nvcc ${nvcc}, archs ${archs}` : ''})`);
  return spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' }).status === 0;
}

const t0 = Date.now();
let cudaMode = nvcc ? mode : 'off';
if (mode === 'auto' && nvcc) cudaMode = 'on';
let ok = cmakeJsRun('configure', cudaMode) && cmakeJsRun('build', cudaMode);
if (!ok && mode === 'auto' && cudaMode === 'on') {
  console.warn('\nmveb: WARNING: the build with the CUDA backend failed (see above); building the CPU-only addon instead.');
  console.warn('mveb: set MVEB_CUDA=on to make this an error, or MVEB_CUDA=off to skip CUDA.\n');
  cudaMode = 'off';
  ok = cmakeJsRun('configure', 'off') && cmakeJsRun('build', 'off');
}
if (!ok) {
  console.error('mveb: native build failed.');
  process.exit(1);
}
console.log(
  `mveb: native build done in ${((Date.now() - t0) / 1000).toFixed(0)} s: CPU backend` +
    (cudaMode === 'on' ? ` + CUDA backend (${archs})` : ' (CUDA backend not built)'),
);
