// pretrain.ts: the MVEB training loop (`pretrain(options)`, behind `mveb pretrain`), following the
// official code (mveb-spec.md sections 1.3-1.5, 3, 4):
//   per step t: lr(t) and m(t) from schedule.ts; every view through the online backbone + projector
//   in train mode (BN statistics per view); EMA update of the target (parameters only) with m(t),
//   then the target (train mode) on the two global views; MVEBLoss; backward; LARS or SGD step.
//   A non-finite loss stops the run (E_NUMERIC) after saving the state before the failing step; a
//   step whose gradients are not finite is skipped and counted.
// The model keeps the activations of its LAST forward only, so the online pass runs every view once
// for the loss, back-propagates the last view directly and recomputes the others (one extra forward
// per non-last view). BN running statistics are snapshotted after the first pass and restored after
// the recomputation, so they see each view exactly once, as in the official code.
// Checkpoints (checkpoint.ts) every epoch and at the end; `resume` continues from one and, on the CPU
// with the same seed and thread count, reproduces the uninterrupted run's losses step for step (the
// loader is a pure function of (seed, epoch, step); every kernel is deterministic).
// Tested by test/train.test.ts; the default run is documented in benchmarks/RESULTS.md.
import * as fs from 'fs';
import * as path from 'path';
import { MvebError, check, checkOptions } from '../errors';
import { makeDirs } from '../files';
import { Tensor, DeviceName } from '../tensor';
import { Model } from '../model';
import { MVEBLoss } from '../loss';
import { Dataset, builtinFashionMnist, loadDataset, augmentBatch, defaultViews, epochPermutation, ViewConfig } from '../data';
import { isDataSource } from '../data/dataset';
import { backends } from '../doctor';
import { MatmulPrecision, getMatmulPrecision, matmulPrecisionSummary } from '../precision';
import { extractFeatures, subsetIndices } from '../eval/features';
import { knnEvaluate } from '../eval/knn';
import { learningRateAt, momentumAt } from './schedule';
import { saveCheckpoint, loadCheckpoint, resolveCheckpointPath, withPrefix, TrainingState } from './checkpoint';
import { ProgressReporter, ProgressEvent, ProgressMode, readMetrics, truncateMetrics } from './progress';
import { renderReport, StepRecord } from './report';
import { MAX_LOCAL_CROPS, PRETRAIN_DEFAULTS } from './defaults';

export { MAX_LOCAL_CROPS, PRETRAIN_DEFAULTS };
import { resolveDevice, DeviceChoice } from './device';

export interface PretrainOptions {
  /** 'fashion-mnist' (built in, default), a dataset path (IDX folder, CIFAR folder, image folder) or a Dataset */
  data?: string | Dataset;
  /** labelled images for the kNN monitor and the final evaluation (default: the test split of `data`) */
  testData?: string | Dataset;
  /** ResNet depth: 18 | 34 | 50 (default 18) */
  depth?: 18 | 34 | 50;
  /** 'cifar' (3x3 stem, no max pool; default) or 'imagenet' */
  stem?: 'cifar' | 'imagenet';
  /** ResNet width multiplier (default 0.125: stage widths 8/16/32/64) */
  width?: number;
  /** projector hidden and output dimension (default 512) */
  projectorDim?: number;
  epochs?: number;
  batchSize?: number;
  /** base lr before batch scaling (max lr = lr * batchSize / 256) */
  lr?: number;
  optimizer?: 'lars' | 'sgd';
  weightDecay?: number;
  /** warm-up in epochs (may be fractional; default min(10, epochs / 10)) */
  warmupEpochs?: number;
  baseMomentum?: number;
  /** MVEB loss */
  lambda?: number;
  eta?: number;
  minWidth?: number;
  /** local crops in addition to the two global views (default 0) */
  localCrops?: number;
  /** global crop size (default: the image size) */
  cropSize?: number;
  localCropSize?: number;
  /** RandomResizedCrop area range of the two global views (default [0.4, 1], DINO's multi-crop value) */
  globalScale?: [number, number];
  /** area range of the local crops (default [0.05, 0.4]) */
  localScale?: [number, number];
  /** use only this many training images (a seeded random subset; default 20000, 0 = all) */
  trainImages?: number;
  device?: DeviceChoice;
  /** output folder (default runs/default) */
  out?: string;
  /** true: resume from <out>/checkpoint.safetensors; a string: that checkpoint file or run folder */
  resume?: boolean | string;
  /** start a new run in an `out` that already holds a checkpoint (default false: refused with E_ARG,
   * so that running the same command twice cannot overwrite a finished run's checkpoint) */
  overwrite?: boolean;
  seed?: number;
  /** CPU threads (must match the addon's thread count: set MVEB_NUM_THREADS before loading mveb) */
  threads?: number;
  /** kNN monitor every N epochs on a bounded subset (0: never) */
  knnEvery?: number;
  knnK?: number;
  knnTemperature?: number;
  /** monitor subset sizes */
  knnMonitorBank?: number;
  knnMonitorQueries?: number;
  /** memory bank size of the final kNN (default: all training images of the split; 0 = all) */
  knnBank?: number;
  /** final kNN on the full test set, and the same architecture at random initialisation */
  finalKnn?: boolean;
  randomInitKnn?: boolean;
  /** stop after this many steps in total (checkpointed like an interruption; for tests and smoke runs) */
  maxSteps?: number;
  progress?: ProgressMode;
  logEvery?: number;
  /** on SIGINT / SIGTERM finish the current step, write a resumable checkpoint and resolve (the CLI sets this) */
  handleSignals?: boolean;
  /** activation memory (bytes) the views other than the last may keep for backward, in copies of the
   * online networks, instead of being run forward a second time (default 2 GiB; 0: always recompute).
   * Keeping saves one forward per such view and step; the step is the same up to the rounding of the
   * gradient sum (so a resumed run reproduces its losses exactly only with the same budget decision). */
  viewActivationBudget?: number;
  /** run the views' forwards and backwards side by side, one per CPU pool thread (Model.forwardAll),
   * instead of one after the other on all threads (default: on the CPU with at least 2 threads and
   * no more threads than views, 2 + localCrops: with more, threads would sit idle; needs the view
   * copies of viewActivationBudget). Small networks use the cores better so (the default
   * pretraining's step ~14 % shorter on 2 cores); the step is the same up to the rounding of float
   * sums, so a resumed run reproduces its losses exactly only with the same choice. */
  sideBySide?: boolean;
  onProgress?: (e: ProgressEvent) => void;
}

