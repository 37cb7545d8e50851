#!/usr/bin/env node
// train-step.js: ResNet training-step throughput (forward in train mode + backward + SGD momentum
// step, input gradient skipped as PyTorch skips it) on the CPU backend, side by side in the same run
// with PyTorch 1.13 CPU (benchmarks/train_step_torch.py via /usr/bin/python3, same thread count) in
// NCHW and channels_last. Prints images/s (wall) and images per CPU-second (process CPU time: less
// sensitive to other load on a shared machine), the ratios ours / best PyTorch, our peak native
// memory and each process's peak RSS.
//   npm run bench:train-step                 resnet50 224x224 batch 16, resnet18-cifar 32x32 batch 128
//   node benchmarks/train-step.js --steps 3  more timed steps (default 2, after 1 warm-up step)
//   node benchmarks/train-step.js --only r18 one configuration (r18 | r50)
//   node benchmarks/train-step.js --matmul-precision high   our side at matmul precision 'high'
//                                            (bf16x3 on AMX CPUs; default: MVEB_MATMUL_PRECISION, else
//                                            highest = fp32). PyTorch always runs fp32 here (1.13 CPU).
//   node benchmarks/train-step.js --matmul-precision both   ours at highest and at high, one row each,
//                                            against the same PyTorch measurements
// Env: MVEB_ADDON_PATH (default build/Release/mveb.node), MVEB_NUM_THREADS (default 2, = PyTorch's
// threads here), MVEB_MATMUL_PRECISION, MVEB_BENCH_NO_TORCH=1 to skip PyTorch. The header and every
// row name the precision our side ran at (as the addon reports it) and whether AMX was used.
// Napkin math (anchors.md): resnet50 224 forward is 4.1 GMAC = 8.2 GFLOP/image, a training step ~3x
// that = 24.7 GFLOP/image; at the 2-core FP32 peak of ~400 GFLOP/s the floor is ~16 img/s. That peak
// is anchors.md's (its Zen 5 VM); MVEB_FP32_PEAK_GFLOPS sets this CPU's 2-core figure (kernels_bench
// 1 peak gives one core's FMA ceiling: 245 GFLOP/s on the Xeon VM of 2026-12-01, so 490).
// resnet18-cifar 32x32: 0.56 GMAC = 1.11 GFLOP/image forward, ~3.3 GFLOP/image per step, floor ~120
// img/s. (Winograd convolutions do fewer multiplications than these direct-convolution counts.)
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

