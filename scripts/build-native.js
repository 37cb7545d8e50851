#!/usr/bin/env node
// build-native.js: builds the native addon with cmake-js (run by `npm install` / `npm ci` and
// `npm run build:native`). Always the CPU backend; the CUDA backend too when nvcc is found. Without a
// `cmake` on PATH it builds the CPU-only addon with node-gyp (binding.gyp, the same sources) instead,
// so `npm install mveb` works on a machine that has only what node-gyp needs (python3, make, a C++
// compiler).
//   MVEB_CUDA=auto|on|off     auto (default): CUDA when nvcc is found; on: fail without nvcc; off: CPU only
//   MVEB_CUDA_ARCHS=90        CMake CUDA_ARCHITECTURES list; a plain number embeds SASS + PTX
//   MVEB_BUILD_JOBS=N         parallel compile jobs (default: number of cores)
//   MVEB_BUILD=auto|cmake|gyp auto (default): cmake-js when cmake is on PATH, else node-gyp; cmake: fail
//                             without cmake; gyp: node-gyp (CPU only, no native test executable)
//   --dry-run                 print the build commands instead of running them (test/package.test.ts)
// The build is configured every time, so a changed switch always applies. Output:
// build/Release/mveb.node and, from cmake-js, build/mveb_native_tests.
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
const buildMode = (process.env.MVEB_BUILD || 'auto').toLowerCase();
if (!['auto', 'cmake', 'gyp'].includes(buildMode)) {
  console.error(`mveb: MVEB_BUILD must be auto, cmake or gyp (found '${process.env.MVEB_BUILD}')`);
  process.exit(1);
}
const dryRun = process.argv.includes('--dry-run');

// Runs `node args...` (or, with --dry-run, prints it); true when it succeeded.
function runNode(args) {
  if (dryRun) {
    console.log(`mveb: would run: node ${args.join(' ')}`);
    return true;
  }
  return spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' }).status === 0;
}

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

// node-gyp's entry script: npm's own (npm sets npm_config_node_gyp for install scripts), else the copy
// bundled with the npm next to this node, else one installed in node_modules.
function findNodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  try {
    candidates.push(require.resolve('node-gyp/bin/node-gyp.js', { paths: [root] }));
  } catch {
    // not installed locally
  }
  return candidates.find((p) => p && fs.existsSync(p));
}

const haveCmake = buildMode !== 'gyp' && spawnSync('cmake', ['--version'], { stdio: 'ignore' }).status === 0;
if (!haveCmake) {
  if (buildMode === 'cmake') {
    console.error('mveb: MVEB_BUILD=cmake but no cmake was found on PATH. Install CMake >= 3.18, or use MVEB_BUILD=auto/gyp.');
    process.exit(1);
  }
  if (mode === 'on') {
    console.error(
      `mveb: MVEB_CUDA=on needs the cmake-js build (the CUDA backend is built by CMake only), but ${buildMode === 'gyp' ? 'MVEB_BUILD=gyp was set' : 'no cmake was found on PATH'}. ` +
        'Install CMake >= 3.18, or use MVEB_CUDA=auto/off.',
    );
    process.exit(1);
  }
  const gyp = findNodeGyp();
  if (!gyp) {
    console.error('mveb: no cmake on PATH and no node-gyp found (npm bundles one): install CMake >= 3.18, or run the build through npm.');
    process.exit(1);
  }
  console.log(`mveb: ${buildMode === 'gyp' ? 'MVEB_BUILD=gyp' : 'no cmake on PATH'}: building the CPU-only addon with node-gyp (binding.gyp). ` +
    'Install CMake >= 3.18 and rebuild (npm rebuild mveb) for the CUDA backend and the native test executable.');
  const t0 = Date.now();
  if (!runNode([gyp, 'rebuild', '-j', String(jobs)])) {
    console.error('mveb: native build (node-gyp) failed.');
    process.exit(1);
  }
  console.log(`mveb: native build done in ${((Date.now() - t0) / 1000).toFixed(0)} s: CPU backend (node-gyp; CUDA backend not built)`);
  process.exit(0);
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
  return runNode(args);
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
