// dataset.ts: the in-memory Dataset every loader returns (uint8 HWC images of one size, optional
// labels) and fromTypedArray() for arrays a user already has. Tested by test/data.test.ts.
import { MvebError, check } from '../errors';

export interface Dataset {
  /** a readable name (file or folder it came from) */
  name: string;
  /** number of images N */
  size: number;
  channels: number;
  height: number;
  width: number;
  /** N*H*W*C bytes, HWC per image */
  images: Uint8Array;
  /** one label per image (0 .. numClasses-1), absent for unlabelled data */
  labels?: Int32Array;
  numClasses?: number;
  classNames?: string[];
  /** per-channel normalisation statistics in [0, 1] units, when the source knows them */
  mean?: number[];
  std?: number[];
  /** a new Dataset of the images at `indices` (copied), labels following */
  subset(indices: Int32Array | number[]): Dataset;
}

/**
 * Realm-independent typed-array test (arrays made by the addon or in another vm context, e.g. under
 * jest, fail `instanceof`).
 */
export function isTypedArray(x: unknown, kind: 'Uint8Array' | 'Int32Array' | 'Float32Array' | 'Uint8ClampedArray'): boolean {
  return ArrayBuffer.isView(x) && Object.prototype.toString.call(x) === `[object ${kind}]`;
}

/** Whether `v` is a data argument: a non-empty path (or 'fashion-mnist') or a Dataset (its uint8 images). */
export function isDataSource(v: unknown): boolean {
  return (typeof v === 'string' && v.length > 0) || (v !== null && typeof v === 'object' && isTypedArray((v as Dataset).images, 'Uint8Array'));
}

/** The data of a Dataset, without its methods (what makeDataset checks and completes). */
export type DatasetFields = Omit<Dataset, 'subset'>;

/** Checks the fields for consistency and returns a Dataset (with subset()). */
export function makeDataset(f: DatasetFields): Dataset {
  const dims = [f.size, f.height, f.width, f.channels];
  check(
    dims.every((d) => Number.isInteger(d) && d >= 1),
    'E_SHAPE',
    () => `${f.name}: size, height, width and channels must be positive integers, found [${dims.join(', ')}]`,
  );
  check(f.channels <= 4, 'E_SHAPE', `${f.name}: at most 4 channels are supported, found ${f.channels}`);
  const expected = f.size * f.height * f.width * f.channels;
  check(
    (isTypedArray(f.images, 'Uint8Array') || Buffer.isBuffer(f.images)) && f.images.length === expected,
    'E_SHAPE',
    () => `${f.name}: expected ${expected} image bytes (N*H*W*C = ${dims.join('*')}), found ${f.images?.length}`,
  );
  let numClasses = f.numClasses;
  if (f.labels) {
    check(isTypedArray(f.labels, 'Int32Array') && f.labels.length === f.size, 'E_SHAPE',
      () => `${f.name}: expected ${f.size} labels (Int32Array), found ${f.labels?.length}`);
    let max = -1;
    for (let i = 0; i < f.labels.length; i++) {
      const l = f.labels[i];
      check(l >= 0, 'E_FORMAT', () => `${f.name}: label ${l} of image ${i} is negative`);
      if (l > max) max = l;
    }
    numClasses = Math.max(numClasses ?? 0, max + 1, f.classNames?.length ?? 0);
    check(max < numClasses, 'E_FORMAT', `${f.name}: label ${max} is not below numClasses ${numClasses}`);
  }
  for (const [key, v] of [['mean', f.mean], ['std', f.std]] as const) {
    if (v === undefined) continue;
    check(Array.isArray(v) && v.length === f.channels && v.every((x) => Number.isFinite(x)), 'E_ARG',
      () => `${f.name}: ${key} must have one finite number per channel (${f.channels})`);
  }
  const ds: Dataset = {
    name: f.name,
    size: f.size,
    channels: f.channels,
    height: f.height,
    width: f.width,
    images: f.images,
    ...(f.labels ? { labels: f.labels, numClasses } : {}),
    ...(f.classNames ? { classNames: f.classNames } : {}),
    ...(f.mean ? { mean: f.mean } : {}),
    ...(f.std ? { std: f.std } : {}),
    subset(indices: Int32Array | number[]): Dataset {
      return subsetDataset(ds, indices);
    },
  };
  return ds;
}

/** A new Dataset holding copies of the images at `indices` (labels, classes and statistics follow). */
export function subsetDataset(ds: Dataset, indices: Int32Array | number[]): Dataset {
  const per = ds.height * ds.width * ds.channels;
  const images = new Uint8Array(indices.length * per);
  const labels = ds.labels ? new Int32Array(indices.length) : undefined;
  for (let k = 0; k < indices.length; k++) {
    const i = indices[k];
    check(Number.isInteger(i) && i >= 0 && i < ds.size, 'E_ARG', () => `subset: index ${i} is outside [0, ${ds.size})`);
    images.set(ds.images.subarray(i * per, (i + 1) * per), k * per);
    if (labels) labels[k] = ds.labels![i];
  }
  return makeDataset({
    name: `${ds.name} (subset of ${indices.length})`,
    size: indices.length,
    channels: ds.channels,
    height: ds.height,
    width: ds.width,
    images,
    labels,
    numClasses: ds.numClasses,
    classNames: ds.classNames,
    mean: ds.mean,
    std: ds.std,
  });
}

