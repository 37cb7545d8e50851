// loader.ts: MultiCropLoader, the training data stream. Each epoch is a seeded permutation of the
// dataset cut into batches; each batch is augmented natively into V views while the caller is still
// computing on the previous one (one batch of prefetch). Batch b of epoch e is a pure function of
// (seed, e, b): it uses global step e * length + b as the augmentation step, so a run resumed at any
// step sees exactly the batches an uninterrupted run would. Tested by test/data.test.ts.
import { check, checkBoolean } from '../errors';
import { DeviceName, Tensor } from '../tensor';
import { Dataset } from './dataset';
import { NativeDataset, ViewConfig, augmentBatch, defaultViews, epochPermutation } from './augment';

export interface MultiCropLoaderOptions {
  batchSize: number;
  /** explicit views; default defaultViews({ globalSize, localSize, localCrops }); a number only checks the count */
  views?: ViewConfig[] | number;
  /** global crop size (default: the dataset's height); alias cropSize */
  globalSize?: number;
  cropSize?: number;
  /** local crop size (default round(globalSize * 96 / 224)); alias localCropSize */
  localSize?: number;
  localCropSize?: number;
  /** local crops in addition to the two global views (default 0) */
  localCrops?: number;
  seed?: number;
  /** drop the last incomplete batch (default true, as the official loader) */
  dropLast?: boolean;
  /** shuffle every epoch (default true) */
  shuffle?: boolean;
  /** native threads for augmentation (default 0 = all cores) */
  threads?: number;
  /** where the view tensors are delivered (default 'cpu') */
  device?: DeviceName;
}

export interface MultiCropBatch {
  /** one NCHW float32 tensor [B, C, size, size] per view; the caller disposes them */
  views: Tensor[];
  /** dataset indices of the batch */
  indices: Int32Array;
  /** batch number within the epoch (0 .. length-1) */
  step: number;
  /** epoch * length + step */
  globalStep: number;
  /** labels of the batch, when the dataset has labels */
  labels?: Int32Array;
}

export class MultiCropLoader {
  readonly dataset: Dataset;
  readonly views: ViewConfig[];
  readonly batchSize: number;
  readonly seed: number;
  readonly dropLast: boolean;
  readonly shuffle: boolean;
  readonly device: DeviceName;
  readonly #native: NativeDataset;

  constructor(dataset: Dataset, opts: MultiCropLoaderOptions) {
    check(opts && Number.isInteger(opts.batchSize) && opts.batchSize >= 1, 'E_ARG', `batchSize must be a positive integer, found ${opts?.batchSize}`);
    this.dataset = dataset;
    this.batchSize = opts.batchSize;
    this.seed = opts.seed ?? 0;
    check(Number.isInteger(this.seed) && this.seed >= 0, 'E_ARG', `seed must be a non-negative integer, found ${this.seed}`);
    this.dropLast = checkBoolean(opts.dropLast, true, 'MultiCropLoader: dropLast');
    this.shuffle = checkBoolean(opts.shuffle, true, 'MultiCropLoader: shuffle');
    this.device = opts.device ?? 'cpu';
    if (Array.isArray(opts.views)) {
      this.views = opts.views;
    } else {
      const globalSize = opts.globalSize ?? opts.cropSize ?? dataset.height;
      this.views = defaultViews({ globalSize, localSize: opts.localSize ?? opts.localCropSize, localCrops: opts.localCrops ?? 0 });
      if (typeof opts.views === 'number')
        check(opts.views === this.views.length, 'E_ARG', `views = ${opts.views} but 2 global + ${opts.localCrops ?? 0} local crops make ${this.views.length}`);
    }
    check(this.views.length > 0, 'E_ARG', 'at least one view is required');
    check(
      this.dropLast ? dataset.size >= this.batchSize : dataset.size >= 1,
      'E_ARG',
      `the dataset has ${dataset.size} images, fewer than one batch of ${this.batchSize} (dropLast)`,
    );
    this.#native = new NativeDataset(dataset, { threads: opts.threads ?? 0 });
  }

  /** Batches per epoch. */
  get length(): number {
    return this.dropLast ? Math.floor(this.dataset.size / this.batchSize) : Math.ceil(this.dataset.size / this.batchSize);
  }

  /** The dataset order of an epoch. */
  order(epoch: number): Int32Array {
    if (!this.shuffle) return Int32Array.from({ length: this.dataset.size }, (_, i) => i);
    return epochPermutation(this.dataset.size, this.seed, epoch);
  }

  /** Batch `step` of `epoch` alone (not prefetched). */
  async batch(epoch: number, step: number, order: Int32Array = this.order(epoch)): Promise<MultiCropBatch> {
    check(Number.isInteger(step) && step >= 0 && step < this.length, 'E_ARG', `step must be in [0, ${this.length}), found ${step}`);
    const indices = order.slice(step * this.batchSize, Math.min(order.length, (step + 1) * this.batchSize));
    const globalStep = epoch * this.length + step;
    const views = await augmentBatch(this.#native, indices, this.views, this.seed, globalStep, { device: this.device });
    const labels = this.dataset.labels ? Int32Array.from(indices, (i) => this.dataset.labels![i]) : undefined;
    return { views, indices, step, globalStep, ...(labels ? { labels } : {}) };
  }

  /**
   * The batches of an epoch, from batch `fromStep` on. The next batch is being augmented while the
   * caller works on the current one. Leaving the loop early disposes the prefetched batch.
   */
  async *epoch(epoch: number, fromStep = 0): AsyncGenerator<MultiCropBatch> {
    check(Number.isInteger(epoch) && epoch >= 0, 'E_ARG', `epoch must be a non-negative integer, found ${epoch}`);
    const n = this.length;
    // (fromStep = n: the epoch is done, nothing to yield; past it was silently the same)
    check(Number.isInteger(fromStep) && fromStep >= 0 && fromStep <= n, 'E_ARG', `fromStep must be in [0, ${n}], found ${fromStep}`);
    const order = this.order(epoch);
    // a prefetch that fails is reported when it is awaited; marked handled so an abandoned loop cannot crash the process
    const start = (s: number) => {
      const p = this.batch(epoch, s, order);
      p.catch(() => undefined);
      return p;
    };
    let pending: Promise<MultiCropBatch> | null = fromStep < n ? start(fromStep) : null;
    try {
      for (let s = fromStep; s < n; s++) {
        const current = await pending!;
        pending = s + 1 < n ? start(s + 1) : null;
        yield current;
      }
    } finally {
      if (pending) {
        const left = pending;
        pending = null;
        await left.then((b) => b.views.forEach((t) => t.dispose()), () => undefined);
      }
    }
  }

  /** Frees the native copy of the dataset. */
  dispose(): void {
    this.#native.dispose();
  }
}
