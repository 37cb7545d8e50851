// model.ts: the public Model class: a torchvision-semantics ResNet-18/34/50 backbone or the MVEB
// projector, held natively in flat arenas (native/core/model.h). forward/backward/optimizerStep/
// emaUpdate run off the JS thread and return Promises; named-tensor views (parameters(), ...) are
// copies in PyTorch layout with torchvision names. save/load use safetensors (lib/safetensors.ts).
// Tested by test/model.test.ts (and natively by test/native/test_model.cpp against PyTorch).
import { MvebError, check, checkBoolean, checkOptions } from './errors';
import { native, TensorHandle } from './native';
import { encodeTensors, loadTensors } from './safetensors';
import { writeFileAtomic } from './files';
import { Tensor, DeviceName } from './tensor';

export interface ResnetOptions {
  depth: 18 | 34 | 50;
  /** 'imagenet': 7x7/2 conv + BN + ReLU + 3x3/2 max pool; 'cifar': 3x3/1 conv + BN + ReLU (default 'imagenet') */
  stem?: 'imagenet' | 'cifar';
  inChannels?: number;
  /** stage widths round(64 w) x {1, 2, 4, 8} (default 1) */
  widthMultiplier?: number;
  /** zero the last BN weight of each residual block (default false, torchvision's default) */
  zeroInitResidual?: boolean;
  seed?: number;
  device?: DeviceName;
}

export interface ProjectorOptions {
  inDim: number;
  hiddenDim: number;
  outDim: number;
  seed?: number;
  device?: DeviceName;
}

export interface OptimizerStepOptions {
  /** 'sgd': PyTorch SGD with momentum, weight decay on every tensor; 'lars': mveb-spec section 4 */
  kind?: 'sgd' | 'lars';
  lr: number;
  momentum?: number;
  weightDecay?: number;
  /** LARS trust coefficient (eta), default 0.001 */
  trust?: number;
}

type Handle = unknown;
const DEVICES: readonly DeviceName[] = ['cpu', 'cuda'];

const registry = new FinalizationRegistry<Handle>((h) => {
  try {
    native.modelDispose(h);
  } catch {
    /* already gone */
  }
});

function int(v: unknown, name: string, lo: number, hi: number, fallback?: number): number {
  if (v === undefined && fallback !== undefined) return fallback;
  check(typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi, 'E_ARG', () => `${name} must be an integer in [${lo}, ${hi}], found ${String(v)}`);
  return v as number;
}

function device(v: unknown): DeviceName {
  if (v === undefined) return 'cpu';
  check(DEVICES.includes(v as DeviceName), 'E_DEVICE', () => `unknown device '${String(v)}': expected 'cpu' or 'cuda'`);
  return v as DeviceName;
}

function toMap(r: { names: string[]; tensors: unknown[] }): Map<string, Tensor> {
  const m = new Map<string, Tensor>();
  r.names.forEach((n, i) => m.set(n, Tensor._wrap(r.tensors[i] as never)));
  return m;
}

function fromMap(map: Map<string, Tensor>, what: string): [string[], unknown[]] {
  check(map instanceof Map, 'E_ARG', `${what}: expected a Map<string, Tensor>`);
  const names: string[] = [];
  const handles: unknown[] = [];
  for (const [k, t] of map) {
    check(typeof k === 'string', 'E_ARG', `${what}: names must be strings`);
    check(t instanceof Tensor, 'E_ARG', () => `${what}: '${k}' is not a Tensor`);
    names.push(k);
    handles.push(t._handle());
  }
  return [names, handles];
}

function forwardOptions(options: { train?: boolean; saveForBackward?: boolean } | undefined, what: string): { train: boolean; save: boolean } {
  const opts = checkOptions(options, what);
  const train = checkBoolean(opts.train, true, `${what}: train`);
  const save = checkBoolean(opts.saveForBackward, true, `${what}: saveForBackward`);
  return { train, save };
}

