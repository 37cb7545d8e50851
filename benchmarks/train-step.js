#!/usr/bin/env node
// train-step.js: ResNet training-step throughput (forward in train mode + backward + SGD momentum
// step, input gradient skipped as PyTorch skips it) on the CPU backend, side by side in the same run
// with PyTorch 1.13 CPU (benchmarks/train_step_torch.py via /usr/bin/python3, same thread count) in
// NCHW and channels_last. Prints images/s (wall) and images per CPU-second (process CPU time: less
// sensitive to other load on a shared machine), the ratios ours / best PyTorch, our peak native
// memory and each process's peak RSS.
//   npm run bench:train-step                 resnet50 224x224 batch 16, resnet18-cifar 32x32 batch 128
//   node benchmarks/train-step.js --steps 3  more timed steps (default 2, after 1 warm-up step)
//   node benchmarks/train-step.js --only r18 one configuration (r18s | r18 | r50)
//   node benchmarks/train-step.js --interleave --steps 8   our step and a step of each PyTorch layout in
//                                            turn, 8 rounds; the median of the rounds' ratios (the fair
//                                            figure on a shared machine whose speed drifts by the minute)
//   node benchmarks/train-step.js --matmul-precision high   our side at matmul precision 'high'
//                                            (bf16x3 on AMX CPUs; default: MVEB_MATMUL_PRECISION, else
//                                            highest = fp32). PyTorch always runs fp32 here (1.13 CPU).
//   node benchmarks/train-step.js --matmul-precision both   ours at highest and at high, one row each,
//                                            against the same PyTorch measurements
// PyTorch runs with its freed memory kept for reuse (benchmarks/torch_malloc.py, as PyTorch's tuning guide
// advises; with glibc's defaults it page-faults its activations in every step: resnet50 5.4-6.7 instead
// of ~8 img/s here); MVEB_TORCH_MALLOC=default reproduces the setup of figures measured before commit 36a6970.
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
const readline = require('readline');
const { spawn, spawnSync } = require('child_process');

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
const interleave = args.includes('--interleave');
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

// Our side of one configuration: step() runs one training step and returns its wall and CPU seconds;
// finish() frees the model and returns the peak native memory and the activation arena's size.
function makeOurs(c) {
  const net = addon.modelResnet({ depth: c.depth, stem: c.stem, inChannels: c.channels || 3, widthMultiplier: c.width || 1,
    zeroInitResidual: true, seed: 0, device: 'cpu' });
  const info = addon.modelInfo(net);
  const x = addon.tensorRandn([c.batch, c.channels || 3, c.size, c.size], 1, 'cpu');
  const g = addon.tensorRandn([c.batch, info.featureDim], 2, 'cpu');
  return {
    async step() {
      const t0 = process.hrtime.bigint();
      const c0 = process.cpuUsage();
      addon.modelZeroGrad(net);
      const y = await addon.modelForward(net, x, true);
      await addon.modelBackward(net, g, false);
      const r = await addon.modelOptimizerStep(net, { kind: 'sgd', lr: 0.01, momentum: 0.9, weightDecay: 1e-4 });
      if (!r.finite) throw new Error('non-finite gradients in the benchmark');
      y.dispose();
      const cu = process.cpuUsage(c0);
      return { s: Number(process.hrtime.bigint() - t0) / 1e9, cpu: (cu.user + cu.system) / 1e6 };
    },
    finish() {
      const out = { peak: addon.memory().cpu.peakBytes, activationBytes: addon.modelInfo(net).activationBytes };
      addon.modelDispose(net);
      x.dispose();
      g.dispose();
      return out;
    },
  };
}

async function ours(c) {
  const run = makeOurs(c);
  await run.step();  // warm-up
  const times = [];
  const cpu = [];
  for (let i = 0; i < steps; i++) {
    const t = await run.step();
    times.push(t.s);
    cpu.push(t.cpu);
  }
  const { peak, activationBytes } = run.finish();
  return { imagesPerS: c.batch / Math.min(...times), imagesPerCpuS: c.batch / Math.min(...cpu), times, peak, activationBytes };
}

// train_step_torch.py's command line for configuration c, layout fmt, and STEPS (a count or 'serve'),
// and its environment (PyTorch's threads).
const torchArgs = (c, fmt, stepsArg) => [path.join(__dirname, 'train_step_torch.py'), String(c.depth), c.stem, String(c.batch),
  String(c.size), String(stepsArg), String(threads), fmt, String(c.width || 1), String(c.channels || 3)];
const torchEnv = () => ({ ...process.env, OMP_NUM_THREADS: String(threads) });