if (!process.env.MVEB_NUM_THREADS) process.env.MVEB_NUM_THREADS = '2';
const threads = Number(process.env.MVEB_NUM_THREADS);
const PEAK_2CORE_GFLOPS = process.env.MVEB_FP32_PEAK_GFLOPS ? Number(process.env.MVEB_FP32_PEAK_GFLOPS) : 400;
if (!(PEAK_2CORE_GFLOPS > 0)) {
  console.error(`MVEB_FP32_PEAK_GFLOPS: expected a positive number of GFLOP/s, found '${process.env.MVEB_FP32_PEAK_GFLOPS}'`);
  process.exit(1);
}
const PEAK_SOURCE = process.env.MVEB_FP32_PEAK_GFLOPS ? 'MVEB_FP32_PEAK_GFLOPS' : "anchors.md's Zen 5 figure; set MVEB_FP32_PEAK_GFLOPS for this CPU";
const root = path.resolve(__dirname, '..');
const addonPath = process.env.MVEB_ADDON_PATH || path.join(root, 'build', 'Release', 'mveb.node');
if (!fs.existsSync(addonPath)) {
  console.error(`addon not found at ${addonPath}: run npm run build:native (or set MVEB_ADDON_PATH)`);
  process.exit(1);
}
const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const PRECISIONS = ['highest', 'high'];
const envPrecision = process.env.MVEB_MATMUL_PRECISION;
if (envPrecision !== undefined && !PRECISIONS.includes(envPrecision)) {
  console.error(`MVEB_MATMUL_PRECISION must be highest or high, found '${envPrecision}'`);
  process.exit(1);
}
const requestedPrecision = opt('--matmul-precision', envPrecision || 'highest');
if (![...PRECISIONS, 'both'].includes(requestedPrecision)) {
  console.error(`--matmul-precision must be highest, high or both, found '${requestedPrecision}'`);
  process.exit(1);
}
const ourPrecisions = requestedPrecision === 'both' ? PRECISIONS : [requestedPrecision];
const addon = require(addonPath);
const amx = addon.backends().cpu.amx;
// what our products actually ran as: 'high' without AMX computes what 'highest' does
const labelOf = (p) => (p === 'high' ? (amx ? 'high (bf16x3 on AMX)' : 'high (no AMX: fp32)') : 'highest (fp32)');
const steps = Number(opt('--steps', '2'));
const only = opt('--only', null);
// 3 x forward, 2 FLOP per MAC (r18s: resnet18-cifar at width x0.125, 1 channel, 28x28: ~6.9 MMAC forward)
const FLOP_PER_IMAGE = { r18s: 3 * 2 * 6.9e6, r50: 3 * 2 * 4.11e9, r18: 3 * 2 * 0.556e9 };
const configs = [
  // smaller first: the native peak counter is process-wide, so each row's peak covers it and those before
  // r18s: the default `mveb pretrain` encoder (2 views x 256 images of Fashion-MNIST per step)
  { key: 'r18s', name: 'resnet18-cifar x0.125 1x28x28 batch 512 (the default pretrain encoder)', depth: 18,
    stem: 'cifar', batch: 512, size: 28, width: 0.125, channels: 1 },
  { key: 'r18', name: 'resnet18-cifar 32x32 batch 128', depth: 18, stem: 'cifar', batch: 128, size: 32 },
  { key: 'r50', name: 'resnet50 224x224 batch 16', depth: 50, stem: 'imagenet', batch: 16, size: 224 },
].filter((c) => !only || c.key === only);

function torchAvailable() {
  if (process.env.MVEB_BENCH_NO_TORCH) return 'disabled by MVEB_BENCH_NO_TORCH';
  const r = spawnSync('/usr/bin/python3', ['-c', 'import torch, torchvision'], { encoding: 'utf8' });
  return r.status === 0 ? null : `PyTorch not importable by /usr/bin/python3: ${(r.stderr || '').trim().split('\n').pop()}`;
}

async function ours(c) {
  const net = addon.modelResnet({ depth: c.depth, stem: c.stem, inChannels: c.channels || 3, widthMultiplier: c.width || 1,
    zeroInitResidual: true, seed: 0, device: 'cpu' });
  const info = addon.modelInfo(net);
  const x = addon.tensorRandn([c.batch, c.channels || 3, c.size, c.size], 1, 'cpu');
  const g = addon.tensorRandn([c.batch, info.featureDim], 2, 'cpu');
  const times = [];
  const cpu = [];
  for (let i = 0; i <= steps; i++) {
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    addon.modelZeroGrad(net);
    const y = await addon.modelForward(net, x, true);
    await addon.modelBackward(net, g, false);
    const r = await addon.modelOptimizerStep(net, { kind: 'sgd', lr: 0.01, momentum: 0.9, weightDecay: 1e-4 });
    if (!r.finite) throw new Error('non-finite gradients in the benchmark');
    y.dispose();
    if (i > 0) {
      times.push(Number(process.hrtime.bigint() - t0) / 1e9);
      const c = process.cpuUsage(c0);
      cpu.push((c.user + c.system) / 1e6);
    }
  }
  const peak = addon.memory().cpu.peakBytes;
  const activationBytes = addon.modelInfo(net).activationBytes;
  addon.modelDispose(net);
  x.dispose();
  g.dispose();
  return { imagesPerS: c.batch / Math.min(...times), imagesPerCpuS: c.batch / Math.min(...cpu), times, peak, activationBytes };
}