export interface PretrainSummary {
  epochs: number;
  steps: number;
  seconds: number;
  imagesPerSecond: number;
  knnTop1: number | null;
  knnTop1RandomInit: number | null;
  knnTop5?: number;
  checkpoint: string;
  report: string;
  metrics: string;
  device: DeviceName;
  deviceReason: string;
  /** the CPU matmul precision of the run (setMatmulPrecision / MVEB_MATMUL_PRECISION / --matmul-precision) */
  matmulPrecision: MatmulPrecision;
  skippedSteps: number;
  finalLoss: number | null;
  finalAlignment: number | null;
  out: string;
}

/** Resolved configuration (what goes into the checkpoint). */
export interface ResolvedConfig {
  data: string;
  testData: string;
  /** the data / testData arguments when they were paths or 'fashion-mnist' (what resume and eval reload) */
  dataSource?: string;
  testDataSource?: string;
  depth: 18 | 34 | 50;
  stem: 'cifar' | 'imagenet';
  width: number;
  projectorDim: number;
  epochs: number;
  batchSize: number;
  lr: number;
  optimizer: 'lars' | 'sgd';
  weightDecay: number;
  warmupEpochs: number;
  baseMomentum: number;
  lambda: number;
  eta: number;
  minWidth: number;
  localCrops: number;
  cropSize: number;
  localCropSize: number;
  globalScale: [number, number];
  localScale: [number, number];
  trainImages: number;
  seed: number;
  knnEvery: number;
  knnK: number;
  knnTemperature: number;
  knnMonitorBank: number;
  knnMonitorQueries: number;
  knnBank: number;
  stepsPerEpoch: number;
  totalSteps: number;
  warmupSteps: number;
  imageShape: number[];
}


const isInt = (v: unknown, min: number) => typeof v === 'number' && Number.isInteger(v) && v >= min;
const isNum = (v: unknown, min: number, strict = false) => typeof v === 'number' && Number.isFinite(v) && (strict ? v > min : v >= min);

function validate(o: PretrainOptions): void {
  const bad = (name: string, want: string, v: unknown) => new MvebError('E_ARG', `${name} must be ${want}, found ${JSON.stringify(v)}`);
  if (o.depth !== undefined && ![18, 34, 50].includes(o.depth)) throw bad('depth', '18, 34 or 50', o.depth);
  if (o.stem !== undefined && !['cifar', 'imagenet'].includes(o.stem)) throw bad('stem', "'cifar' or 'imagenet'", o.stem);
  if (o.width !== undefined && !(isNum(o.width, 0, true) && o.width <= 4)) throw bad('width', 'a number in (0, 4]', o.width);
  for (const k of ['projectorDim', 'epochs', 'batchSize'] as const) if (o[k] !== undefined && !isInt(o[k], 1)) throw bad(k, 'a positive integer', o[k]);
  if (o.batchSize !== undefined && o.batchSize < 2) throw bad('batchSize', 'at least 2 (the entropy estimator needs several samples)', o.batchSize);
  for (const k of ['lr', 'eta', 'minWidth'] as const) if (o[k] !== undefined && !isNum(o[k], 0, true)) throw bad(k, 'a positive number', o[k]);
  for (const k of ['weightDecay', 'lambda', 'warmupEpochs', 'viewActivationBudget'] as const)
    if (o[k] !== undefined && !isNum(o[k], 0)) throw bad(k, 'a number >= 0', o[k]);
  if (o.baseMomentum !== undefined && !(isNum(o.baseMomentum, 0) && o.baseMomentum <= 1)) throw bad('baseMomentum', 'a number in [0, 1]', o.baseMomentum);
  if (o.optimizer !== undefined && !['lars', 'sgd'].includes(o.optimizer)) throw bad('optimizer', "'lars' or 'sgd'", o.optimizer);
  for (const k of ['data', 'testData'] as const) {
    const v = o[k];
    if (v !== undefined && !isDataSource(v))
      throw bad(k, "a path, 'fashion-mnist' or a Dataset (loadDataset, fromTypedArray)", v !== null && typeof v === 'object' ? '(an object that is no Dataset)' : v);
  }
  if (o.out !== undefined && !(typeof o.out === 'string' && o.out.length > 0)) throw bad('out', 'a folder path', o.out);
  if (o.resume !== undefined && typeof o.resume !== 'boolean' && !(typeof o.resume === 'string' && o.resume.length > 0))
    throw bad('resume', 'a boolean or a checkpoint path', o.resume);
  for (const k of ['sideBySide', 'finalKnn', 'randomInitKnn', 'overwrite'] as const)
    if (o[k] !== undefined && typeof o[k] !== 'boolean') throw bad(k, 'a boolean', o[k]);
  if (o.localCrops !== undefined && !(isInt(o.localCrops, 0) && o.localCrops <= MAX_LOCAL_CROPS))
    throw bad('localCrops', `an integer in [0, ${MAX_LOCAL_CROPS}]`, o.localCrops);
  for (const k of ['trainImages', 'seed', 'knnEvery', 'knnBank', 'knnMonitorBank', 'knnMonitorQueries'] as const)
    if (o[k] !== undefined && !isInt(o[k], 0)) throw bad(k, 'an integer >= 0', o[k]);
  for (const k of ['cropSize', 'localCropSize', 'knnK', 'maxSteps', 'threads', 'logEvery'] as const)
    if (o[k] !== undefined && !isInt(o[k], 1)) throw bad(k, 'a positive integer', o[k]);
  for (const k of ['globalScale', 'localScale'] as const) {
    const v = o[k];
    if (v !== undefined && !(Array.isArray(v) && v.length === 2 && isNum(v[0], 0, true) && isNum(v[1], 0) && v[0] <= v[1] && v[1] <= 1))
      throw bad(k, 'a pair [min, max] with 0 < min <= max <= 1', v);
  }
  if (o.knnTemperature !== undefined && !isNum(o.knnTemperature, 0, true)) throw bad('knnTemperature', 'a positive number', o.knnTemperature);
  if (o.progress !== undefined && !['auto', 'bar', 'log', 'none'].includes(o.progress)) throw bad('progress', "'auto', 'bar', 'log' or 'none'", o.progress);
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw bad('onProgress', 'a function', typeof o.onProgress);
}