function torchRun(c, fmt) {
  const r = spawnSync('/usr/bin/python3', torchArgs(c, fmt, steps), { encoding: 'utf8', env: torchEnv() });
  if (r.status !== 0) return { error: (r.stderr || '').trim().split('\n').pop() };
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

const mib = (b) => (b / 2 ** 20).toFixed(0) + ' MiB';

// PyTorch's side as a child process that runs one step per request (train_step_torch.py ... serve).
function torchServer(c, fmt) {
  const child = spawn('/usr/bin/python3', torchArgs(c, fmt, 'serve'), { env: torchEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const lines = [];
  let waiting = null;
  let closed = false;
  const failure = () => new Error(`PyTorch (${fmt}) ended: ${stderr.trim().split('\n').pop() || 'no message'}`);
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    if (waiting) {
      const w = waiting;
      waiting = null;
      w.resolve(l);
    } else lines.push(l);
  });
  child.on('close', () => {
    closed = true;
    if (waiting) waiting.reject(failure());
    waiting = null;
  });
  const next = async () => JSON.parse(await (lines.length ? lines.shift()
    : closed ? Promise.reject(failure()) : new Promise((resolve, reject) => { waiting = { resolve, reject }; })));
  return {
    ready: next,
    step: () => { child.stdin.write('step\n'); return next(); },
    quit: () => { child.stdin.end('quit\n'); return next(); },
  };
}

const median = (v) => {
  const a = [...v].sort((p, q) => p - q);
  return a.length % 2 ? a[(a.length - 1) / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
};

// --interleave: our step and one step of each PyTorch layout in turn, `steps` rounds (the order rotated
// every round), so a change in the machine's speed (it is shared) reaches both sides alike; each
// round's ratio compares steps that ran within seconds of each other.
async function interleaved(c) {
  const sides = [{ name: 'ours' }, { name: 'nchw', t: torchServer(c, 'nchw') }, { name: 'channels_last', t: torchServer(c, 'channels_last') }];
  for (const side of sides) if (side.t) await side.t.ready();  // after PyTorch's warm-up steps, one at a time
  const run = makeOurs(c);
  await run.step();  // warm-up
  sides[0].step = () => run.step();
  for (const side of sides.slice(1)) side.step = () => side.t.step();
  const rounds = [];
  for (let i = 0; i < steps; i++) {
    const r = {};
    for (let j = 0; j < sides.length; j++) {
      const side = sides[(i + j) % sides.length];
      r[side.name] = await side.step();
    }
    rounds.push(r);
  }
  const { peak } = run.finish();
  const rss = {};
  for (const side of sides.slice(1)) rss[side.name] = (await side.t.quit()).max_rss_bytes;
  return { rounds, peak, rss };
}

(async () => {
  const why = torchAvailable();
  console.log(`train-step benchmark: ${threads} threads, ${steps} timed steps after 1 warm-up, best step reported; addon ${addonPath}`);
  const torchMalloc = process.env.MVEB_TORCH_MALLOC === 'default' ? "glibc malloc's defaults (MVEB_TORCH_MALLOC=default)"
    : 'freed memory kept for reuse, as its tuning guide advises (benchmarks/torch_malloc.py; MVEB_TORCH_MALLOC=default: glibc defaults)';
  console.log(`our matmul precision: ${ourPrecisions.map(labelOf).join(' and ')}; PyTorch: fp32, ${torchMalloc}`);
  if (why) console.log(`PyTorch side skipped: ${why}`);
  if (interleave && why) console.log('(--interleave needs PyTorch: our side alone, as without it)');
  if (interleave && !why) {
    if (ourPrecisions.length > 1) {
      console.error('--interleave runs one matmul precision at a time');
      process.exit(1);
    }
    addon.setMatmulPrecision(ourPrecisions[0]);
    console.log(`interleaved: ${steps} rounds of one step each (ours, PyTorch NCHW, PyTorch channels_last; the order rotates), after each side's warm-up step`);
    const table = [];
    for (const c of configs) {
      const { rounds, peak, rss } = await interleaved(c);
      console.log(`\n${c.name}`);
      const ratios = rounds.map((r) => Math.min(r.nchw.s, r.channels_last.s) / r.ours.s);
      const cpuRatios = rounds.map((r) => Math.min(r.nchw.cpu, r.channels_last.cpu) / r.ours.cpu);
      rounds.forEach((r, i) => console.log(`  round ${i + 1}: ours ${r.ours.s.toFixed(3)} s, NCHW ${r.nchw.s.toFixed(3)} s, channels_last ` +
        `${r.channels_last.s.toFixed(3)} s: ${ratios[i].toFixed(2)}x wall, ${cpuRatios[i].toFixed(2)}x per CPU-second`));
      const ips = (side) => c.batch / median(rounds.map((r) => r[side].s));
      const row = { c, ours: ips('ours'), nchw: ips('nchw'), cl: ips('channels_last'), ratio: median(ratios),
        lo: Math.min(...ratios), hi: Math.max(...ratios), cpu: median(cpuRatios), peak };
      table.push(row);
      console.log(`  median step: ours ${row.ours.toFixed(2)} img/s, PyTorch NCHW ${row.nchw.toFixed(2)}, channels_last ${row.cl.toFixed(2)} ` +
        `(peak native memory ${mib(peak)}; PyTorch peak RSS ${mib(rss.nchw)} / ${mib(rss.channels_last)})`);
      console.log(`  ratio ours / faster PyTorch layout of the same round: median ${row.ratio.toFixed(2)}x (${row.lo.toFixed(2)}-${row.hi.toFixed(2)}x), ` +
        `per CPU-second median ${row.cpu.toFixed(2)}x`);
    }
    console.log(`\n| configuration | our matmul precision | ours img/s (median step) | PyTorch NCHW | PyTorch channels_last | ours / best PyTorch, median of ${steps} rounds (range) | (per CPU-s) | our peak memory |`);
    console.log('|---|---|---|---|---|---|---|---|');
    for (const r of table)
      console.log(`| ${r.c.name} | ${labelOf(ourPrecisions[0])} | ${r.ours.toFixed(2)} | ${r.nchw.toFixed(2)} | ${r.cl.toFixed(2)} | ${r.ratio.toFixed(2)}x (${r.lo.toFixed(2)}-${r.hi.toFixed(2)}) | ${r.cpu.toFixed(2)}x | ${mib(r.peak)} |`);
    return;
  }
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
