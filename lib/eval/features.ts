// features.ts: frozen-feature extraction for evaluation: the backbone in eval mode (BN running
// statistics) over a list of dataset images with the test transform (evalBatch: normalisation only,
// no augmentation), collected into one [count, featureDim] tensor on the model's device; and seeded
// index subsets. Tested through test/eval.test.ts and test/train.test.ts.
import { check } from '../errors';
import { Tensor, DeviceName } from '../tensor';
import type { Model } from '../model';
import { Dataset, evalBatch } from '../data';

/** `count` distinct indices of [0, n) chosen with `seed` (sorted); count 0 or >= n: all of them. */
export function subsetIndices(n: number, count: number, seed: number): Int32Array {
  if (count <= 0 || count >= n) return Int32Array.from({ length: n }, (_, i) => i);
  // partial Fisher-Yates with a small counter-based generator (xorshift-multiply on 32 bits)
  const idx = Int32Array.from({ length: n }, (_, i) => i);
  let s = (seed * 0x9e3779b1 + 0x7f4a7c15) >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = 0; i < count; i++) {
    const j = i + Math.floor(next() * (n - i));
    const tmp = idx[i];
    idx[i] = idx[j];
    idx[j] = tmp;
  }
  return idx.slice(0, count).sort();
}

/** Backbone features [indices.length, featureDim] (eval mode), on `device`. */
export async function extractFeatures(
  model: Model,
  dataset: Dataset,
  indices: Int32Array,
  opts: { batchSize?: number; device?: DeviceName } = {},
): Promise<Tensor> {
  const batchSize = opts.batchSize ?? 256;
  const device = opts.device ?? 'cpu';
  check(indices.length > 0, 'E_ARG', 'extractFeatures: no images selected');
  const d = model.featureDim;
  const outData = new Float32Array(indices.length * d);
  for (let s = 0; s < indices.length; s += batchSize) {
    const idx = indices.subarray(s, Math.min(indices.length, s + batchSize));
    const cpuBatch = evalBatch(dataset, idx);
    const x = cpuBatch.device === device ? cpuBatch : cpuBatch.to(device);
    if (x !== cpuBatch) cpuBatch.dispose();
    const f = await model.forward(x, { train: false });
    x.dispose();
    outData.set((await f.data()) as Float32Array, s * d);
    f.dispose();
  }
  return Tensor.from(outData, [indices.length, d], { device });
}