function checkPairs(models: Model[], tensors: Tensor[], what: string, name: string): void {
  check(Array.isArray(models) && models.every((m) => m instanceof Model), 'E_ARG', `${what}: models must be an array of Models`);
  check(Array.isArray(tensors) && tensors.every((t) => t instanceof Tensor), 'E_ARG', `${what}: ${name} must be an array of Tensors`);
  check(models.length === tensors.length, 'E_ARG', () => `${what}: ${models.length} models but ${tensors.length} ${name}`);
  // (a model given twice: E_ARG from the native call, which checks it for every caller)
}

export class Model {
  readonly kind: 'resnet' | 'projector';
  readonly featureDim: number;
  /** input channels (resnet) or input dimension (projector) */
  readonly inChannels: number;
  readonly device: DeviceName;
  readonly parameterCount: number;
  #handle: Handle | null;

  private constructor(handle: Handle) {
    this.#handle = handle;
    const info = native.modelInfo(handle);
    this.kind = info.kind;
    this.featureDim = info.featureDim;
    this.inChannels = info.inChannels;
    this.device = info.device;
    this.parameterCount = info.parameterCount;
    registry.register(this, handle, this);
  }

  /** A torchvision-semantics ResNet backbone (no fc): forward gives pooled features [N, featureDim]. */
  static resnet(opts: ResnetOptions): Model {
    check(opts !== null && typeof opts === 'object', 'E_ARG', 'Model.resnet: expected an options object');
    check([18, 34, 50].includes(opts.depth), 'E_ARG', () => `Model.resnet: depth must be 18, 34 or 50, found ${String(opts.depth)}`);
    const stem = opts.stem ?? 'imagenet';
    check(stem === 'imagenet' || stem === 'cifar', 'E_ARG', () => `Model.resnet: stem must be 'imagenet' or 'cifar', found '${String(stem)}'`);
    const inChannels = int(opts.inChannels, 'Model.resnet: inChannels', 1, 4096, 3);
    const widthMultiplier = opts.widthMultiplier ?? 1;
    check(
      typeof widthMultiplier === 'number' && Number.isFinite(widthMultiplier) && Math.round(64 * widthMultiplier) >= 1 && widthMultiplier <= 16,
      'E_ARG',
      () => `Model.resnet: widthMultiplier must be a number with round(64 w) >= 1 and w <= 16, found ${String(widthMultiplier)}`,
    );
    const zeroInitResidual = checkBoolean(opts.zeroInitResidual, false, 'Model.resnet: zeroInitResidual');
    const seed = int(opts.seed, 'Model.resnet: seed', 0, 2147483647, 0);
    return new Model(
      native.modelResnet({ depth: opts.depth, stem, inChannels, widthMultiplier, zeroInitResidual, seed, device: device(opts.device) }),
    );
  }

