// features.ts: frozen-feature extraction for evaluation: the backbone in eval mode (BN running
// statistics) over a list of dataset images with the test transform (evalBatch: normalisation only,
// no augmentation), collected into one [count, featureDim] tensor on the model's device; and seeded
// index subsets. Tested through test/eval.test.ts and test/train.test.ts.
import { check, checkOptions } from '../errors';
import { Tensor, DeviceName } from '../tensor';
import type { Model } from '../model';
import { Dataset, evalBatch } from '../data';
export { subsetIndices } from './subset';

/** Backbone features [indices.length, featureDim] (eval mode), on `device`. */
export async function extractFeatures(
  model: Model,
  dataset: Dataset,
  indices: Int32Array,
  opts: { batchSize?: number; device?: DeviceName } = {},
): Promise<Tensor> {
  opts = checkOptions(opts, 'extractFeatures');
  const batchSize = opts.batchSize ?? 256;
  const device = opts.device ?? 'cpu';
  check(indices.length > 0, 'E_ARG', 'extractFeatures: no images selected');
  const d = model.featureDim;
  const outData = new Float32Array(indices.length * d);
  for (let s = 0; s < indices.length; s += batchSize) {
    const idx = indices.subarray(s, Math.min(indices.length, s + batchSize));
    const x = await evalBatch(dataset, idx, { device });
    const f = await model.forward(x, { train: false });
    x.dispose();
    outData.set((await f.data()) as Float32Array, s * d);
    f.dispose();
  }
  return Tensor.from(outData, [indices.length, d], { device });
}
