// linear.ts: linear evaluation on frozen features (mveb-spec.md section 6.1): a softmax classifier
// (weights N(0, 0.01^2), zero bias) trained with SGD + momentum 0.9 (or LARC, trust 0.001,
// clip = False, as the official --lars), lr = baseLr * batch / 256, cosine per epoch without
// warm-up, weight decay 0. Reports top-1 and, with more than 5 classes, top-5.
// Deviation, on by default and switchable: features are standardised per dimension with the
// training set's mean and standard deviation (the official probe sees raw ResNet-50 avgpool features;
// for the small networks trained here standardising makes the same lr work for every checkpoint).
// The training loop runs natively (linearProbe in native/binding/eval_binding.cpp).
// Tested in test/eval.test.ts (separable synthetic data reaches high accuracy).
import { check, checkBoolean, checkOptions } from '../errors';
import { native } from '../native';
import { Tensor } from '../tensor';
import { accuracyFromScores } from './knn';

export interface LinearEvalOptions {
  classes?: number;
  /** official 90 */
  epochs?: number;
  batchSize?: number;
  /** lr before the batch scaling (official 0.1; max lr = baseLr * batchSize / 256) */
  baseLr?: number;
  momentum?: number;
  weightDecay?: number;
  /** LARC adaptation (official run_linear.sh passes --lars) */
  lars?: boolean;
  trust?: number;
  seed?: number;
  /** standardise features with the train mean/std (default true; see the file comment) */
  standardize?: boolean;
}

export interface LinearEvalResult {
  top1: number;
  top5?: number;
  /** mean training cross-entropy per epoch */
  losses: number[];
  trainCount: number;
  testCount: number;
  epochs: number;
  lr: number;
}

function standardize(train: Float32Array, test: Float32Array, d: number): void {
  const n = train.length / d, m = test.length / d;
  const mean = new Float64Array(d), sq = new Float64Array(d);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < d; j++) {
      const v = train[i * d + j];
      mean[j] += v;
      sq[j] += v * v;
    }
  const inv = new Float64Array(d);
  for (let j = 0; j < d; j++) {
    mean[j] /= n;
    const variance = Math.max(0, sq[j] / n - mean[j] * mean[j]);
    inv[j] = 1 / Math.sqrt(variance + 1e-6);
  }
  const apply = (x: Float32Array, rows: number) => {
    for (let i = 0; i < rows; i++) for (let j = 0; j < d; j++) x[i * d + j] = (x[i * d + j] - mean[j]) * inv[j];
  };
  apply(train, n);
  apply(test, m);
}

/** Trains the linear classifier on (trainFeatures, trainLabels) and scores it on the test features. */
export async function linearEvaluate(
  trainFeatures: Tensor,
  trainLabels: Int32Array,
  testFeatures: Tensor,
  testLabels: Int32Array,
  opts: LinearEvalOptions = {},
): Promise<LinearEvalResult> {
  opts = checkOptions(opts, 'linearEvaluate');
  check(trainFeatures instanceof Tensor && testFeatures instanceof Tensor, 'E_ARG', 'linear: features must be Tensors');
  check(trainLabels instanceof Int32Array && testLabels instanceof Int32Array, 'E_ARG', 'linear: labels must be Int32Arrays');
  check(trainFeatures.shape.length === 2 && testFeatures.shape.length === 2, 'E_SHAPE', 'linear: features must be 2-D [rows, dim]');
  const [n, d] = trainFeatures.shape, m = testFeatures.shape[0];
  check(testFeatures.shape[1] === d, 'E_SHAPE', `linear: train features have dimension ${d}, test features ${testFeatures.shape[1]}`);
  check(trainLabels.length === n, 'E_SHAPE', `linear: ${trainLabels.length} train labels for ${n} rows`);
  check(testLabels.length === m, 'E_SHAPE', `linear: ${testLabels.length} test labels for ${m} rows`);
  let classes = opts.classes;
  if (classes === undefined) {
    let mx = -1;
    for (const v of trainLabels) mx = Math.max(mx, v);
    for (const v of testLabels) mx = Math.max(mx, v);
    classes = mx + 1;
  }
  const epochs = opts.epochs ?? 90, batchSize = opts.batchSize ?? 256;
  const lr = ((opts.baseLr ?? 0.1) * batchSize) / 256;
  check(Number.isInteger(epochs) && epochs >= 1, 'E_ARG', `linear: epochs must be a positive integer, found ${epochs}`);
  check(Number.isInteger(batchSize) && batchSize >= 1, 'E_ARG', `linear: batchSize must be a positive integer, found ${batchSize}`);
  check(Number.isFinite(lr) && lr > 0, 'E_ARG', `linear: lr must be > 0, found ${lr}`);

  let train = trainFeatures, test = testFeatures, owned = false;
  if (checkBoolean(opts.standardize, true, 'linearEvaluate: standardize')) {
    const x = Float32Array.from((await trainFeatures.data()) as Float32Array);
    const t = Float32Array.from((await testFeatures.data()) as Float32Array);
    standardize(x, t, d);
    train = Tensor.from(x, [n, d]);
    test = Tensor.from(t, [m, d]);
    owned = true;
  }
  const y = Tensor.from(trainLabels, [n]);
  try {
    const r = (await native.linearProbe(train._handle(), y._handle(), test._handle(), {
      classes,
      epochs,
      batchSize,
      lr,
      momentum: opts.momentum ?? 0.9,
      weightDecay: opts.weightDecay ?? 0,
      lars: checkBoolean(opts.lars, false, 'linearEvaluate: lars'),
      trust: opts.trust ?? 0.001,
      seed: opts.seed ?? 0,
    })) as { logits: Float32Array; losses: Float64Array };
    const acc = accuracyFromScores(r.logits, testLabels, classes);
    const out: LinearEvalResult = { top1: acc.top1, losses: Array.from(r.losses), trainCount: n, testCount: m, epochs, lr };
    if (acc.top5 !== undefined) out.top5 = acc.top5;
    return out;
  } finally {
    y.dispose();
    if (owned) {
      train.dispose();
      test.dispose();
    }
  }
}