async function loadSplit(data: string | Dataset, split: 'train' | 'test'): Promise<{ dataset: Dataset; name: string }> {
  if (typeof data !== 'string') return { dataset: data, name: '(in-memory dataset)' };
  if (data === 'fashion-mnist') return { dataset: await builtinFashionMnist(split), name: `fashion-mnist (built in, ${split})` };
  return { dataset: await loadDataset(data, { split }), name: `${data} (${split})` };
}

/**
 * The multi-crop views (mveb-spec.md section 5) at this dataset's resolution: two global crops of
 * cropSize, area scale globalScale (default (0.4, 1)), and localCrops local crops, scale localScale
 * (default (0.05, 0.4)). The blur sigma range
 * (0.1, 2.0) is meant for 224-pixel crops; it is scaled by cropSize / 224 so small images are not
 * blurred beyond recognition (a no-op at 224).
 */
export function trainingViews(c: {
  cropSize: number;
  localCropSize: number;
  localCrops: number;
  globalScale?: [number, number];
  localScale?: [number, number];
}): ViewConfig[] {
  const views = defaultViews({
    globalSize: c.cropSize,
    localSize: c.localCropSize,
    localCrops: c.localCrops,
    globalScale: c.globalScale,
    localScale: c.localScale,
  });
  return views.map((v) => {
    const f = Math.min(1, v.size / 224);
    return { ...v, blurSigma: [0.1 * f, 2.0 * f] as [number, number] };
  });
}

/** A data argument as stored in the checkpoint: paths made absolute, 'fashion-mnist' kept. */
function absoluteSource(d: string): string {
  return d === 'fashion-mnist' || d === 'builtin' ? d : path.resolve(d);
}

/** A Model pair (backbone + projector). */
export interface Net {
  backbone: Model;
  projector: Model;
}

function makeNet(c: ResolvedConfig, device: DeviceName, seed: number): Net {
  const backbone = Model.resnet({
    depth: c.depth,
    stem: c.stem,
    inChannels: c.imageShape[0],
    widthMultiplier: c.width,
    zeroInitResidual: true,
    seed,
    device,
  });
  const projector = Model.projector({ inDim: backbone.featureDim, hiddenDim: c.projectorDim, outDim: c.projectorDim, seed: seed + 1, device });
  return { backbone, projector };
}

/** true when every parameter and buffer of the model is finite (only called after a failure). */
function allFinite(model: Model): boolean {
  const sd = model.stateDict();
  try {
    for (const t of sd.values()) {
      const d = t.dataSync();
      for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) return false;
    }
    return true;
  } finally {
    disposeMap(sd);
  }
}

function disposeMap(m: Map<string, Tensor>): void {
  m.forEach((t) => t.dispose());
}

function prefixed(prefix: string, m: Map<string, Tensor>, into: Map<string, Tensor>): void {
  for (const [k, v] of m) into.set(prefix + k, v);
}

