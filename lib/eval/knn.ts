// knn.ts: the weighted kNN monitor of the official code (mveb-spec.md section 6.2): L2-normalised
// backbone features, the k = 200 most similar memory-bank rows vote with weight exp(sim / 0.1),
// one-hot by class; top-1 (and top-5) accuracy. The scoring runs natively (knnScores in
// native/binding/eval_binding.cpp: blocked GEMM on the features' device + a heap selection).
// Tested in test/eval.test.ts against a brute-force JavaScript reference.
import { isTypedArray } from '../data/dataset';
import { check, checkOptions } from '../errors';
import { native } from '../native';
import { Tensor } from '../tensor';

export interface KnnOptions {
  /** neighbours (official 200; clipped to the bank size) */
  k?: number;
  /** vote temperature (official 0.1) */
  temperature?: number;
  /** number of classes (default: max label + 1) */
  classes?: number;
}

export interface KnnResult {
  top1: number;
  /** only when there are more than 5 classes */
  top5?: number;
  /** predicted class per query */
  predictions: Int32Array;
  count: number;
}

function labelsTensor(labels: Int32Array | Tensor): { t: Tensor; owned: boolean; max: number } {
  if (labels instanceof Tensor) {
    check(labels.dtype === 'int32', 'E_DTYPE', `knn: labels must be int32, found ${labels.dtype}`);
    const d = labels.dataSync() as Int32Array;
    return { t: labels, owned: false, max: d.reduce((a, b) => Math.max(a, b), -1) };
  }
  check(labels instanceof Int32Array, 'E_ARG', 'knn: labels must be an Int32Array or an int32 Tensor');
  return { t: Tensor.from(labels, [labels.length]), owned: true, max: labels.reduce((a, b) => Math.max(a, b), -1) };
}

function checkFeatures(bank: unknown, queries: unknown): void {
  check(bank instanceof Tensor && queries instanceof Tensor, 'E_ARG', 'knn: bank and queries must be Tensors');
}

/** Per-class weighted votes [queries * classes] (row-major). */
export async function knnScores(
  bank: Tensor,
  bankLabels: Int32Array | Tensor,
  queries: Tensor,
  opts: KnnOptions & { classes: number },
): Promise<Float32Array> {
  opts = checkOptions(opts, 'knnScores');
  checkFeatures(bank, queries);
  const k = opts.k ?? 200, temperature = opts.temperature ?? 0.1;
  check(Number.isInteger(k) && k >= 1, 'E_ARG', `knn: k must be a positive integer, found ${k}`);
  check(Number.isFinite(temperature) && temperature > 0, 'E_ARG', `knn: temperature must be > 0, found ${temperature}`);
  const l = labelsTensor(bankLabels);
  try {
    return (await native.knnScores(bank._handle(), l.t._handle(), queries._handle(), {
      k,
      temperature,
      classes: opts.classes,
    })) as Float32Array;
  } finally {
    if (l.owned) l.t.dispose();
  }
}

/** Top-1 / top-5 accuracy of per-class scores (ties go to the lower class index). */
export function accuracyFromScores(scores: Float32Array, labels: Int32Array, classes: number): KnnResult {
  // (by tag, not instanceof: the native scores come from the main realm, not a test's vm context)
  check(isTypedArray(scores, 'Float32Array') && isTypedArray(labels, 'Int32Array'), 'E_ARG', 'accuracyFromScores: scores must be a Float32Array and labels an Int32Array');
  check(Number.isSafeInteger(classes) && classes >= 1, 'E_ARG', () => `accuracyFromScores: classes must be a positive integer, found ${String(classes)}`);
  const n = labels.length;
  check(scores.length === n * classes, 'E_SHAPE', `scores have ${scores.length} values, expected ${n} x ${classes}`);
  const predictions = new Int32Array(n);
  let top1 = 0, top5 = 0;
  for (let i = 0; i < n; i++) {
    const row = scores.subarray(i * classes, (i + 1) * classes);
    let best = 0;
    for (let c = 1; c < classes; c++) if (row[c] > row[best]) best = c;
    predictions[i] = best;
    if (best === labels[i]) top1++;
    // rank of the true class: classes with a strictly higher score, or equal score and lower index
    const y = labels[i];
    let rank = 0;
    for (let c = 0; c < classes; c++) if (row[c] > row[y] || (row[c] === row[y] && c < y)) rank++;
    if (rank < 5) top5++;
  }
  const r: KnnResult = { top1: n ? top1 / n : 0, predictions, count: n };
  if (classes > 5) r.top5 = n ? top5 / n : 0;
  return r;
}

/** kNN accuracy of `queries` (with `queryLabels`) against the memory bank. */
export async function knnEvaluate(
  bank: Tensor,
  bankLabels: Int32Array,
  queries: Tensor,
  queryLabels: Int32Array,
  opts: KnnOptions = {},
): Promise<KnnResult> {
  opts = checkOptions(opts, 'knnEvaluate');
  checkFeatures(bank, queries);
  check(bankLabels instanceof Int32Array && queryLabels instanceof Int32Array, 'E_ARG', 'knn: labels must be Int32Arrays');
  check(bank.shape.length === 2 && queries.shape.length === 2, 'E_SHAPE', 'knn: features must be 2-D [rows, dim]');
  check(bankLabels.length === bank.shape[0], 'E_SHAPE', `knn: ${bankLabels.length} bank labels for ${bank.shape[0]} bank rows`);
  check(queryLabels.length === queries.shape[0], 'E_SHAPE', `knn: ${queryLabels.length} query labels for ${queries.shape[0]} query rows`);
  let classes = opts.classes;
  if (classes === undefined) {
    let m = -1;
    for (const v of bankLabels) m = Math.max(m, v);
    for (const v of queryLabels) m = Math.max(m, v);
    classes = m + 1;
  }
  const scores = await knnScores(bank, bankLabels, queries, { ...opts, classes });
  return accuracyFromScores(scores, queryLabels, classes);
}