  /** The MVEB projector: Linear(no bias) -> BN1d -> ReLU -> Linear(no bias) -> BN1d -> ReLU -> Linear(bias). */
  static projector(opts: ProjectorOptions): Model {
    check(opts !== null && typeof opts === 'object', 'E_ARG', 'Model.projector: expected an options object');
    const inDim = int(opts.inDim, 'Model.projector: inDim', 1, 1 << 20);
    const hiddenDim = int(opts.hiddenDim, 'Model.projector: hiddenDim', 1, 1 << 20);
    const outDim = int(opts.outDim, 'Model.projector: outDim', 1, 1 << 20);
    const seed = int(opts.seed, 'Model.projector: seed', 0, 2147483647, 0);
    return new Model(native.modelProjector({ inDim, hiddenDim, outDim, seed, device: device(opts.device) }));
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  private h(): Handle {
    if (this.#handle === null) throw new MvebError('E_DISPOSED', `the ${this.kind} model was used after dispose()`);
    return this.#handle;
  }

  /** x: [N, C, H, W] (resnet) or [N, inDim] (projector). train (default true) uses batch statistics
   * and updates the running ones, and saves what backward needs. A ResNet forward with
   * { train: false } (inference) or { train: true, saveForBackward: false } (e.g. the EMA target)
   * keeps no activations: it needs a few activations' worth of memory and allows no backward. */
  async forward(x: Tensor, opts: { train?: boolean; saveForBackward?: boolean } = {}): Promise<Tensor> {
    const { train, save } = forwardOptions(opts, 'forward');
    this.checkInput(x, 'forward');
    return Tensor._wrap(await native.modelForward(this.h(), x._handle(), train, save));
  }

  /** models[i].forward(xs[i], opts) for every i, side by side where the device allows: on the CPU
   * with several threads each model runs on one pool thread (small models then use the cores better
   * than one forward after another on all of them; the default pretraining runs its views so);
   * elsewhere one after the other. The models must be different ones on one device. Results as
   * forward(), in order (with one thread per model the float sums may round differently). */
  static async forwardAll(models: Model[], xs: Tensor[], opts: { train?: boolean; saveForBackward?: boolean } = {}): Promise<Tensor[]> {
    const { train, save } = forwardOptions(opts, 'forwardAll');
    checkPairs(models, xs, 'forwardAll', 'xs');
    models.forEach((m, i) => m.checkInput(xs[i], 'forwardAll'));
    const r: TensorHandle[] = await native.modelsForward(models.map((m) => m.h()), xs.map((x) => x._handle()), train, save);
    return r.map((h) => Tensor._wrap(h));
  }

  /** models[i].backward(gradOuts[i], opts) for every i, side by side as forwardAll runs them. */
  static async backwardAll(models: Model[], gradOuts: Tensor[], opts: { inputGrad?: boolean } = {}): Promise<(Tensor | null)[]> {
    opts = checkOptions(opts, 'backwardAll');
    checkPairs(models, gradOuts, 'backwardAll', 'gradOuts');
    gradOuts.forEach((g) => check(g.dtype === 'float32', 'E_DTYPE', () => `backwardAll: expected float32 gradOuts, found ${g.dtype}`));
    const inputGrad = checkBoolean(opts.inputGrad, true, 'backwardAll: inputGrad');
    const r: (TensorHandle | null)[] = await native.modelsBackward(models.map((m) => m.h()), gradOuts.map((g) => g._handle()), inputGrad);
    return r.map((h) => (h === null ? null : Tensor._wrap(h)));
  }

  private checkInput(x: Tensor, what: string): void {
    check(x instanceof Tensor, 'E_ARG', `${what}: x must be a Tensor`);
    const want = this.kind === 'resnet' ? `[N, ${this.inChannels}, H, W]` : `[N, ${this.inChannels}]`;
    const rank = this.kind === 'resnet' ? 4 : 2;
    check(x.shape.length === rank && x.shape[1] === this.inChannels, 'E_SHAPE', () => `${what}: expected input shape ${want}, found [${x.shape.join(', ')}]`);
    check(x.dtype === 'float32', 'E_DTYPE', () => `${what}: expected a float32 input, found ${x.dtype}`);
    check(x.device === this.device, 'E_DEVICE', () => `${what}: the input is on ${x.device}, the model on ${this.device}`);
  }

  /** gradOut: [N, featureDim] for the last forward. Accumulates parameter gradients; returns the
   * input gradient (null with { inputGrad: false }, which skips computing it). */
  backward(gradOut: Tensor): Promise<Tensor>;
  backward(gradOut: Tensor, opts: { inputGrad?: boolean }): Promise<Tensor | null>;
  async backward(gradOut: Tensor, opts: { inputGrad?: boolean } = {}): Promise<Tensor | null> {
    opts = checkOptions(opts, 'backward');
    check(gradOut instanceof Tensor, 'E_ARG', 'backward: gradOut must be a Tensor');
    check(gradOut.dtype === 'float32', 'E_DTYPE', () => `backward: expected a float32 gradOut, found ${gradOut.dtype}`);
    const inputGrad = checkBoolean(opts.inputGrad, true, 'backward: inputGrad');
    const r = await native.modelBackward(this.h(), gradOut._handle(), inputGrad);
    return r === null ? null : Tensor._wrap(r);
  }

  /** Sets every parameter gradient to zero (one fill of the gradient arena). */
  zeroGrad(): void {
    native.modelZeroGrad(this.h());
  }

  /** Copies of the parameters, torchvision names, PyTorch layouts (conv weights OIHW). */
  parameters(): Map<string, Tensor> {
    return toMap(native.modelNamed(this.h(), 'parameters'));
  }

  gradients(): Map<string, Tensor> {
    return toMap(native.modelNamed(this.h(), 'gradients'));
  }

  /** BN running_mean / running_var (float32) and num_batches_tracked (int32 scalar). */
  buffers(): Map<string, Tensor> {
    return toMap(native.modelNamed(this.h(), 'buffers'));
  }

  /** parameters then buffers, like a torchvision state_dict (without fc). */
  stateDict(): Map<string, Tensor> {
    return toMap(native.modelNamed(this.h(), 'stateDict'));
  }

  /** strict (default true): every entry present and no unknown names (E_FORMAT); shapes must match
   * (E_SHAPE). For a backbone, fc.* entries are ignored. A failed load leaves the model unchanged. */
  loadStateDict(tensors: Map<string, Tensor>, opts: { strict?: boolean } = {}): void {
    opts = checkOptions(opts, 'loadStateDict');
    const [names, handles] = fromMap(tensors, 'loadStateDict');
    native.modelLoadStateDict(this.h(), names, handles, checkBoolean(opts.strict, true, 'loadStateDict: strict'));
  }

  /** Momentum buffers by parameter name (empty before the first optimizerStep). */
  optimizerState(): Map<string, Tensor> {
    return toMap(native.modelNamed(this.h(), 'optimizerState'));
  }

  loadOptimizerState(state: Map<string, Tensor>): void {
    const [names, handles] = fromMap(state, 'loadOptimizerState');
    native.modelLoadOptimizerState(this.h(), names, handles);
  }

  /** A deep copy (parameters, buffers); zero gradients, no optimiser state. */
  clone(): Model {
    return new Model(native.modelClone(this.h()));
  }

  /** Copies `source`'s parameters and/or buffers (BN running statistics and counters) into this
   * model of the same architecture: one native memcpy per arena, no layout transforms. A cheap
   * snapshot / rollback (keep a clone(), copyFrom it to roll back) instead of stateDict() copies. */
  copyFrom(source: Model, opts: { parameters?: boolean; buffers?: boolean } = {}): void {
    opts = checkOptions(opts, 'copyFrom');
    check(source instanceof Model, 'E_ARG', 'copyFrom: source must be a Model');
    const parameters = checkBoolean(opts.parameters, true, 'copyFrom: parameters');
    const buffers = checkBoolean(opts.buffers, true, 'copyFrom: buffers');
    native.modelCopyFrom(this.h(), source.h(), parameters, buffers);
  }

  /** Adds `source`'s gradients into this model's (same architecture, same device): the gradients of
   * a pass run on a copy of this model (a clone() holds its own activations, so two passes can be
   * kept for backward at once) accumulated as if this model had run it. One native axpy. */
  addGradientsFrom(source: Model): void {
    check(source instanceof Model, 'E_ARG', 'addGradientsFrom: source must be a Model');
    native.modelAddGradients(this.h(), source.h());
  }

  /** BN running statistics (and counters) of training forwards run side by side (forwardAll) as
   * running them one after the other on this model would have left them: this model ran the last
   * input, earlier[i] (copies of it, e.g. clone()s) input i, all starting from `before`'s buffers (a
   * snapshot taken just before). Each run updated r_i = (1 - m) r + m s_i (m = 0.1); this sets
   * r = r_this + sum_i (1 - m)^(k - i) (r_i - r_before) for k earlier runs, which equals the
   * sequential result up to rounding. */
  mergeRunningStats(before: Model, earlier: Model[]): void {
    check(before instanceof Model, 'E_ARG', 'mergeRunningStats: before must be a Model');
    check(Array.isArray(earlier) && earlier.every((m) => m instanceof Model), 'E_ARG', 'mergeRunningStats: earlier must be an array of Models');
    native.modelMergeRunningStats(this.h(), before.h(), earlier.map((m) => m.h()));
  }

  /** Bytes of activation memory this model holds (planned for the last input shape; 0 before the
   * first forward). */
  get activationBytes(): number {
    return native.modelInfo(this.h()).activationBytes;
  }

  /** Bytes of activation memory a training forward of an input of this shape would hold (kept for
   * backward), computed without running or allocating anything; E_SHAPE as forward() would. */
  activationBytesFor(shape: readonly number[]): number {
    check(Array.isArray(shape), 'E_SHAPE', 'activationBytesFor: shape must be an array of integers');
    return native.modelActivationBytesFor(this.h(), shape);
  }

  /** this = m * this + (1 - m) * online, over the parameters (not the buffers). */
  async emaUpdate(online: Model, m: number): Promise<void> {
    check(online instanceof Model, 'E_ARG', 'emaUpdate: online must be a Model');
    check(typeof m === 'number' && m >= 0 && m <= 1, 'E_ARG', () => `emaUpdate: momentum must be in [0, 1], found ${String(m)}`);
    await native.modelEmaUpdate(this.h(), online.h(), m);
  }

  /** One optimiser step over all parameters. When any gradient is non-finite nothing changes and
   * { finite: false } is returned. */
  async optimizerStep(opts: OptimizerStepOptions): Promise<{ finite: boolean }> {
    check(opts !== null && typeof opts === 'object', 'E_ARG', 'optimizerStep: expected an options object');
    const kind = opts.kind ?? 'sgd';
    check(kind === 'sgd' || kind === 'lars', 'E_ARG', () => `optimizerStep: kind must be 'sgd' or 'lars', found '${String(kind)}'`);
    for (const k of ['lr', 'momentum', 'weightDecay', 'trust'] as const) {
      const v = opts[k];
      if (k === 'lr' || v !== undefined) check(typeof v === 'number' && Number.isFinite(v), 'E_ARG', () => `optimizerStep: ${k} must be a finite number, found ${String(v)}`);
    }
    return native.modelOptimizerStep(this.h(), { kind, lr: opts.lr, momentum: opts.momentum ?? 0.9, weightDecay: opts.weightDecay ?? 0, trust: opts.trust ?? 0.001 });
  }

  /** Writes the state dict (names prefixed by `prefix`, default none) as safetensors, atomically. */
  async save(path: string, opts: { prefix?: string; metadata?: Record<string, string> } = {}): Promise<void> {
    opts = checkOptions(opts, 'save');
    check(typeof path === 'string' && path.length > 0, 'E_ARG', 'save: path must be a non-empty string');
    const sd = this.stateDict();
    const prefixed = new Map<string, Tensor>();
    for (const [k, v] of sd) prefixed.set((opts.prefix ?? '') + k, v);
    try {
      const bytes = await encodeTensors(prefixed, { format: 'pt', ...(opts.metadata ?? {}) });
      await writeFileAtomic(path, bytes);
    } finally {
      sd.forEach((t) => t.dispose());
    }
  }

  /** Loads a safetensors file written by save() or from a torchvision state dict. Entries are taken
   * under `prefix` (default: none; a projector also finds 'projector.*' names, and a backbone ignores
   * them). strict as loadStateDict. */
  async load(path: string, opts: { strict?: boolean; prefix?: string } = {}): Promise<void> {
    opts = checkOptions(opts, 'load');
    this.h();
    const { tensors } = await loadTensors(path, { device: this.device });
    try {
      let prefix = opts.prefix;
      if (prefix === undefined && this.kind === 'projector' && !tensors.has('0.weight') && tensors.has('projector.0.weight')) prefix = 'projector.';
      const picked = new Map<string, Tensor>();
      for (const [k, v] of tensors) {
        if (prefix) {
          if (k.startsWith(prefix)) picked.set(k.slice(prefix.length), v);
        } else if (!(this.kind === 'resnet' && k.startsWith('projector.'))) {
          picked.set(k, v);
        }
      }
      try {
        this.loadStateDict(picked, { strict: checkBoolean(opts.strict, true, 'load: strict') });
      } catch (e) {
        const err = e as MvebError;
        if (err && typeof err.code === 'string') throw new MvebError(err.code, `${path}: ${err.message}`);
        throw e;
      }
    } finally {
      tensors.forEach((t) => t.dispose());
    }
  }

  /** Frees the native arenas now. Safe to call twice. */
  dispose(): void {
    if (this.#handle !== null) {
      registry.unregister(this);
      native.modelDispose(this.#handle);
      this.#handle = null;
    }
  }
}
