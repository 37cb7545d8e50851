// evaluate.ts: evaluation and export of a training checkpoint (behind `mveb eval knn|linear` and
// `mveb export`): rebuilds the backbone from the checkpoint's configuration, loads the online (or
// target) weights, extracts frozen eval-mode features of the labelled train/test splits and runs
// the kNN classifier or the linear probe; export writes the backbone with torchvision names.
// Tested in test/cli.test.ts (a tiny run evaluated and exported).
import * as path from 'path';
import { MvebError, check, checkBoolean, checkOptions } from '../errors';
import { isDataSource } from '../data/dataset';
import { Tensor } from '../tensor';
import { Model } from '../model';
import { Dataset, builtinFashionMnist, loadDataset } from '../data';
import { saveTensors } from '../safetensors';
import { makeDirs } from '../files';
import { extractFeatures, subsetIndices } from '../eval/features';
import { knnEvaluate } from '../eval/knn';
import { linearEvaluate } from '../eval/linear';
import { loadCheckpoint, resolveCheckpointPath, withPrefix } from './checkpoint';
import { resolveDevice, DeviceChoice } from './device';
import { MatmulPrecision, getMatmulPrecision, matmulPrecisionSummary } from '../precision';
import type { ResolvedConfig } from './pretrain';

export interface EvaluateOptions {
  mode: 'knn' | 'linear';
  /** labelled data (default: what the checkpoint was trained on) */
  data?: string | Dataset;
  testData?: string | Dataset;
  trainImages?: number;
  testImages?: number;
  target?: boolean;
  device?: DeviceChoice;
  k?: number;
  temperature?: number;
  epochs?: number;
  batchSize?: number;
  lr?: number;
  weightDecay?: number;
  lars?: boolean;
  standardize?: boolean;
  seed?: number;
  log?: (s: string) => void;
}

export interface EvaluateResult {
  mode: 'knn' | 'linear';
  top1: number;
  top5?: number;
  trainCount: number;
  testCount: number;
  seconds: number;
  device: string;
  /** the CPU matmul precision of the evaluation (setMatmulPrecision / MVEB_MATMUL_PRECISION) */
  matmulPrecision: MatmulPrecision;
  checkpoint: string;
  network: 'online' | 'target';
}

/** The dataset name stored in a checkpoint config, mapped back to something loadable. */
function dataSource(config: Partial<ResolvedConfig>): string | undefined {
  if (config.dataSource) return config.dataSource;
  const d = config.data;
  if (!d) return undefined;
  if (d.startsWith('fashion-mnist')) return 'fashion-mnist';
  const m = /^(.*) \((train|test)\)$/.exec(d);
  return m && m[1] !== '(in-memory dataset)' ? m[1] : undefined;
}

async function split(data: string | Dataset, which: 'train' | 'test'): Promise<Dataset> {
  if (typeof data !== 'string') return data;
  return data === 'fashion-mnist' ? await builtinFashionMnist(which) : await loadDataset(data, { split: which });
}

// evaluateCheckpoint's options: the ones it reads itself (k, temperature and the linear probe's are
// checked by knnEvaluate / linearEvaluate; a mode other than 'knn' ran the linear probe before).
function checkEvaluateOptions(options: EvaluateOptions | undefined): void {
  const o = checkOptions<Partial<EvaluateOptions>>(options, 'evaluateCheckpoint');
  check(o.mode === 'knn' || o.mode === 'linear', 'E_ARG', () => `evaluateCheckpoint: mode must be 'knn' or 'linear', found ${String(o.mode)}`);
  for (const k of ['trainImages', 'testImages', 'seed'] as const) {
    const v = o[k];
    check(v === undefined || (Number.isSafeInteger(v) && v >= 0), 'E_ARG', () => `evaluateCheckpoint: ${k} must be an integer >= 0, found ${String(v)}`);
  }
  for (const k of ['data', 'testData'] as const) {
    const v = o[k];
    check(
      v === undefined || isDataSource(v),
      'E_ARG',
      () => `evaluateCheckpoint: ${k} must be a path, 'fashion-mnist' or a Dataset`,
    );
  }
  checkBoolean(o.target, false, 'evaluateCheckpoint: target');
  check(o.log === undefined || typeof o.log === 'function', 'E_ARG', 'evaluateCheckpoint: log must be a function');
}

/** Loads the backbone (online or target) of a checkpoint onto `device`. */
export async function loadBackbone(
  checkpointPath: string,
  opts: { target?: boolean; device?: DeviceChoice } = {},
): Promise<{ backbone: Model; projector: Model; config: Partial<ResolvedConfig>; path: string }> {
  opts = checkOptions(opts, 'loadBackbone');
  const target = checkBoolean(opts.target, false, 'loadBackbone: target');
  const p = resolveCheckpointPath(checkpointPath);
  const ck = await loadCheckpoint(p);
  const c = ck.state.config as Partial<ResolvedConfig>;
  const { device } = resolveDevice(opts.device ?? 'auto');
  const prefix = target ? 'target.' : 'online.';
  try {
    const backbone = Model.resnet({
      depth: c.depth ?? 18,
      stem: c.stem ?? 'cifar',
      inChannels: c.imageShape?.[0] ?? 3,
      widthMultiplier: c.width ?? 1,
      zeroInitResidual: true,
      seed: 0,
      device,
    });
    const projector = Model.projector({ inDim: backbone.featureDim, hiddenDim: c.projectorDim ?? 2048, outDim: c.projectorDim ?? 2048, seed: 0, device });
    backbone.loadStateDict(withPrefix(ck.tensors, prefix + 'backbone.'), { strict: true });
    projector.loadStateDict(withPrefix(ck.tensors, prefix + 'projector.'), { strict: true });
    return { backbone, projector, config: c, path: p };
  } finally {
    ck.tensors.forEach((t) => t.dispose());
  }
}

