#!/usr/bin/env node
// augment_stats.js: distribution-level check of the native multi-crop pipeline against the official
// PIL + torchvision one (benchmarks/augment_stats_torch.py), on the same smooth synthetic RGB images
// and on Fashion-MNIST test images. The random streams differ, so single views cannot be compared;
// averages over many draws can: per-channel mean, per-image std and mean |horizontal gradient|
// (sharpness), per view kind, all after normalisation. Expected differences: a few percent (true
// Gaussian vs PIL's box-approximated blur, float vs uint8 intermediates; PIL's blend truncates to
// uint8, which lowers each of brightness/contrast/saturation by ~0.43 levels on average, so the
// jittered means of PIL sit ~0.005 (in [0,1] units) below ours / torchvision's tensor formulas).
//   MVEB_ADDON_PATH=... node benchmarks/augment_stats.js [draws=3000]
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const addon = require(process.env.MVEB_ADDON_PATH || path.join(root, 'build', 'Release', 'mveb.node'));
const draws = Number(process.argv[2] || 3000);
const KINDS = ['global1', 'global2', 'local'];

function smoothImages(n, h, w) {
  const out = new Uint8Array(n * h * w * 3);
  for (let i = 0; i < n; i++)
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) {
        const inside = (x - w / 2) ** 2 + (y - h / 3) ** 2 < (h / (4 + (i % 3))) ** 2;
        const o = ((i * h + y) * w + x) * 3;
        out[o] = Math.round(255 * (0.2 + (0.6 * x) / w) * (inside ? 0.5 : 1));
        out[o + 1] = Math.round(255 * (0.8 - (0.5 * y) / h) * (i % 2 ? 1 : 0.7));
        out[o + 2] = inside ? 230 : Math.round(100 + 100 * Math.sin((x + y + i) / 5));
      }
  return out;
}

function fashion(n) {
  const buf = zlib.gunzipSync(fs.readFileSync(path.join(root, 'data', 'fashion-mnist', 't10k-images-idx3-ubyte.gz')));
  return new Uint8Array(buf.buffer, buf.byteOffset + 16, n * 784).slice();
}

async function ours(bytes, n, h, w, c, gs, ls) {
  const norm = c === 1 ? { mean: [0.5], std: [0.5] } : { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
  const common = { ratio: [3 / 4, 4 / 3], flipP: 0.5, jitterP: 0.8, grayscaleP: 0.2, ...norm };
  const views = [
    { size: gs, scale: [0.4, 1], blurP: 1.0, solarizeP: 0, ...common },
    { size: gs, scale: [0.4, 1], blurP: 0.1, solarizeP: 0.2, ...common },
    { size: ls, scale: [0.05, 0.4], blurP: 0.5, ...common },
  ];
  const ds = addon.dataCreate(bytes, n, h, w, c, 0);
  // every draw is a distinct (index, step) pair: the same index at the same step gives the same view
  const idx = Int32Array.from({ length: n }, (_, i) => i);
  const acc = KINDS.map(() => ({ mean: new Array(c).fill(0), std: 0, grad: 0 }));
  const steps = Math.ceil(draws / n);
  for (let step = 0; step < steps; step++) {
    const ts = await addon.dataAugmentBatch(ds, idx, views, 12345, step, 'cpu');
    KINDS.forEach((k, v) => {
      const x = addon.tensorReadSync(ts[v]);
      const s = views[v].size, plane = s * s;
      const a = acc[v];
      for (let d = 0; d < n; d++) {
        const img = x.subarray(d * c * plane, (d + 1) * c * plane);
        let sum = 0, sq = 0, g = 0;
        for (let ch = 0; ch < c; ch++) {
          let m = 0;
          for (let p = 0; p < plane; p++) m += img[ch * plane + p];
          a.mean[ch] += m / plane;
        }
        for (let i = 0; i < img.length; i++) {
          sum += img[i];
          sq += img[i] * img[i];
        }
        for (let ch = 0; ch < c; ch++)
          for (let yy = 0; yy < s; yy++)
            for (let xx = 0; xx + 1 < s; xx++) g += Math.abs(img[ch * plane + yy * s + xx + 1] - img[ch * plane + yy * s + xx]);
        const cnt = img.length;
        a.std += Math.sqrt(Math.max(0, sq / cnt - (sum / cnt) ** 2));
        a.grad += g / (c * s * (s - 1));
      }
      ts[v].dispose();
    });
  }
  const total = steps * n;
  const res = {};
  KINDS.forEach((k, v) => {
    res[k] = { mean: acc[v].mean.map((m) => m / total), std: acc[v].std / total, grad: acc[v].grad / total };
  });
  addon.dataDispose(ds);
  return res;
}

function torch(bytes, n, h, w, c, gs, ls) {
  const f = path.join(os.tmpdir(), `mveb-augstats-${process.pid}.raw`);
  fs.writeFileSync(f, bytes);
  const r = spawnSync('/usr/bin/python3', [path.join(__dirname, 'augment_stats_torch.py'), f, n, h, w, c, gs, ls, draws].map(String), { encoding: 'utf8' });
  fs.unlinkSync(f);
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

(async () => {
  const cases = [
    { name: 'smooth RGB 48x48 -> 32 / 16', bytes: smoothImages(24, 48, 48), n: 24, h: 48, w: 48, c: 3, gs: 32, ls: 16 },
    { name: 'Fashion-MNIST 28x28 -> 28 / 12', bytes: fashion(200), n: 200, h: 28, w: 28, c: 1, gs: 28, ls: 12 },
  ];
  for (const cs of cases) {
    const a = await ours(cs.bytes, cs.n, cs.h, cs.w, cs.c, cs.gs, cs.ls);
    const b = torch(cs.bytes, cs.n, cs.h, cs.w, cs.c, cs.gs, cs.ls);
    console.log(`${cs.name}, ${draws} draws per view kind (ours / PIL+torchvision)`);
    for (const k of KINDS) {
      const fmt = (x) => x.toFixed(3);
      console.log(
        `  ${k.padEnd(8)} mean [${a[k].mean.map(fmt)}] / [${b[k].mean.map(fmt)}]  std ${fmt(a[k].std)} / ${fmt(b[k].std)}` +
          `  |grad| ${fmt(a[k].grad)} / ${fmt(b[k].grad)} (${((a[k].grad / b[k].grad - 1) * 100).toFixed(1)}%)`,
      );
    }
  }
})();
