// augment.ts: the TypeScript face of the native augmentation pipeline (native/data/augment.h has
// the op-by-op description). A Dataset is uploaded to native memory once (NativeDataset, cached per
// Dataset object); augmentBatch / evalBatch then run on the dataset's own native worker threads and
// resolve to NCHW float32 Tensors. Tested by test/data.test.ts and test/native/test_augment.cpp.
import { MvebError, check, checkOptions } from '../errors';
import { native } from '../native';
import { MAX_LOCAL_CROPS } from '../train/defaults';
import { DeviceName, Tensor } from '../tensor';
import { Dataset, channelStats, isTypedArray } from './dataset';

/** One view of the multi-crop pipeline (defaults: the official DINO/MVEB values, see defaultViews). */
export interface ViewConfig {
  /** output size (square) */
  size: number;
  /** RandomResizedCrop area fraction [lo, hi] (default [0.4, 1]) */
  scale?: [number, number];
  /** RandomResizedCrop aspect ratio [lo, hi] (default [3/4, 4/3]) */
  ratio?: [number, number];
  flipP?: number; // default 0.5
  jitterP?: number; // default 0.8
  brightness?: number; // 0.4
  contrast?: number; // 0.4
  saturation?: number; // 0.2
  hue?: number; // 0.1
  grayscaleP?: number; // 0.2
  blurP?: number; // default 0
  blurSigma?: [number, number]; // [0.1, 2.0]
  solarizeP?: number; // default 0
  /** per-channel normalisation (default: defaultNormalization(dataset)) */
  mean?: number[];
  std?: number[];
}

export const IMAGENET_MEAN = [0.485, 0.456, 0.406];
export const IMAGENET_STD = [0.229, 0.224, 0.225];

const statsCache = new WeakMap<Dataset, { mean: number[]; std: number[] }>();

/**
 * The normalisation used for a dataset when none is given: its own mean/std fields when it has them
 * (the built-in Fashion-MNIST does), ImageNet's for RGB (the official pipeline), otherwise the
 * per-channel statistics of the dataset's pixels (computed once per Dataset object).
 */
export function defaultNormalization(ds: Dataset): { mean: number[]; std: number[] } {
  if (ds.mean && ds.std) return { mean: ds.mean, std: ds.std };
  if (ds.channels === 3) return { mean: IMAGENET_MEAN, std: IMAGENET_STD };
  let s = statsCache.get(ds);
  if (!s) {
    const st = channelStats(ds);
    s = { mean: st.mean, std: st.std.map((x) => (x > 1e-6 ? x : 1)) };
    statsCache.set(ds, s);
  }
  return s;
}

export interface DefaultViewsOptions {
  /** size of the two global crops (default 224) */
  globalSize?: number;
  /** size of the local crops (default round(globalSize * 96 / 224)) */
  localSize?: number;
  /** number of local crops (default 6; 0 for two views only) */
  localCrops?: number;
  globalScale?: [number, number]; // default [0.4, 1]
  localScale?: [number, number]; // default [0.05, 0.4]
  mean?: number[];
  std?: number[];
}

/**
 * The views of DataAugmentationDINO (mveb-spec.md section 5): [global 1 (blur 1.0), global 2
 * (blur 0.1, solarize 0.2), local x localCrops (blur 0.5)]; all with flip 0.5, colour jitter 0.8
 * (0.4, 0.4, 0.2, 0.1), grayscale 0.2. One-channel data skips saturation, hue and grayscale (they
 * are identities there) but keeps brightness and contrast.
 */
export function defaultViews(opts: DefaultViewsOptions = {}): ViewConfig[] {
  opts = checkOptions(opts, 'defaultViews');
  const globalSize = opts.globalSize ?? 224;
  check(Number.isInteger(globalSize) && globalSize >= 1, 'E_ARG', () => `globalSize must be a positive integer, found ${String(globalSize)}`);
  const localSize = opts.localSize ?? Math.max(1, Math.round((globalSize * 96) / 224));
  check(Number.isInteger(localSize) && localSize >= 1, 'E_ARG', () => `localSize must be a positive integer, found ${String(localSize)}`);
  const localCrops = opts.localCrops ?? 6;
  check(
    Number.isInteger(localCrops) && localCrops >= 0 && localCrops <= MAX_LOCAL_CROPS,
    'E_ARG',
    `localCrops must be an integer in [0, ${MAX_LOCAL_CROPS}], found ${localCrops}`,
  );
  const norm = opts.mean || opts.std ? { mean: opts.mean, std: opts.std } : {};
  const common = { ratio: [3 / 4, 4 / 3] as [number, number], flipP: 0.5, jitterP: 0.8, brightness: 0.4, contrast: 0.4, saturation: 0.2, hue: 0.1, grayscaleP: 0.2, blurSigma: [0.1, 2.0] as [number, number], ...norm };
  const gScale = opts.globalScale ?? [0.4, 1.0];
  const lScale = opts.localScale ?? [0.05, 0.4];
  const views: ViewConfig[] = [
    { size: globalSize, scale: gScale, ...common, blurP: 1.0, solarizeP: 0 },
    { size: globalSize, scale: gScale, ...common, blurP: 0.1, solarizeP: 0.2 },
  ];
  for (let i = 0; i < localCrops; i++) views.push({ size: localSize, scale: lScale, ...common, blurP: 0.5, solarizeP: 0 });
  return views;
}