/** kNN or linear evaluation of a checkpoint's backbone on labelled train/test splits. */
export async function evaluateCheckpoint(checkpointPath: string, o: EvaluateOptions): Promise<EvaluateResult> {
  checkEvaluateOptions(o);
  const t0 = Date.now();
  const log = o.log ?? (() => undefined);
  const { device, reason } = resolveDevice(o.device ?? 'auto');
  log(`device: ${device} (${reason}); matmul precision: ${matmulPrecisionSummary(device)}`);
  const net = await loadBackbone(checkpointPath, { target: o.target, device });
  try {
    const source = o.data ?? dataSource(net.config);
    if (source === undefined) {
      throw new MvebError('E_ARG', `the checkpoint was trained on ${net.config.data ?? 'unknown data'}; pass --data with labelled images to evaluate on`);
    }
    const train = await split(source, 'train');
    const test = o.testData !== undefined ? await split(o.testData, 'test') : await split(source, 'test');
    if (!train.labels || !test.labels) throw new MvebError('E_ARG', 'evaluation needs labelled train and test images');
    const seed = o.seed ?? 0;
    const trainIdx = subsetIndices(train.size, o.trainImages ?? 0, seed + 31);
    const testIdx = subsetIndices(test.size, o.testImages ?? 0, seed + 37);
    log(`extracting features of ${trainIdx.length} training and ${testIdx.length} test images ...`);
    const fTrain = await extractFeatures(net.backbone, train, trainIdx, { batchSize: 512, device });
    const fTest = await extractFeatures(net.backbone, test, testIdx, { batchSize: 512, device });
    const yTrain = Int32Array.from(trainIdx, (i) => train.labels![i]);
    const yTest = Int32Array.from(testIdx, (i) => test.labels![i]);
    const classes = Math.max(train.numClasses ?? 0, test.numClasses ?? 0) || undefined;
    try {
      let top1: number, top5: number | undefined;
      if (o.mode === 'knn') {
        const r = await knnEvaluate(fTrain, yTrain, fTest, yTest, { k: o.k ?? 200, temperature: o.temperature ?? 0.1, classes });
        top1 = r.top1;
        top5 = r.top5;
      } else {
        const r = await linearEvaluate(fTrain, yTrain, fTest, yTest, {
          classes,
          epochs: o.epochs,
          batchSize: o.batchSize,
          baseLr: o.lr,
          weightDecay: o.weightDecay,
          lars: o.lars,
          standardize: o.standardize,
          seed,
        });
        top1 = r.top1;
        top5 = r.top5;
        log(`linear probe: ${r.epochs} epochs, lr ${r.lr}, final training loss ${r.losses[r.losses.length - 1].toFixed(4)}`);
      }
      const res: EvaluateResult = {
        mode: o.mode,
        top1,
        trainCount: trainIdx.length,
        testCount: testIdx.length,
        seconds: (Date.now() - t0) / 1000,
        device,
        matmulPrecision: getMatmulPrecision(),
        checkpoint: net.path,
        network: o.target ? 'target' : 'online',
      };
      if (top5 !== undefined) res.top5 = top5;
      return res;
    } finally {
      fTrain.dispose();
      fTest.dispose();
    }
  } finally {
    net.backbone.dispose();
    net.projector.dispose();
  }
}

/** Writes the backbone (torchvision names, no fc) and optionally the projector (projector.*) to `out`. */
export async function exportCheckpoint(
  checkpointPath: string,
  out: string,
  opts: { target?: boolean; projector?: boolean } = {},
): Promise<{ path: string; tensors: number; parameters: number }> {
  opts = checkOptions(opts, 'exportCheckpoint');
  check(typeof out === 'string' && out.length > 0, 'E_ARG', () => `exportCheckpoint: out must be a non-empty path, found ${String(out)}`);
  const projector = checkBoolean(opts.projector, false, 'exportCheckpoint: projector');
  const net = await loadBackbone(checkpointPath, { target: opts.target, device: 'cpu' });
  const m = new Map<string, Tensor>();
  try {
    for (const [k, v] of net.backbone.stateDict()) m.set(k, v);
    if (projector) for (const [k, v] of net.projector.stateDict()) m.set(`projector.${k}`, v);
    let parameters = 0;
    for (const [k, v] of m) if (!k.endsWith('num_batches_tracked') && !k.includes('running_')) parameters += v.size;
    const abs = path.resolve(out);
    makeDirs(path.dirname(abs));
    await saveTensors(abs, m, {
      format: 'pt',
      source: 'mveb',
      network: opts.target ? 'target' : 'online',
      arch: `resnet${net.config.depth ?? 18}`,
      stem: String(net.config.stem ?? 'cifar'),
      width: String(net.config.width ?? 1),
    });
    return { path: abs, tensors: m.size, parameters };
  } finally {
    m.forEach((t) => t.dispose());
    net.backbone.dispose();
    net.projector.dispose();
  }
}
