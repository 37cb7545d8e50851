#!/usr/bin/env node
// test-native.js: runs the native (C++) test executable, build/mveb_native_tests, built by
// `npm install` through cmake-js. Arguments are passed on (a substring filter, e.g. "gemm").
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const exe = path.resolve(__dirname, '..', 'build', 'mveb_native_tests');
if (!fs.existsSync(exe)) {
  console.error(`mveb: ${exe} is missing. It is built by \`npm install\` / \`npm run build:native\` (cmake-js); ` +
    'the node-gyp build makes the addon only.');
  process.exit(1);
}
const r = spawnSync(exe, process.argv.slice(2), { stdio: 'inherit' });
process.exit(r.status === null ? 1 : r.status);
