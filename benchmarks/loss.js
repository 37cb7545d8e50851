#!/usr/bin/env node
// loss.js: benchmark of the vMF Stein score estimator (the heart of MVEBLoss) on the CPU backend, side
// by side in the same run with PyTorch (benchmarks/loss_torch.py via /usr/bin/python3, 2 threads):
// the official composition (mm, topk, exp, N x N x D broadcast, inverse, einsum; skipped where the
// N x N x D tensor does not fit) and a PyTorch Cholesky/solve version. Also times one full MVEBLoss
// forward (V = 2, gradients included) at each size, and the whole loss (forward + gradients) in the
// official setup (V = 8 views, estimator per 128 rows) against the official loss with autograd,
// checking our loss value and gradients against a float64 PyTorch run on the same inputs.
//   npm run bench:loss                    N in {256, 1024, 4096}, D = 2048
//   node benchmarks/loss.js 128,512 2048  other sizes
// Env: MVEB_ADDON_PATH (default build/Release/mveb.node), MVEB_NUM_THREADS (default 2 here, to match
// PyTorch), MVEB_BENCH_NO_TORCH=1 to skip PyTorch. PyTorch keeps its freed memory for reuse
// (benchmarks/torch_malloc.py; MVEB_TORCH_MALLOC=default for glibc's defaults).
// FLOP floor (anchors.md count): 2 N^2 D (S) + N^3 / 3 (Cholesky) + 2 N^2 D (solves), at the 2-core
// FP32 peak of ~400 GFLOP/s. Our code computes S as a triangle (N^2 D), so its own count is lower.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

if (!process.env.MVEB_NUM_THREADS) process.env.MVEB_NUM_THREADS = '2';
const root = path.resolve(__dirname, '..');
const addonPath = process.env.MVEB_ADDON_PATH || path.join(root, 'build', 'Release', 'mveb.node');
if (!fs.existsSync(addonPath)) {
  console.error(`addon not found at ${addonPath}: run npm run build:native (or set MVEB_ADDON_PATH)`);
  process.exit(1);
}
const addon = require(addonPath);
const PEAK = 400e9;

const Ns = (process.argv[2] || '256,1024,4096').split(',').map(Number);
const D = Number(process.argv[3] || 2048);

function unitRows(N, D, seed) {
  const h = addon.tensorRandn([N, D], seed, 'cpu');
  const z = addon.tensorReadSync(h);
  h.dispose();
  for (let i = 0; i < N; i++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += z[i * D + d] ** 2;
    const inv = 1 / Math.sqrt(s);
    for (let d = 0; d < D; d++) z[i * D + d] *= inv;
  }
  return z;
}

// Best wall time and best process CPU time (all threads: the pool's and libuv's; the JS thread idles
// while it awaits) over reps runs. On a shared, loaded machine the CPU time is the steadier figure.
async function best(fn, reps) {
  let t = Infinity;
  let cpu = Infinity;
  let out;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    out = await fn();
    const c = process.cpuUsage(c0);
    t = Math.min(t, Number(process.hrtime.bigint() - t0) / 1e9);
    cpu = Math.min(cpu, (c.user + c.system) / 1e6);
  }
  return [t, out, cpu];
}

function torchAvailable() {
  if (process.env.MVEB_BENCH_NO_TORCH) return 'disabled by MVEB_BENCH_NO_TORCH';
  const r = spawnSync('/usr/bin/python3', ['-c', 'import torch, numpy'], { encoding: 'utf8' });
  return r.status === 0 ? null : `PyTorch not importable by /usr/bin/python3: ${(r.stderr || '').trim().split('\n').pop()}`;
}

const fmt = (s) => (s == null ? '-' : s < 1 ? `${(s * 1e3).toFixed(1)} ms` : `${s.toFixed(2)} s`);

