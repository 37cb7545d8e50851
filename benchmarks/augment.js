#!/usr/bin/env node
// augment.js: benchmark of the native multi-crop augmentation (native/data) against the official
// PIL + torchvision pipeline (benchmarks/augment_torch.py via /usr/bin/python3, one process = one
// DataLoader worker), side by side in the same run. Reports images per second (an image = all its
// views) for our producer on 1 thread and on all cores, and the ratios.
//   node benchmarks/augment.js            three cases: 28x28x1 (Fashion-MNIST), 32x32x3, 256x256x3 -> 224/96
// Env: MVEB_ADDON_PATH (default build/Release/mveb.node), MVEB_BENCH_NO_TORCH=1 to skip PyTorch.
// Napkin floor: a 224 view costs ~2 x 224^2 x 3 x (4..8 taps) ~ 2-5 MFLOP for the resize and
// ~224^2 x 3 x 26 ~ 4 MFLOP for a sigma-2 blur: ~10 MFLOP, ~1 ms per view on one core at ~10 GFLOP/s
// of scalar code, so ~150 images/s/core with 2 global + 6 local views.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const addonPath = process.env.MVEB_ADDON_PATH || path.join(root, 'build', 'Release', 'mveb.node');
if (!fs.existsSync(addonPath)) {
  console.error(`addon not found at ${addonPath}: run npm run build:native (or set MVEB_ADDON_PATH)`);
  process.exit(1);
}
const addon = require(addonPath);

const cases = [
  { name: 'fmnist 28x28x1 -> 2x28 + 6x12', n: 2048, h: 28, w: 28, c: 1, globalSize: 28, localSize: 12, locals: 6, batch: 256, repeats: 4 },
  { name: 'cifar 32x32x3 -> 2x32 + 6x16', n: 2048, h: 32, w: 32, c: 3, globalSize: 32, localSize: 16, locals: 6, batch: 256, repeats: 3 },
  { name: 'imagenet 256x256x3 -> 2x224 + 6x96', n: 64, h: 256, w: 256, c: 3, globalSize: 224, localSize: 96, locals: 6, batch: 32, repeats: 2 },
];

function views(cs) {
  const norm = cs.c === 1 ? { mean: [0.5], std: [0.5] } : { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
  const common = { ratio: [3 / 4, 4 / 3], flipP: 0.5, jitterP: 0.8, grayscaleP: 0.2, ...norm };
  const v = [
    { size: cs.globalSize, scale: [0.4, 1], blurP: 1.0, solarizeP: 0, ...common },
    { size: cs.globalSize, scale: [0.4, 1], blurP: 0.1, solarizeP: 0.2, ...common },
  ];
  for (let i = 0; i < cs.locals; i++) v.push({ size: cs.localSize, scale: [0.05, 0.4], blurP: 0.5, ...common });
  return v;
}

async function ours(cs, threads) {
  const bytes = new Uint8Array(cs.n * cs.h * cs.w * cs.c);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 2654435761) >>> 24;
  const ds = addon.dataCreate(bytes, cs.n, cs.h, cs.w, cs.c, threads);
  const v = views(cs);
  const idx = (r) => Int32Array.from({ length: cs.batch }, (_, i) => (i * 7919 + r * 104729) % cs.n);
  const run = async (r) => (await addon.dataAugmentBatch(ds, idx(r), v, 1, r, 'cpu')).forEach((t) => t.dispose());
  await run(0);
  const t0 = process.hrtime.bigint();
  for (let r = 1; r <= cs.repeats; r++) await run(r);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  addon.dataDispose(ds);
  return (cs.batch * cs.repeats) / s;
}

(async () => {
  const cores = os.cpus().length;
  let torch = {};
  if (!process.env.MVEB_BENCH_NO_TORCH) {
    const r = spawnSync('/usr/bin/python3', [path.join(__dirname, 'augment_torch.py'), JSON.stringify(cases)], { encoding: 'utf8' });
    if (r.status === 0) torch = JSON.parse(r.stdout.trim().split('\n').pop());
    else console.error(`PyTorch side failed: ${r.stderr.split('\n').slice(-3).join(' ')}`);
  }
  console.log(`machine: ${os.cpus()[0].model}, ${cores} cores; addon ${addonPath}`);
  console.log('case'.padEnd(38) + 'ours 1 thr'.padStart(12) + `ours ${cores} thr`.padStart(12) + 'PIL+tv 1 proc'.padStart(15) + '  ratio (1 vs 1)');
  for (const cs of cases) {
    const one = await ours(cs, 1);
    const all = await ours(cs, cores);
    const t = torch[cs.name];
    console.log(
      cs.name.padEnd(38) + one.toFixed(0).padStart(12) + all.toFixed(0).padStart(12) +
        (t ? t.toFixed(0) : '-').padStart(15) + (t ? `  ${(one / t).toFixed(2)}x` : ''),
    );
  }
  console.log('(images/s; an image = all its views)');
})();