/** The training loop. Resolves to the run summary; see PretrainOptions for everything it takes. */
export async function pretrain(options: PretrainOptions = {}): Promise<PretrainSummary> {
  options = checkOptions(options, 'pretrain');
  validate(options);
  const out = path.resolve(options.out ?? PRETRAIN_DEFAULTS.out);
  makeDirs(out);
  const checkpointPath = path.join(out, 'checkpoint.safetensors');
  check(
    options.resume || options.overwrite || !fs.existsSync(checkpointPath),
    'E_ARG',
    () => `${out} already holds a training checkpoint: resume it (--resume), start over there (--overwrite), or write elsewhere (--out)`,
  );
  const metricsPath = path.join(out, 'metrics.jsonl');
  const reportPath = path.join(out, 'report.html');
  const { device, reason: deviceReason } = resolveDevice(options.device ?? 'auto');
  if (options.threads !== undefined) {
    const have = backends().cpu.threads;
    check(
      have === options.threads,
      'E_ARG',
      `threads: the addon runs ${have} CPU threads but ${options.threads} were requested; set MVEB_NUM_THREADS=${options.threads} before loading mveb (the CLI does this for --threads)`,
    );
  }

  // ---- resume: the checkpoint's configuration wins over the options ----
  let resumed: Awaited<ReturnType<typeof loadCheckpoint>> | null = null;
  let resumePath = checkpointPath;
  if (options.resume) {
    resumePath = resolveCheckpointPath(typeof options.resume === 'string' ? options.resume : checkpointPath);
    resumed = await loadCheckpoint(resumePath);
    try {
      validate(resumed.state.config as PretrainOptions);  // (the same bounds as the options it came from)
    } catch (e) {
      disposeMap(resumed.tensors);
      throw new MvebError('E_CHECKPOINT', `checkpoint ${resumePath} has an invalid configuration: ${(e as Error).message}`);
    }
  }
  const prev = resumed?.state.config as Partial<ResolvedConfig> | undefined;
  const pick = <K extends keyof PretrainOptions & keyof ResolvedConfig>(k: K, fallback: ResolvedConfig[K]): ResolvedConfig[K] =>
    (prev?.[k] as ResolvedConfig[K] | undefined) ?? (options[k] as ResolvedConfig[K] | undefined) ?? fallback;

  if (resumed && options.data === undefined && prev && !prev.dataSource) {
    throw new MvebError('E_ARG', `the checkpoint was trained on ${prev.data ?? 'an in-memory dataset'}; pass the same data to resume`);
  }
  const dataOpt = options.data ?? prev?.dataSource ?? PRETRAIN_DEFAULTS.data;
  const testOpt = options.testData ?? prev?.testDataSource ?? dataOpt;
  const train = await loadSplit(dataOpt, 'train');
  const test = await loadSplit(testOpt, 'test');
  const seed = pick('seed', PRETRAIN_DEFAULTS.seed);
  const trainImagesReq = pick('trainImages', PRETRAIN_DEFAULTS.trainImages);
  const trainIndices = subsetIndices(train.dataset.size, trainImagesReq, seed + 17);
  const trainSet = trainIndices.length === train.dataset.size ? train.dataset : train.dataset.subset(trainIndices);
  const batchSize = pick('batchSize', PRETRAIN_DEFAULTS.batchSize);
  check(
    trainSet.size >= batchSize,
    'E_ARG',
    `batchSize ${batchSize} is larger than the ${trainSet.size} training images (the loader drops the last incomplete batch)`,
  );
  const epochs = options.epochs ?? prev?.epochs ?? PRETRAIN_DEFAULTS.epochs;
  const stepsPerEpoch = Math.floor(trainSet.size / batchSize);
  const totalSteps = epochs * stepsPerEpoch;
  if (resumed) {
    // (a checkpoint of other data: its step does not fall where this data's epochs put it)
    const s = resumed.state;
    if (!(s.step === s.epoch * stepsPerEpoch + s.loader.stepInEpoch && s.loader.stepInEpoch <= stepsPerEpoch)) {
      disposeMap(resumed.tensors);
      throw new MvebError('E_CHECKPOINT', `checkpoint ${resumePath} is at step ${s.step} (step ${s.loader.stepInEpoch} of epoch ${s.epoch + 1}), ` +
        `which does not match this data's ${stepsPerEpoch} steps per epoch (${trainSet.size} images, batch ${batchSize}): resume with the data it was trained on`);
    }
  }
  const warmupEpochs = pick('warmupEpochs', Math.min(10, epochs / 10));
  const c: ResolvedConfig = {
    data: train.name,
    testData: test.name,
    ...(typeof dataOpt === 'string' ? { dataSource: absoluteSource(dataOpt) } : {}),
    ...(typeof testOpt === 'string' ? { testDataSource: absoluteSource(testOpt) } : {}),
    depth: pick('depth', PRETRAIN_DEFAULTS.depth),
    stem: pick('stem', PRETRAIN_DEFAULTS.stem),
    width: pick('width', PRETRAIN_DEFAULTS.width),
    projectorDim: pick('projectorDim', PRETRAIN_DEFAULTS.projectorDim),
    epochs,
    batchSize,
    lr: pick('lr', PRETRAIN_DEFAULTS.lr),
    optimizer: pick('optimizer', PRETRAIN_DEFAULTS.optimizer),
    weightDecay: pick('weightDecay', PRETRAIN_DEFAULTS.weightDecay),
    warmupEpochs,
    baseMomentum: pick('baseMomentum', PRETRAIN_DEFAULTS.baseMomentum),
    lambda: pick('lambda', PRETRAIN_DEFAULTS.lambda),
    eta: pick('eta', PRETRAIN_DEFAULTS.eta),
    minWidth: pick('minWidth', PRETRAIN_DEFAULTS.minWidth),
    localCrops: pick('localCrops', PRETRAIN_DEFAULTS.localCrops),
    cropSize: pick('cropSize', train.dataset.height),
    localCropSize: pick('localCropSize', Math.max(8, Math.round((train.dataset.height * 96) / 224 / 2) * 2)),
    globalScale: pick('globalScale', PRETRAIN_DEFAULTS.globalScale),
    localScale: pick('localScale', PRETRAIN_DEFAULTS.localScale),
    trainImages: trainSet.size,
    seed,
    knnEvery: options.knnEvery ?? prev?.knnEvery ?? PRETRAIN_DEFAULTS.knnEvery,
    knnK: pick('knnK', PRETRAIN_DEFAULTS.knnK),
    knnTemperature: pick('knnTemperature', PRETRAIN_DEFAULTS.knnTemperature),
    knnMonitorBank: pick('knnMonitorBank', PRETRAIN_DEFAULTS.knnMonitorBank),
    knnMonitorQueries: pick('knnMonitorQueries', PRETRAIN_DEFAULTS.knnMonitorQueries),
    knnBank: pick('knnBank', PRETRAIN_DEFAULTS.knnBank),
    stepsPerEpoch,
    totalSteps,
    warmupSteps: Math.round(warmupEpochs * stepsPerEpoch),
    imageShape: [train.dataset.channels, train.dataset.height, train.dataset.width],
  };
  check(
    test.dataset.channels === train.dataset.channels,
    'E_ARG',
    `the test images have ${test.dataset.channels} channels but the training images ${train.dataset.channels}`,
  );
  // kNN (monitor and final) needs labelled training (memory bank) and test images; pretraining needs
  // none: on unlabelled data the evaluation is skipped (this used to refuse the run, even with kNN off)
  const unlabelled = [...new Set([train, test].filter((d) => !d.dataset.labels).map((d) => d.name))];
  const knnPossible = unlabelled.length === 0;

  const views = 2 + c.localCrops;
  const reporter = new ProgressReporter({
    mode: options.progress ?? 'auto',
    totalSteps,
    epochs,
    jsonlPath: metricsPath,
    logEvery: options.logEvery,
    onProgress: options.onProgress,
  });
  const say = (m: string) => reporter.message(m);

  // ---- models ----
  const online = makeNet(c, device, seed);
  const target: Net = { backbone: online.backbone.clone(), projector: online.projector.clone() };
  const loss = new MVEBLoss({ lambda: c.lambda, eta: c.eta, minWidth: c.minWidth });
  const viewConfigs = trainingViews(c);
  let step = 0, startEpoch = 0, skippedSteps = 0, trainSeconds = 0, imagesSeen = 0;
  let knnTop1RandomInit: number | null = null;
  let knnHistory: TrainingState['knnHistory'] = [];
  // monitor subsets (fixed for the run)
  const monitorBank = subsetIndices(trainSet.size, c.knnMonitorBank, seed + 23);
  const monitorQueries = subsetIndices(test.dataset.size, c.knnMonitorQueries, seed + 29);

  if (resumed) {
    const t = resumed.tensors;
    online.backbone.loadStateDict(withPrefix(t, 'online.backbone.'), { strict: true });
    online.projector.loadStateDict(withPrefix(t, 'online.projector.'), { strict: true });
    target.backbone.loadStateDict(withPrefix(t, 'target.backbone.'), { strict: true });
    target.projector.loadStateDict(withPrefix(t, 'target.projector.'), { strict: true });
    const ob = withPrefix(t, 'optim.backbone.'), op = withPrefix(t, 'optim.projector.');
    if (ob.size) online.backbone.loadOptimizerState(ob);
    if (op.size) online.projector.loadOptimizerState(op);
    disposeMap(t);
    const s = resumed.state;
    step = s.step;
    startEpoch = s.epoch;
    skippedSteps = s.skippedSteps;
    trainSeconds = s.trainSeconds;
    imagesSeen = s.imagesSeen;
    knnTop1RandomInit = s.knnTop1RandomInit ?? null;
    knnHistory = s.knnHistory ?? [];
    truncateMetrics(metricsPath, step);
    say(`resumed from ${resumePath} at step ${step} (epoch ${startEpoch + 1}/${epochs})`);
  } else {
    fs.writeFileSync(metricsPath, '');
  }
  const matmulPrecision = getMatmulPrecision();
  const sideBySide = options.sideBySide ?? sideBySideDefault(online.backbone, views);
  say(`device: ${device} (${deviceReason}); matmul precision: ${matmulPrecisionSummary(device)}`);
  say(
    `data: ${train.name}, ${trainSet.size} images ${c.imageShape.join('x')}; model: ResNet-${c.depth} (${c.stem} stem, width x${c.width}, ` +
      `${online.backbone.featureDim}-d features) + projector ${c.projectorDim}; ${views} views${sideBySide ? ' side by side' : ''}; ${c.optimizer.toUpperCase()} lr ${c.lr} x ${batchSize}/256; ` +
      `${epochs} epochs x ${stepsPerEpoch} steps`,
  );
  if (!knnPossible) say(`kNN evaluation skipped: no labels in ${unlabelled.join(', ')} (pretraining needs none)`);

  const evalFeatures = async (net: Model, ds: Dataset, idx: Int32Array) => extractFeatures(net, ds, idx, { batchSize: 512, device });
  const labelsOf = (ds: Dataset, idx: Int32Array) => Int32Array.from(idx, (i) => ds.labels![i]);
  const knnOn = async (net: Model, bankIdx: Int32Array, queryIdx: Int32Array) => {
    const bank = await evalFeatures(net, trainSet, bankIdx);
    const queries = await evalFeatures(net, test.dataset, queryIdx);
    try {
      return await knnEvaluate(bank, labelsOf(trainSet, bankIdx), queries, labelsOf(test.dataset, queryIdx), {
        k: c.knnK,
        temperature: c.knnTemperature,
        classes: Math.max(trainSet.numClasses ?? 0, test.dataset.numClasses ?? 0) || undefined,
      });
    } finally {
      bank.dispose();
      queries.dispose();
    }
  };
  const finalBank = subsetIndices(trainSet.size, c.knnBank, seed + 31);
  const allQueries = subsetIndices(test.dataset.size, 0, 0);
  const finalKnn = (options.finalKnn ?? true) && knnPossible;

  if (!resumed && (options.randomInitKnn ?? true) && finalKnn) {
    const t0 = Date.now();
    const r = await knnOn(online.backbone, finalBank, allQueries);
    knnTop1RandomInit = r.top1;
    say(`kNN top-1 of the same network at random initialisation: ${(100 * r.top1).toFixed(2)}% (${finalBank.length} bank images, ${allQueries.length} test images, ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  }

  const state = (reason: string, epochNow: number, stepInEpoch: number): TrainingState => ({
    step,
    epoch: epochNow,
    config: c as unknown as Record<string, unknown>,
    loader: { seed, epoch: epochNow, stepInEpoch },
    skippedSteps,
    trainSeconds,
    imagesSeen,
    knnTop1RandomInit: knnTop1RandomInit ?? undefined,
    knnHistory,
    reason,
  });
  const writeCheckpoint = async (s: TrainingState) => {
    const m = new Map<string, Tensor>();
    const parts: [string, Map<string, Tensor>][] = [
      ['online.backbone.', online.backbone.stateDict()],
      ['online.projector.', online.projector.stateDict()],
      ['target.backbone.', target.backbone.stateDict()],
      ['target.projector.', target.projector.stateDict()],
      ['optim.backbone.', online.backbone.optimizerState()],
      ['optim.projector.', online.projector.optimizerState()],
    ];
    for (const [p, t] of parts) prefixed(p, t, m);
    try {
      await saveCheckpoint(checkpointPath, m, s);
    } finally {
      disposeMap(m);
    }
  };

  const optimizerOptions = (lr: number) => ({
    kind: c.optimizer,
    lr,
    momentum: 0.9,
    weightDecay: c.weightDecay,
    trust: 0.001,
  });

  let lastLoss: number | null = null, lastAlignment: number | null = null;
  const runStart = Date.now();
  let stoppedEarly = false;
  const scratch = makeStepScratch(online, target, options.viewActivationBudget ?? VIEW_ACTIVATION_BUDGET, sideBySide);
  let signalled: string | null = null;
  const onSignal = (sig: string) => {
    if (signalled) process.exit(130); // a second Ctrl-C: give up at once (the last checkpoint stays)
    signalled = sig;
    say(`${sig}: stopping after this step and writing a resumable checkpoint (press Ctrl-C again to quit at once)`);
  };
  if (options.handleSignals) {
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  }
  try {
    for (let epoch = startEpoch; epoch < epochs && !stoppedEarly; epoch++) {
      const epochFirstStep = epoch * stepsPerEpoch;
      const perm = epochPermutation(trainSet.size, seed, epoch);
      const fetch = (s: number) =>
        augmentBatch(trainSet, perm.subarray(s * batchSize, (s + 1) * batchSize), viewConfigs, seed, epochFirstStep + s, { device });
      // the next batch is augmented on the data threads while this step computes
      let next: Promise<Tensor[]> | null = step - epochFirstStep < stepsPerEpoch ? fetch(Math.max(0, step - epochFirstStep)) : null;
      for (let stepInEpoch = Math.max(0, step - epochFirstStep); stepInEpoch < stepsPerEpoch; stepInEpoch++) {
        if ((options.maxSteps !== undefined && step >= options.maxSteps) || signalled) {
          stoppedEarly = true;
          break;
        }
        const t0 = Date.now(); // step time includes any wait for the data
        const input = await next!;
        next = stepInEpoch + 1 < stepsPerEpoch && (options.maxSteps === undefined || step + 1 < options.maxSteps) ? fetch(stepInEpoch + 1) : null;
        const lr = learningRateAt(step, { baseLr: c.lr, batchSize, warmupSteps: c.warmupSteps, totalSteps });
        const m = momentumAt(step, totalSteps, c.baseMomentum);
        const r = await trainStep(online, target, loss, input, m, scratch);
        if (!Number.isFinite(r.loss)) {
          // trainStep restored the state before this step. Save it when it is finite (an optimiser
          // step can overflow the weights themselves); otherwise the last epoch checkpoint stays.
          input.forEach((v) => v.dispose());
          const good = [online.backbone, online.projector, target.backbone, target.projector].every(allFinite);
          if (good) await writeCheckpoint(state('non-finite-loss', epoch, stepInEpoch));
          const saved = good
            ? `The state before this step is saved in ${checkpointPath}`
            : fs.existsSync(checkpointPath)
              ? `The weights had already overflowed, so the last good checkpoint is the previous one in ${checkpointPath}`
              : 'The weights had already overflowed and no earlier checkpoint exists';
          throw new MvebError(
            'E_NUMERIC',
            `training stopped: the loss became non-finite at step ${step} (epoch ${epoch + 1}, lr ${lr.toExponential(3)}). ` +
              `${saved}; try a lower --lr or a larger --batch-size.`,
          );
        }
        // the projector first: a non-finite gradient usually shows there and then nothing is updated
        let finite = (await online.projector.optimizerStep(optimizerOptions(lr))).finite;
        if (finite) finite = (await online.backbone.optimizerStep(optimizerOptions(lr))).finite;
        if (!finite) skippedSteps++;
        input.forEach((v) => v.dispose());
        const seconds = (Date.now() - t0) / 1000;
        trainSeconds += seconds;
        imagesSeen += batchSize;
        lastLoss = r.loss;
        lastAlignment = r.alignment;
        const rec: StepRecord = {
          step,
          epoch,
          loss: r.loss,
          alignment: r.alignment,
          entropy: r.entropy,
          tau: r.widths.reduce((a, b) => a + b, 0) / r.widths.length,
          lr,
          momentum: m,
          imagesPerSecond: batchSize / Math.max(seconds, 1e-6),
        };
        if (!finite) rec.skipped = true;
        step++;
        const rate = imagesSeen / Math.max(trainSeconds, 1e-6);
        reporter.step(rec, ((totalSteps - step) * batchSize) / rate);
      }
      if (next) (await next).forEach((v) => v.dispose());
      if (stoppedEarly) break;
      // ---- end of epoch: kNN monitor, checkpoint ----
      let knnTop1: number | undefined;
      if (c.knnEvery > 0 && knnPossible && ((epoch + 1) % c.knnEvery === 0 || epoch + 1 === epochs)) {
        knnTop1 = (await knnOn(online.backbone, monitorBank, monitorQueries)).top1;
      }
      const rec = { epoch, step, knnTop1, seconds: (Date.now() - runStart) / 1000 };
      knnHistory.push(rec);
      reporter.epoch(rec);
      await writeCheckpoint(state(epoch + 1 === epochs ? 'final' : 'epoch', epoch + 1, 0));
    }
    if (stoppedEarly) {
      const epochNow = Math.floor(step / stepsPerEpoch);
      await writeCheckpoint(state('interrupted', epochNow, step - epochNow * stepsPerEpoch));
      say(`stopped after ${step} steps (${signalled ?? 'maxSteps'}); continue with --resume`);
    }

    // ---- final evaluation ----
    let knnTop1: number | null = null, knnTop5: number | undefined;
    if (finalKnn && !stoppedEarly) {
      const t0 = Date.now();
      const r = await knnOn(online.backbone, finalBank, allQueries);
      knnTop1 = r.top1;
      knnTop5 = r.top5;
      say(`kNN top-1 on the ${allQueries.length} test images (bank ${finalBank.length}): learned ${(100 * r.top1).toFixed(2)}%` +
        (knnTop1RandomInit !== null ? `, random init ${(100 * knnTop1RandomInit).toFixed(2)}%` : '') + ` (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    }
    const summary: PretrainSummary = {
      epochs: stoppedEarly ? step / stepsPerEpoch : epochs,
      steps: step,
      seconds: (Date.now() - runStart) / 1000,
      imagesPerSecond: imagesSeen / Math.max(trainSeconds, 1e-6),
      knnTop1,
      knnTop1RandomInit,
      checkpoint: checkpointPath,
      report: reportPath,
      metrics: metricsPath,
      device,
      deviceReason,
      matmulPrecision,
      skippedSteps,
      finalLoss: lastLoss,
      finalAlignment: lastAlignment,
      out,
    };
    if (knnTop5 !== undefined) summary.knnTop5 = knnTop5;
    reporter.close();
    const metrics = readMetrics(metricsPath);
    fs.writeFileSync(
      reportPath,
      renderReport({
        title: `MVEB pretraining: ResNet-${c.depth} x${c.width} on ${c.data}`,
        steps: metrics.steps,
        epochs: metrics.epochs,
        summary: summary as unknown as Record<string, unknown>,
        config: c as unknown as Record<string, unknown>,
      }),
    );
    return summary;
  } finally {
    if (options.handleSignals) {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    reporter.close();
    disposeStepScratch(scratch);
    for (const n of [online, target]) {
      n.backbone.dispose();
      n.projector.dispose();
    }
    loss.dispose?.();
  }
}

export interface StepResult {
  loss: number;
  alignment: number;
  entropy: number;
  widths: number[];
}

/** The default PretrainOptions.viewActivationBudget. */
export const VIEW_ACTIVATION_BUDGET = 2 * 2 ** 30;

/** Scratch copies of the four networks for cheap device-side snapshots (Model.copyFrom: one memcpy),
 * and the copies of the online networks that run the views other than the last when their
 * activations fit the budget (`viewNets`, one per such view, or null: recompute them), decided at the
 * first step for the views' shapes (`viewShapes`). With `sideBySide` (and view copies) the views run
 * side by side (Model.forwardAll / backwardAll), the target's first view on `targetView`, a copy of
 * the target networks. */
export interface StepScratch {
  onlineBackbone: Model;
  onlineProjector: Model;
  targetBackbone: Model;
  targetProjector: Model;
  passBackbone: Model;
  passProjector: Model;
  viewActivationBudget: number;
  viewShapes: string | null;
  viewNets: Net[] | null;
  sideBySide: boolean;
  targetView: Net | null;
}

/** PretrainOptions.sideBySide's default for a model and a number of views: on the CPU with at least
 * two threads and no more threads than views. Side by side, each view's ops run on one pool thread, so
 * with more threads than views some would sit idle (the pool does not split into groups). */
function sideBySideDefault(m: Model, views: number): boolean {
  const threads = backends().cpu.threads;
  return m.device === 'cpu' && threads >= 2 && threads <= views;
}

/** sideBySide (default: sideBySideDefault for the two global views) runs the views' passes side by
 * side, one per pool thread (see trainStep; PretrainOptions.sideBySide). */
export function makeStepScratch(online: Net, target: Net, viewActivationBudget = VIEW_ACTIVATION_BUDGET,
  sideBySide = sideBySideDefault(online.backbone, 2)): StepScratch {
  return {
    onlineBackbone: online.backbone.clone(),
    onlineProjector: online.projector.clone(),
    targetBackbone: target.backbone.clone(),
    targetProjector: target.projector.clone(),
    passBackbone: online.backbone.clone(),
    passProjector: online.projector.clone(),
    viewActivationBudget,
    viewShapes: null,
    viewNets: null,
    sideBySide,
    targetView: null,
  };
}

function disposeNets(nets: Net[] | null): void {
  for (const n of nets ?? []) {
    n.backbone.dispose();
    n.projector.dispose();
  }
}

export function disposeStepScratch(s: StepScratch): void {
  for (const m of [s.onlineBackbone, s.onlineProjector, s.targetBackbone, s.targetProjector, s.passBackbone, s.passProjector]) m.dispose();
  disposeNets(s.viewNets);
  disposeNets(s.targetView ? [s.targetView] : null);
}

// The networks that run views 0 .. V-2 forward for the loss: copies of the online networks with
// their own activations when those fit scratch.viewActivationBudget (decided from the views' shapes
// alone, so every step of a run, resumed or not, takes the same path), else the online networks
// themselves (those views are then recomputed before their backward).
function viewNetsFor(online: Net, views: Tensor[], scratch: StepScratch): Net[] {
  const kept = views.length - 1;
  const shapes = views.map((v) => v.shape.join('x')).join(',');
  if (scratch.viewShapes !== shapes) {
    let bytes = 0;
    for (let v = 0; v < kept; v++) {
      bytes += online.backbone.activationBytesFor(views[v].shape);
      bytes += online.projector.activationBytesFor([views[v].shape[0], online.backbone.featureDim]);
    }
    disposeNets(scratch.viewNets);
    scratch.viewNets = kept > 0 && bytes <= scratch.viewActivationBudget
      ? Array.from({ length: kept }, () => ({ backbone: online.backbone.clone(), projector: online.projector.clone() }))
      : null;
    scratch.viewShapes = shapes;
  }
  return scratch.viewNets ?? Array.from({ length: kept }, () => online);
}

/**
 * Training forwards of nets[v] (backbone, then projector) on views[v], side by side (Model.forwardAll).
 * nets ends with the networks whose BN running statistics count: the others are copies, which
 * start from those networks' parameters and buffers here; `before` holds the buffers all start
 * from, and the last networks' running statistics end as running the views in order on them would
 * have left them (Model.mergeRunningStats). save: keep activations for backward.
 */
async function forwardSideBySide(nets: Net[], views: Tensor[], before: Net, save: boolean): Promise<Tensor[]> {
  const last = nets[nets.length - 1];
  const copies = nets.slice(0, -1);
  for (const c of copies) {
    c.backbone.copyFrom(last.backbone);
    c.projector.copyFrom(last.projector);
  }
  const opts = { train: true, saveForBackward: save };
  const hs = await Model.forwardAll(nets.map((n) => n.backbone), views, opts);
  let zs: Tensor[];
  try {
    zs = await Model.forwardAll(nets.map((n) => n.projector), hs, opts);
  } finally {
    hs.forEach((h) => h.dispose());
  }
  last.backbone.mergeRunningStats(before.backbone, copies.map((c) => c.backbone));
  last.projector.mergeRunningStats(before.projector, copies.map((c) => c.projector));
  return zs;
}

/** Backward of every view's networks side by side (Model.backwardAll), the copies' gradients then
 * added into the last (online) networks' in view order, as the one-after-the-other path adds them. */
async function backwardSideBySide(nets: Net[], grads: Tensor[]): Promise<void> {
  const last = nets[nets.length - 1];
  const copies = nets.slice(0, -1);
  for (const c of copies) {
    c.backbone.zeroGrad();
    c.projector.zeroGrad();
  }
  const gh = await Model.backwardAll(nets.map((n) => n.projector), grads);
  try {
    const gx = await Model.backwardAll(nets.map((n) => n.backbone), gh as Tensor[], { inputGrad: false });
    gx.forEach((g) => g?.dispose());
  } finally {
    gh.forEach((g) => g?.dispose());
  }
  for (const c of copies) {
    last.backbone.addGradientsFrom(c.backbone);
    last.projector.addGradientsFrom(c.projector);
  }
}

/** copyFrom's options for the BN running statistics alone. */
const BUFFERS_ONLY = { parameters: false, buffers: true };

/**
 * Training forwards of the views one after another (forwardSideBySide's counterpart): view v on
 * nets[v], a copy of the online networks (parameters and BN buffers copied in, its updated buffers
 * copied back, so the running statistics count each view once, in order) or the online networks
 * themselves. Each view's embedding goes into z as soon as it exists (the caller disposes them).
 */
async function forwardInTurn(online: Net, nets: Net[], views: Tensor[], z: Tensor[]): Promise<void> {
  for (let v = 0; v < views.length; v++) {
    const net = nets[v];
    if (net !== online) {
      net.backbone.copyFrom(online.backbone);
      net.projector.copyFrom(online.projector);
    }
    const h = await net.backbone.forward(views[v], { train: true });
    z.push(await net.projector.forward(h, { train: true }));
    h.dispose();
    if (net !== online) {
      online.backbone.copyFrom(net.backbone, BUFFERS_ONLY);
      online.projector.copyFrom(net.projector, BUFFERS_ONLY);
    }
  }
}

/**
 * Backward of the views one after another (backwardSideBySide's counterpart), after forwardInTurn:
 * the last view's activations are still live in the online networks; each copy holds its view's (its
 * gradients are then added into the online networks'); views run on the online networks are
 * recomputed (same input, same batch statistics, so the same activations).
 */
async function backwardInTurn(online: Net, nets: Net[], views: Tensor[], grads: Tensor[]): Promise<void> {
  const backward = async (net: Net, v: number) => {
    const gh = await net.projector.backward(grads[v]);
    const gx = await net.backbone.backward(gh!, { inputGrad: false });
    gh!.dispose();
    gx?.dispose();
  };
  const V = views.length;
  await backward(online, V - 1);
  for (let v = 0; v < V - 1; v++) {
    const net = nets[v];
    if (net !== online) {
      net.backbone.zeroGrad();
      net.projector.zeroGrad();
      await backward(net, v);
      online.backbone.addGradientsFrom(net.backbone);
      online.projector.addGradientsFrom(net.projector);
      continue;
    }
    const h = await online.backbone.forward(views[v], { train: true });
    const zz = await online.projector.forward(h, { train: true });
    h.dispose();
    zz.dispose();
    await backward(online, v);
  }
}

/**
 * One MVEB step up to (not including) the optimiser: online forward of every view, EMA + target
 * forward of the two global views, loss, backward. Gradients are left in the online models. With a
 * non-finite loss nothing is back-propagated and the models' state before the step is restored
 * (snapshots are device-side arena copies into `scratch`, so the guard costs a few memcpys a step).
 * `scratch` comes from makeStepScratch(online, target[, viewActivationBudget[, sideBySide]]) (dispose
 * it with disposeStepScratch); views[0] and views[1] are the global views. With scratch.sideBySide and
 * the view copies, the views' passes (and the target's two) run side by side (forwardSideBySide,
 * backwardSideBySide): the same step up to the rounding of float sums.
 */
export async function trainStep(online: Net, target: Net, loss: MVEBLoss, views: Tensor[], m: number, scratch: StepScratch): Promise<StepResult> {
  const V = views.length;
  // rollback snapshots: BN buffers of the online nets (parameters do not change before the optimiser), all of the target
  scratch.onlineBackbone.copyFrom(online.backbone, BUFFERS_ONLY);
  scratch.onlineProjector.copyFrom(online.projector, BUFFERS_ONLY);
  scratch.targetBackbone.copyFrom(target.backbone);
  scratch.targetProjector.copyFrom(target.projector);
  const z: Tensor[] = [];
  const targets: Tensor[] = [];
  // view v runs on nets[v]: for v < V - 1 a copy of the online networks or (recomputed in the
  // backward) the online networks themselves; the last view on the online networks
  const nets = [...viewNetsFor(online, views, scratch), online];
  // side by side: every view on its own networks (copies for all but the last), one pool thread each
  const sideBySide = scratch.sideBySide && V > 1 && nets[0] !== online;
  try {
    if (sideBySide) z.push(...(await forwardSideBySide(nets, views, { backbone: scratch.onlineBackbone, projector: scratch.onlineProjector }, true)));
    else await forwardInTurn(online, nets, views, z);
    if (V > 1) {
      scratch.passBackbone.copyFrom(online.backbone, BUFFERS_ONLY);
      scratch.passProjector.copyFrom(online.projector, BUFFERS_ONLY);
    }
    await target.backbone.emaUpdate(online.backbone, m);
    await target.projector.emaUpdate(online.projector, m);
    if (sideBySide) {
      scratch.targetView ??= { backbone: target.backbone.clone(), projector: target.projector.clone() };
      const targetNets = [scratch.targetView, target];
      const before = { backbone: scratch.targetBackbone, projector: scratch.targetProjector };  // the EMA leaves buffers alone
      targets.push(...(await forwardSideBySide(targetNets, views.slice(0, 2), before, false)));
    } else {
      for (let v = 0; v < 2; v++) {
        const h = await target.backbone.forward(views[v], { train: true, saveForBackward: false });
        targets.push(await target.projector.forward(h, { train: true, saveForBackward: false }));
        h.dispose();
      }
    }
    let r: Awaited<ReturnType<MVEBLoss['forward']>>;
    try {
      r = await loss.forward(z, targets);
    } catch (e) {
      // non-finite embeddings are refused by the loss (E_NUMERIC): the same as a non-finite loss
      if ((e as { code?: string }).code !== 'E_NUMERIC') throw e;
      r = { loss: NaN, alignment: NaN, entropy: NaN, widths: [NaN], grads: [] } as unknown as typeof r;
    }
    const result: StepResult = { loss: r.loss, alignment: r.alignment, entropy: r.entropy, widths: Array.from(r.widths as ArrayLike<number>) };
    if (!Number.isFinite(r.loss)) {
      r.grads.forEach((g: Tensor) => g.dispose());
      online.backbone.copyFrom(scratch.onlineBackbone, BUFFERS_ONLY);
      online.projector.copyFrom(scratch.onlineProjector, BUFFERS_ONLY);
      target.backbone.copyFrom(scratch.targetBackbone);
      target.projector.copyFrom(scratch.targetProjector);
      return result;
    }
    online.backbone.zeroGrad();
    online.projector.zeroGrad();
    if (sideBySide) await backwardSideBySide(nets, r.grads);
    else await backwardInTurn(online, nets, views, r.grads);
    if (V > 1) {
      // BN running statistics as after the first pass: each view counted once
      online.backbone.copyFrom(scratch.passBackbone, BUFFERS_ONLY);
      online.projector.copyFrom(scratch.passProjector, BUFFERS_ONLY);
    }
    r.grads.forEach((g: Tensor) => g.dispose());
    return result;
  } finally {
    z.forEach((t) => t.dispose());
    targets.forEach((t) => t.dispose());
  }
}

