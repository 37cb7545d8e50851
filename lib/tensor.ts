// tensor.ts: the public Tensor class. Storage is native (CPU memory or CUDA device memory); a Tensor
// wraps a native TensorHandle. Free it with dispose(); a FinalizationRegistry frees tensors that are
// dropped without dispose() once they are garbage collected (a backstop, not a schedule).
// Tested by test/tensor.test.ts.
import { MvebError, check, checkOptions } from './errors';
import { native, TensorHandle } from './native';

export type DType = 'float32' | 'int32';
export type DeviceName = 'cpu' | 'cuda';
export type TypedData = Float32Array | Int32Array;

const DTYPES: readonly DType[] = ['float32', 'int32'];
const DEVICES: readonly DeviceName[] = ['cpu', 'cuda'];

const registry = new FinalizationRegistry<TensorHandle>((handle) => {
  if (!handle.disposed) handle.dispose();
});

function checkShape(shape: unknown): number[] {
  check(Array.isArray(shape), 'E_SHAPE', () => `shape must be an array of non-negative integers, found ${String(shape)}`);
  shape.forEach((d, i) =>
    check(
      typeof d === 'number' && Number.isInteger(d) && d >= 0,
      'E_SHAPE',
      () => `shape must contain non-negative integers, found ${String(d)} at dimension ${i} of [${shape.join(', ')}]`,
    ),
  );
  return [...shape];
}

function checkDevice(device: unknown): DeviceName {
  check(DEVICES.includes(device as DeviceName), 'E_DEVICE', () => `unknown device '${String(device)}': expected 'cpu' or 'cuda'`);
  return device as DeviceName;
}

function checkDtype(dtype: unknown): DType {
  check(DTYPES.includes(dtype as DType), 'E_DTYPE', () => `unknown dtype '${String(dtype)}': expected 'float32' or 'int32'`);
  return dtype as DType;
}

const numel = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: DeviceName;
  #handle: TensorHandle | null;

  private constructor(handle: TensorHandle, shape: number[], dtype: DType, device: DeviceName) {
    this.#handle = handle;
    this.shape = Object.freeze(shape);
    this.dtype = dtype;
    this.device = device;
    registry.register(this, handle, this);
  }

  /** Wraps a handle returned by a native function (internal). */
  static _wrap(handle: TensorHandle): Tensor {
    const info = native.tensorInfo(handle) as { shape: number[]; dtype: DType; device: DeviceName };
    return new Tensor(handle, info.shape, info.dtype, info.device);
  }

  /** Creates a tensor holding a copy of `data` (number[] becomes float32 unless dtype says int32). */
  static from(data: TypedData | number[], shape: number[], opts: { device?: DeviceName; dtype?: DType } = {}): Tensor {
    opts = checkOptions(opts, 'Tensor.from');
    const s = checkShape(shape);
    const device = checkDevice(opts.device ?? 'cpu');
    let typed: TypedData;
    if (data instanceof Float32Array || data instanceof Int32Array) {
      typed = data;
      if (opts.dtype !== undefined) {
        const want = checkDtype(opts.dtype);
        const have: DType = data instanceof Float32Array ? 'float32' : 'int32';
        check(want === have, 'E_DTYPE', `dtype '${want}' does not match the ${data.constructor.name} given`);
      }
    } else if (Array.isArray(data)) {
      const dtype = checkDtype(opts.dtype ?? 'float32');
      typed = dtype === 'float32' ? Float32Array.from(data) : Int32Array.from(data);
    } else {
      throw new MvebError('E_ARG', 'Tensor.from: data must be a Float32Array, an Int32Array or an array of numbers');
    }
    check(
      typed.length === numel(s),
      'E_SHAPE',
      () => `Tensor.from: data has ${typed.length} elements but shape [${s.join(', ')}] needs ${numel(s)}`,
    );
    const dtype: DType = typed instanceof Float32Array ? 'float32' : 'int32';
    return new Tensor(native.tensorFrom(typed, s, dtype, device), s, dtype, device);
  }

  static zeros(shape: number[], opts: { device?: DeviceName; dtype?: DType } = {}): Tensor {
    opts = checkOptions(opts, 'Tensor.zeros');
    const s = checkShape(shape);
    const dtype = checkDtype(opts.dtype ?? 'float32');
    const device = checkDevice(opts.device ?? 'cpu');
    return new Tensor(native.tensorZeros(s, dtype, device), s, dtype, device);
  }

  /** Standard normal float32 values; element i depends only on (seed, i), so every machine agrees. */
  static randn(shape: number[], opts: { seed?: number; device?: DeviceName } = {}): Tensor {
    opts = checkOptions(opts, 'Tensor.randn');
    const s = checkShape(shape);
    const device = checkDevice(opts.device ?? 'cpu');
    const seed = opts.seed ?? 0;
    check(Number.isSafeInteger(seed) && seed >= 0, 'E_ARG', `seed must be a non-negative integer, found ${seed}`);
    return new Tensor(native.tensorRandn(s, seed, device), s, 'float32', device);
  }

  /** Number of elements. */
  get size(): number {
    return numel(this.shape);
  }

  get disposed(): boolean {
    return this.#handle === null || this.#handle.disposed;
  }

  /** The native handle (internal); throws E_DISPOSED after dispose(). */
  _handle(): TensorHandle {
    if (this.#handle === null || this.#handle.disposed) {
      throw new MvebError('E_DISPOSED', `tensor of shape [${this.shape.join(', ')}] was used after dispose()`);
    }
    return this.#handle;
  }

  /** A copy of the values (downloaded off the JS thread for CUDA tensors). */
  data(): Promise<TypedData> {
    try {
      return native.tensorRead(this._handle());
    } catch (e) {
      return Promise.reject(e);
    }
  }

  dataSync(): TypedData {
    return native.tensorReadSync(this._handle());
  }

  /** A copy on `device` (a copy even when it is already there). */
  to(device: DeviceName): Tensor {
    const d = checkDevice(device);
    return new Tensor(native.tensorTo(this._handle(), d), [...this.shape], this.dtype, d);
  }

  /** Frees the storage now. Safe to call twice. */
  dispose(): void {
    if (this.#handle !== null) {
      registry.unregister(this);
      if (!this.#handle.disposed) this.#handle.dispose();
      this.#handle = null;
    }
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.device}${this.disposed ? ', disposed' : ''})`;
  }
}

export interface MemoryCounter {
  tensors: number;
  bytes: number;
  peakBytes: number;
}

/** Live native buffers (tensors, model arenas) and bytes per device. */
export function memory(): { cpu: MemoryCounter; cuda: MemoryCounter } {
  return native.memory();
}