type Handle = unknown;

/** A Dataset's images uploaded to native memory once, with the native threads that augment them. */
export class NativeDataset {
  readonly dataset: Dataset;
  readonly threads: number;
  #handle: Handle | null;

  constructor(dataset: Dataset, opts: { threads?: number } = {}) {
    opts = checkOptions(opts, 'NativeDataset');
    check(dataset && isTypedArray(dataset.images, 'Uint8Array'), 'E_ARG', 'NativeDataset: expected a Dataset (see loadDataset / fromTypedArray)');
    const threads = opts.threads ?? 0;
    check(Number.isInteger(threads) && threads >= 0, 'E_ARG', `threads must be a non-negative integer (0 = all cores), found ${threads}`);
    this.dataset = dataset;
    this.threads = threads;
    this.#handle = native.dataCreate(dataset.images, dataset.size, dataset.height, dataset.width, dataset.channels, threads);
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  /** The native handle (internal); throws E_DISPOSED after dispose(). */
  _handle(): Handle {
    if (this.#handle === null) throw new MvebError('E_DISPOSED', 'the NativeDataset was disposed');
    return this.#handle;
  }

  /** Frees the native copy of the images now (batches in flight finish first). */
  dispose(): void {
    if (this.#handle !== null) native.dataDispose(this.#handle);
    this.#handle = null;
  }
}

const nativeCache = new WeakMap<Dataset, NativeDataset>();

/** The NativeDataset of a Dataset, created (uploaded) on first use and reused afterwards. */
export function nativeDataset(ds: Dataset | NativeDataset): NativeDataset {
  if (ds instanceof NativeDataset) return ds;
  let nd = nativeCache.get(ds);
  if (!nd || nd.disposed) {
    nd = new NativeDataset(ds);
    nativeCache.set(ds, nd);
  }
  return nd;
}

function toIndices(indices: Int32Array | number[]): Int32Array {
  if (isTypedArray(indices, 'Int32Array')) return indices as Int32Array;
  check(Array.isArray(indices), 'E_ARG', 'indices must be an Int32Array or an array of integers');
  return Int32Array.from(indices);
}

/** Fills the defaults of a view and the dataset's normalisation. */
export function resolveView(v: ViewConfig, ds: Dataset): Required<ViewConfig> {
  check(v && typeof v === 'object', 'E_ARG', 'a view must be an object with at least { size }');
  const norm = defaultNormalization(ds);
  return {
    size: v.size,
    scale: v.scale ?? [0.4, 1.0],
    ratio: v.ratio ?? [3 / 4, 4 / 3],
    flipP: v.flipP ?? 0.5,
    jitterP: v.jitterP ?? 0.8,
    brightness: v.brightness ?? 0.4,
    contrast: v.contrast ?? 0.4,
    saturation: v.saturation ?? 0.2,
    hue: v.hue ?? 0.1,
    grayscaleP: v.grayscaleP ?? 0.2,
    blurP: v.blurP ?? 0,
    blurSigma: v.blurSigma ?? [0.1, 2.0],
    solarizeP: v.solarizeP ?? 0,
    mean: v.mean ?? norm.mean,
    std: v.std ?? norm.std,
  };
}

/**
 * Random views of the images at `indices`: one NCHW float32 tensor [B, C, size, size] per view.
 * Deterministic in (seed, step, index, view) whatever the thread count; runs on native threads.
 */
export async function augmentBatch(
  dataset: Dataset | NativeDataset,
  indices: Int32Array | number[],
  views: ViewConfig[],
  seed: number,
  step: number,
  opts: { device?: DeviceName } = {},
): Promise<Tensor[]> {
  const nd = nativeDataset(dataset);
  check(Array.isArray(views) && views.length > 0, 'E_ARG', 'augmentBatch: views must be a non-empty array');
  const resolved = views.map((v) => resolveView(v, nd.dataset));
  const handles = (await native.dataAugmentBatch(nd._handle(), toIndices(indices), resolved, seed, step, opts.device ?? 'cpu')) as unknown[];
  return handles.map((h) => Tensor._wrap(h as never));
}

/**
 * The test transform: images at `indices` as NCHW float32 [B, C, size, size], bicubic-resized when
 * the dataset's images are not size x size, normalised (default: defaultNormalization(dataset)).
 */
export async function evalBatch(
  dataset: Dataset | NativeDataset,
  indices: Int32Array | number[],
  opts: { size?: number; mean?: number[]; std?: number[]; device?: DeviceName } = {},
): Promise<Tensor> {
  const nd = nativeDataset(dataset);
  const ds = nd.dataset;
  const norm = defaultNormalization(ds);
  const size = opts.size ?? (ds.height === ds.width ? ds.height : Math.min(ds.height, ds.width));
  const h = await native.dataEvalBatch(nd._handle(), toIndices(indices), size, opts.mean ?? norm.mean, opts.std ?? norm.std, opts.device ?? 'cpu');
  return Tensor._wrap(h as never);
}

/** A seeded permutation of [0, n) for an epoch (the same on every machine). */
export function epochPermutation(n: number, seed: number, epoch: number): Int32Array {
  return native.dataPermutation(n, seed, epoch) as Int32Array;
}