export interface FromTypedArrayOptions {
  /** [N, H, W, C] (layout 'NHWC', the default), [N, C, H, W] (layout 'NCHW') or [N, H, W] (one channel) */
  shape: number[];
  layout?: 'NHWC' | 'NCHW';
  labels?: Int32Array | number[];
  name?: string;
  classNames?: string[];
  mean?: number[];
  std?: number[];
}

/**
 * A Dataset from images already in memory: uint8 (Uint8Array / Uint8ClampedArray, 0..255) or float
 * (Float32Array, 0..1, rounded to uint8). NCHW input is transposed to the internal HWC.
 */
export function fromTypedArray(images: Uint8Array | Uint8ClampedArray | Float32Array, opts: FromTypedArrayOptions): Dataset {
  check(opts && Array.isArray(opts.shape), 'E_ARG', 'fromTypedArray: options.shape is required ([N, H, W, C] or [N, C, H, W])');
  const layout = opts.layout ?? 'NHWC';
  check(layout === 'NHWC' || layout === 'NCHW', 'E_ARG', `fromTypedArray: layout must be 'NHWC' or 'NCHW', found '${layout}'`);
  const shape = opts.shape;
  check(shape.length === 3 || shape.length === 4, 'E_SHAPE', `fromTypedArray: shape must have 3 or 4 dimensions, found [${shape.join(', ')}]`);
  let n: number, h: number, w: number, c: number;
  if (shape.length === 3) [n, h, w, c] = [shape[0], shape[1], shape[2], 1];
  else if (layout === 'NHWC') [n, h, w, c] = shape;
  else [n, c, h, w] = shape;
  const total = n * h * w * c;
  check(
    isTypedArray(images, 'Uint8Array') || Buffer.isBuffer(images) || isTypedArray(images, 'Uint8ClampedArray') || isTypedArray(images, 'Float32Array'),
    'E_DTYPE',
    'fromTypedArray: images must be a Uint8Array, Uint8ClampedArray or Float32Array',
  );
  check(images.length === total, 'E_SHAPE', () => `fromTypedArray: shape [${shape.join(', ')}] needs ${total} values, found ${images.length}`);
  const bytes = new Uint8Array(total);
  const isFloat = isTypedArray(images, 'Float32Array');
  const get = (i: number): number => {
    if (isFloat) {
      const v = images[i];
      if (!(v >= 0 && v <= 1)) throw new MvebError('E_ARG', `fromTypedArray: float images must be in [0, 1], found ${v} at element ${i}`);
      return Math.round(v * 255);
    }
    return images[i];
  };
  if (layout === 'NHWC' || c === 1) {
    for (let i = 0; i < total; i++) bytes[i] = get(i);
  } else {
    const plane = h * w;
    for (let s = 0; s < n; s++)
      for (let ch = 0; ch < c; ch++)
        for (let p = 0; p < plane; p++) bytes[(s * plane + p) * c + ch] = get((s * c + ch) * plane + p);
  }
  let labels: Int32Array | undefined;
  if (opts.labels !== undefined) {
    check(
      opts.labels instanceof Int32Array || (Array.isArray(opts.labels) && opts.labels.every((v) => Number.isInteger(v) && Math.abs(v) < 2 ** 31)),
      'E_ARG',
      'fromTypedArray: labels must be an Int32Array or an array of 32-bit integers',
    );
    labels = Int32Array.from(opts.labels);
    check(labels.length === n, 'E_SHAPE', `fromTypedArray: expected ${n} labels, found ${labels.length}`);
  }
  return makeDataset({
    name: opts.name ?? '(in-memory dataset)',
    size: n,
    channels: c,
    height: h,
    width: w,
    images: bytes,
    labels,
    classNames: opts.classNames,
    mean: opts.mean,
    std: opts.std,
  });
}

/** Per-channel mean and standard deviation of all pixels, in [0, 1] units. */
export function channelStats(ds: Dataset): { mean: number[]; std: number[] } {
  const c = ds.channels;
  const sum = new Float64Array(c), sq = new Float64Array(c);
  const img = ds.images;
  for (let i = 0; i < img.length; i += c)
    for (let ch = 0; ch < c; ch++) {
      const v = img[i + ch];
      sum[ch] += v;
      sq[ch] += v * v;
    }
  const count = img.length / c;
  const mean = Array.from(sum, (s) => s / count / 255);
  const std = Array.from(sq, (s, ch) => Math.sqrt(Math.max(0, s / count / 65025 - mean[ch] * mean[ch])));
  return { mean, std };
}