function torchRun(c, fmt) {
  const r = spawnSync('/usr/bin/python3', [path.join(__dirname, 'train_step_torch.py'), String(c.depth), c.stem, String(c.batch),
    String(c.size), String(steps), String(threads), fmt, String(c.width || 1), String(c.channels || 3)],
  { encoding: 'utf8', env: { ...process.env, OMP_NUM_THREADS: String(threads) } });
  if (r.status !== 0) return { error: (r.stderr || '').trim().split('\n').pop() };
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

const mib = (b) => (b / 2 ** 20).toFixed(0) + ' MiB';

(async () => {
  const why = torchAvailable();
  console.log(`train-step benchmark: ${threads} threads, ${steps} timed steps after 1 warm-up, best step reported; addon ${addonPath}`);
  console.log(`our matmul precision: ${ourPrecisions.map(labelOf).join(' and ')}; PyTorch: fp32`);
  if (why) console.log(`PyTorch side skipped: ${why}`);
  const rows = [];
  for (const c of configs) {
    const mine = [];
    for (const p of ourPrecisions) {
      addon.setMatmulPrecision(p);
      mine.push({ precision: addon.getMatmulPrecision(), o: await ours(c) });
    }
    const tn = why ? null : torchRun(c, 'nchw');
    const tc = why ? null : torchRun(c, 'channels_last');
    const bestTorch = Math.max(tn && tn.images_per_s ? tn.images_per_s : 0, tc && tc.images_per_s ? tc.images_per_s : 0);
    const bestTorchCpu = Math.max(tn && tn.images_per_cpu_s ? tn.images_per_cpu_s : 0, tc && tc.images_per_cpu_s ? tc.images_per_cpu_s : 0);
    const floor = (threads / 2) * PEAK_2CORE_GFLOPS * 1e9 / FLOP_PER_IMAGE[c.key];
    for (const { precision, o } of mine) rows.push({ c, o, precision, tn, tc, bestTorch, bestTorchCpu, floor });
    const fmt = (t) => (!t ? 'n/a' : t.error ? `error: ${t.error}` : `${t.images_per_s.toFixed(2)} img/s, ${t.images_per_cpu_s.toFixed(2)} img/CPU-s (peak RSS ${mib(t.max_rss_bytes)})`);
    console.log(`\n${c.name}`);
    for (const { precision, o } of mine)
      console.log(`  ours, ${precision.padEnd(7)}        ${o.imagesPerS.toFixed(2)} img/s, ${o.imagesPerCpuS.toFixed(2)} img/CPU-s (steps ${o.times.map((t) => t.toFixed(2)).join(', ')} s; ` +
      `peak native memory ${mib(o.peak)}, activations arena ${mib(o.activationBytes)}; ${(100 * o.imagesPerS / floor).toFixed(0)}% of a ${PEAK_2CORE_GFLOPS} GFLOP/s 2-core FP32 peak (${PEAK_SOURCE}) in direct-convolution FLOP, which gives ${floor.toFixed(0)} img/s)`);
    console.log(`  PyTorch NCHW         ${fmt(tn)}`);
    console.log(`  PyTorch channels_last ${fmt(tc)}`);
    if (bestTorch > 0)
      for (const { precision, o } of mine)
        console.log(`  ratio ours (${precision}) / best PyTorch: ${(o.imagesPerS / bestTorch).toFixed(2)}x wall, ${(o.imagesPerCpuS / bestTorchCpu).toFixed(2)}x per CPU-second`);
  }
  console.log('\n| configuration | our matmul precision | ours img/s | PyTorch NCHW | PyTorch channels_last | ours / best PyTorch (wall) | (per CPU-s) | our peak memory |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const v = (t) => (t && t.images_per_s ? t.images_per_s.toFixed(2) : 'n/a');
    console.log(`| ${r.c.name} | ${labelOf(r.precision)} | ${r.o.imagesPerS.toFixed(2)} | ${v(r.tn)} | ${v(r.tc)} | ${r.bestTorch ? (r.o.imagesPerS / r.bestTorch).toFixed(2) + 'x' : 'n/a'} | ${r.bestTorchCpu ? (r.o.imagesPerCpuS / r.bestTorchCpu).toFixed(2) + 'x' : 'n/a'} | ${mib(r.o.peak)} |`);
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
