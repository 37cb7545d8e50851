#!/usr/bin/env node
// knn-raw-pixels.js: the raw-pixel anchor for the kNN figures of the pretraining runs. The same
// weighted kNN as the monitor (lib/eval/knn.ts: cosine similarity, top-k votes weighted by
// exp(sim / t)) on the pixel values themselves (plain, and centred by the training mean), bank = the
// training split, queries = the test split, for several k. Fashion-MNIST's "about 85 %" raw-pixel
// kNN is a small-k classifier; the pretraining monitor uses k = 200.
//   npx tsc && node benchmarks/knn-raw-pixels.js                 built-in Fashion-MNIST
//   node benchmarks/knn-raw-pixels.js <dataset dir> [k,k,...]    any dataset loadDataset reads
'use strict';
const path = require('path');
const mveb = require(path.join(__dirname, '..', 'dist'));

async function load(src, split) {
  return src === 'fashion-mnist' ? mveb.builtinFashionMnist(split) : mveb.loadDataset(src, { split });
}

/** Unit-norm rows of (pixel / 255 - centre) as a [count, pixels] tensor. */
function pixelFeatures(ds, centre) {
  const n = ds.size, d = ds.images.length / n;
  const f = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    let ss = 0;
    for (let j = 0; j < d; j++) {
      const v = ds.images[i * d + j] / 255 - centre;
      f[i * d + j] = v;
      ss += v * v;
    }
    const inv = 1 / (Math.sqrt(ss) || 1);
    for (let j = 0; j < d; j++) f[i * d + j] *= inv;
  }
  return mveb.Tensor.from(f, [n, d]);
}

async function main() {
  const src = process.argv[2] || 'fashion-mnist';
  const ks = (process.argv[3] || '5,10,20,200').split(',').map(Number);
  const train = await load(src, 'train'), test = await load(src, 'test');
  let mean = 0;
  for (const v of train.images) mean += v;
  mean /= 255 * train.images.length;
  console.log(`raw-pixel kNN (t 0.1), ${src}: bank ${train.size} training images, ${test.size} test images, pixel mean ${mean.toFixed(3)}`);
  console.log('| k | plain pixels top-1 | centred pixels top-1 |');
  console.log('|---|---|---|');
  const yTrain = Int32Array.from(train.labels), yTest = Int32Array.from(test.labels);
  const feats = [0, mean].map((c) => [pixelFeatures(train, c), pixelFeatures(test, c)]);
  for (const k of ks) {
    const r = [];
    for (const [b, q] of feats) r.push((await mveb.knnEvaluate(b, yTrain, q, yTest, { k, temperature: 0.1 })).top1);
    console.log(`| ${k} | ${(100 * r[0]).toFixed(2)} % | ${(100 * r[1]).toFixed(2)} % |`);
  }
  for (const pair of feats) for (const t of pair) t.dispose();
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