async function main() {
  const torchMissing = torchAvailable();
  console.log(`vMF score estimator, D = ${D}, ${process.env.MVEB_NUM_THREADS} threads, ${os.cpus()[0].model}`);
  if (torchMissing) console.log(`(${torchMissing}: PyTorch columns skipped)`);
  else console.log(`PyTorch: ${process.env.MVEB_TORCH_MALLOC === 'default' ? "glibc malloc's defaults" : 'freed memory kept for reuse (torch_malloc.py)'}`);
  const rows = [];
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mveb-bench-loss-'));
  for (const N of Ns) {
    const reps = N <= 256 ? 5 : N <= 1024 ? 3 : 2;
    const z = unitRows(N, D, 1000 + N);
    const zh = addon.tensorFrom(z, [N, D], 'float32', 'cpu');
    await addon.vmfScore(zh, { eta: 0.01, minWidth: 0.1 }); // warm-up
    const [ours, r, oursCpu] = await best(() => addon.vmfScore(zh, { eta: 0.01, minWidth: 0.1 }), reps);
    const score = addon.tensorReadSync(r.score);
    // one full loss forward, V = 2 views + 2 targets (normalisation, 2 estimator calls, gradients)
    const views = [1, 2, 3, 4].map((s) => addon.tensorRandn([N, D], 7 * N + s, 'cpu'));
    const [lossT] = await best(() => addon.mvebLossForward(views.slice(0, 2), views.slice(2), {}), N <= 1024 ? 2 : 1);
    const row = { N, ours, oursCpu, lossT, width: r.width, condition: r.condition, load: os.loadavg()[0] };
    if (!torchMissing) {
      const zf = path.join(tmp, 'z.f32');
      const sf = path.join(tmp, 'ours.f32');
      fs.writeFileSync(zf, Buffer.from(z.buffer, z.byteOffset, z.byteLength));
      fs.writeFileSync(sf, Buffer.from(score.buffer, score.byteOffset, score.byteLength));
      const p = spawnSync('/usr/bin/python3', [path.join(__dirname, 'loss_torch.py'), zf, sf, N, D, reps].map(String), {
        encoding: 'utf8',
        maxBuffer: 1 << 20,
      });
      if (p.status !== 0) {
        console.log(`N = ${N}: PyTorch run failed: ${(p.stderr || '').trim().split('\n').slice(-3).join(' | ')}`);
      } else {
        Object.assign(row, JSON.parse(p.stdout.trim().split('\n').pop()));
      }
    }
    const flops = 4 * N * N * D + (N * N * N) / 3;
    row.floor = flops / PEAK;
    rows.push(row);
    const line = [
      `N=${N}`,
      `ours ${fmt(ours)} (${((100 * row.floor) / ours).toFixed(0)}% of floor ${fmt(row.floor)})`,
      `loss fwd V=2 ${fmt(lossT)}`,
      row.cholesky_s != null ? `torch cholesky ${fmt(row.cholesky_s)} (x${(row.cholesky_s / ours).toFixed(1)})` : null,
      row.official_s != null
        ? `official ${fmt(row.official_s)} (x${(row.official_s / ours).toFixed(1)})`
        : row.official_skipped
          ? `official skipped: ${row.official_skipped}`
          : null,
      `tau ${r.width.toFixed(4)}, cond ~${r.condition.toPrecision(3)}`,
      row.ours_err != null ? `rel err vs fp64: ours ${row.ours_err.toExponential(1)}, torch chol ${row.cholesky_err.toExponential(1)}` +
        (row.official_err != null ? `, official ${row.official_err.toExponential(1)}` : '') : null,
    ].filter(Boolean);
    console.log(line.join(' | '));
    [zh, r.score, ...views].forEach((h) => h.dispose());
  }
  // The whole loss with gradients, official setup (2 global + 6 local views, estimator per 128 rows
  // as per GPU), against the official composition with autograd in PyTorch.
  const lossRows = [];
  for (const [N, V, group] of [
    [256, 8, 128],
    [128, 2, 0],
  ]) {
    const views = [];
    for (let v = 0; v < V + 2; v++) views.push(addon.tensorRandn([N, D], 50 + v, 'cpu'));
    const opts = { groupSize: group };
    await addon.mvebLossForward(views.slice(0, V), views.slice(V), opts); // warm-up
    const [t, r, cpu] = await best(() => addon.mvebLossForward(views.slice(0, V), views.slice(V), opts), 3);
    const row = { N, V, group, ours: t, oursCpu: cpu, loss: r.loss, load: os.loadavg()[0] };
    if (!torchMissing) {
      const vf = path.join(tmp, 'views.f32');
      const gf = path.join(tmp, 'grads.f32');
      fs.writeFileSync(vf, Buffer.concat(views.map((h) => Buffer.from(addon.tensorReadSync(h).buffer))));
      fs.writeFileSync(gf, Buffer.concat(r.grads.map((h) => Buffer.from(addon.tensorReadSync(h).buffer))));
      const p = spawnSync(
        '/usr/bin/python3',
        [path.join(__dirname, 'loss_torch.py'), 'loss', vf, gf, N, D, V, group, 2, r.loss].map(String),
        { encoding: 'utf8', maxBuffer: 1 << 20 },
      );
      if (p.status !== 0) console.log(`loss N = ${N}: PyTorch run failed: ${(p.stderr || '').trim().split('\n').slice(-3).join(' | ')}`);
      else Object.assign(row, JSON.parse(p.stdout.trim().split('\n').pop()));
    }
    r.grads.forEach((h) => h.dispose());
    views.forEach((h) => h.dispose());
    lossRows.push(row);
  }
  fs.rmSync(tmp, { recursive: true, force: true });
  console.log('\nWall time (best of the repetitions; 1-minute load average at the end of each size in the last column):');
  console.log('| N | ours | % of FLOP floor | PyTorch Cholesky/solve | official composition | ours vs official | ours vs torch Cholesky | full loss fwd (V=2) | load |');
  console.log('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(
      `| ${r.N} | ${fmt(r.ours)} | ${((100 * r.floor) / r.ours).toFixed(0)}% | ${fmt(r.cholesky_s)} | ` +
        `${r.official_s != null ? fmt(r.official_s) : r.official_skipped ? 'skipped (N x N x D does not fit)' : '-'} | ` +
        `${r.official_s != null ? `${(r.official_s / r.ours).toFixed(1)}x faster` : '-'} | ` +
        `${r.cholesky_s != null ? `${(r.cholesky_s / r.ours).toFixed(1)}x` : '-'} | ${fmt(r.lossT)} | ${r.load.toFixed(1)} |`,
    );
  }
  console.log('\nWhole MVEBLoss forward with gradients vs the official loss with autograd (PyTorch, fp32), same inputs:');
  console.log('| N | views | estimator rows | ours (wall / CPU) | official fwd+bwd (wall / CPU) | ours vs official (wall / CPU) | loss rel err vs fp64: ours / official fp32 | grads rel err vs fp64: ours / official fp32 |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of lossRows) {
    const has = r.official_s != null;
    console.log(
      `| ${r.N} | ${r.V} | ${r.group || r.N} | ${fmt(r.ours)} / ${fmt(r.oursCpu)} | ` +
        `${has ? `${fmt(r.official_s)} / ${fmt(r.official_cpu)}` : '-'} | ` +
        `${has ? `${(r.official_s / r.ours).toFixed(1)}x / ${(r.official_cpu / r.oursCpu).toFixed(1)}x` : '-'} | ` +
        `${has ? `${r.ours_loss_err.toExponential(1)} / ${r.official_loss_err.toExponential(1)}` : '-'} | ` +
        `${has ? `${r.ours_grad_err.toExponential(1)} / ${r.official_grad_err.toExponential(1)}` : '-'} |`,
    );
  }
  console.log('\nProcess CPU time (both threads together; steadier than wall time on a shared machine):');
  console.log('| N | ours | PyTorch Cholesky/solve | official composition | ours vs official | ours vs torch Cholesky |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(
      `| ${r.N} | ${fmt(r.oursCpu)} | ${fmt(r.cholesky_cpu)} | ${r.official_cpu != null ? fmt(r.official_cpu) : '-'} | ` +
        `${r.official_cpu != null ? `${(r.official_cpu / r.oursCpu).toFixed(1)}x` : '-'} | ` +
        `${r.cholesky_cpu != null ? `${(r.cholesky_cpu / r.oursCpu).toFixed(1)}x` : '-'} |`,
    );
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
