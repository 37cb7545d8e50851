// loss.ts: MVEBLoss (mveb-spec.md section 1.3) and vmfScore, the vMF Stein score estimator (section 2.3).
// Validation and friendly errors here; the computation is native (native/core/mveb_loss.cpp, the
// backend's vmf_score) and runs off the JS thread. Tested by test/loss.test.ts; benchmark:
// `npm run bench:loss`.
import { check, checkOptions } from './errors';
import { native, TensorHandle } from './native';
import { Tensor } from './tensor';

export interface MVEBLossOptions {
  /** Weight of the entropy term (default 0.01, the official config). */
  lambda?: number;
  /** Ridge regulariser of the score estimator, K + eta I (default 0.01). */
  eta?: number;
  /** Lower clamp of the kernel width tau (default 0.1). */
  minWidth?: number;
  /** Rows per estimator call (the official code estimated per GPU on 128 samples); default: the whole batch. Must divide N. */
  groupSize?: number;
}

export interface MVEBLossResult {
  /** -alignment - lambda * entropy (the value that is minimised). */
  loss: number;
  /** A / V: mean cosine similarity of each online view to its target (global views crosswise, local views to the mean target). */
  alignment: number;
  /** Sum of the per-view entropy surrogates / V (only its gradient is meaningful). */
  entropy: number;
  /** The surrogate -mean_i(s_i . z_i) per online view. */
  surrogates: number[];
  /** Estimator calls per view (N / groupSize). */
  groups: number;
  /** Kernel width tau per view and group (index v * groups + g), after clamping at minWidth. */
  widths: number[];
  /** The same before clamping. */
  widthsRaw: number[];
  /** Estimate of cond(K + eta I) per view and group: a blown-up value (>1e6) warns of collapse. */
  conditions: number[];
  /** dLoss / d online[v], same shape and device as the inputs. Dispose them when done. */
  grads: Tensor[];
}

export interface VmfScoreOptions {
  eta?: number;
  minWidth?: number;
}

export interface VmfScoreResult {
  /** The score estimate -(K + eta I)^-1 (z / tau) rowsum(K), [N, D]. */
  score: Tensor;
  /** tau after clamping at minWidth. */
  width: number;
  /** tau before clamping. */
  widthRaw: number;
  /** Estimate of cond(K + eta I). */
  condition: number;
}

function checkNumber(name: string, v: unknown, fallback: number, ok: (x: number) => boolean, rule: string): number {
  if (v === undefined) return fallback;
  check(typeof v === 'number' && Number.isFinite(v) && ok(v), 'E_ARG', () => `option '${name}' must be ${rule}, found ${String(v)}`);
  return v as number;
}

function checkEmbedding(t: unknown, what: string): Tensor {
  check(t instanceof Tensor, 'E_ARG', () => `${what}: expected a Tensor, found ${t === null ? 'null' : typeof t}`);
  t._handle(); // E_DISPOSED after dispose()
  check(t.dtype === 'float32', 'E_DTYPE', () => `${what}: expected dtype float32, found ${t.dtype}`);
  check(t.shape.length === 2, 'E_SHAPE', () => `${what}: expected a [N, D] tensor, found shape [${t.shape.join(', ')}]`);
  check(t.shape[0] >= 2, 'E_SHAPE', () => `${what}: needs at least 2 samples (N >= 2), found shape [${t.shape.join(', ')}]`);
  check(t.shape[1] >= 1, 'E_SHAPE', () => `${what}: needs D >= 1, found shape [${t.shape.join(', ')}]`);
  return t;
}

/** The vMF Stein score estimate of unit-norm rows z [N, D] (N >= 2). */
export async function vmfScore(z: Tensor, opts: VmfScoreOptions = {}): Promise<VmfScoreResult> {
  opts = checkOptions(opts, 'vmfScore');
  checkEmbedding(z, 'vmfScore: z');
  const eta = checkNumber('eta', opts.eta, 0.01, (x) => x >= 0, 'a finite number >= 0');
  const minWidth = checkNumber('minWidth', opts.minWidth, 0.1, (x) => x > 0, 'a finite number > 0');
  const r = (await native.vmfScore(z._handle(), { eta, minWidth })) as {
    score: TensorHandle;
    width: number;
    widthRaw: number;
    condition: number;
  };
  return { score: Tensor._wrap(r.score), width: r.width, widthRaw: r.widthRaw, condition: r.condition };
}

/** The MVEB loss over V >= 2 online views and the 2 target views, with exact gradients for the online views. */
export class MVEBLoss {
  readonly lambda: number;
  readonly eta: number;
  readonly minWidth: number;
  readonly groupSize: number | undefined;

  constructor(opts: MVEBLossOptions = {}) {
    opts = checkOptions(opts, 'MVEBLoss');
    this.lambda = checkNumber('lambda', opts.lambda, 0.01, () => true, 'a finite number');
    this.eta = checkNumber('eta', opts.eta, 0.01, (x) => x >= 0, 'a finite number >= 0');
    this.minWidth = checkNumber('minWidth', opts.minWidth, 0.1, (x) => x > 0, 'a finite number > 0');
    if (opts.groupSize !== undefined) {
      check(
        Number.isInteger(opts.groupSize) && (opts.groupSize as number) >= 2,
        'E_ARG',
        () => `option 'groupSize' must be an integer >= 2, found ${String(opts.groupSize)}`,
      );
    }
    this.groupSize = opts.groupSize;
  }

  /**
   * online: V >= 2 raw projector outputs [N, D] (views 0 and 1 global, the rest local crops);
   * targets: the 2 raw target-branch outputs [N, D]. All on one device, same shape, finite.
   */
  async forward(online: Tensor[], targets: Tensor[]): Promise<MVEBLossResult> {
    check(Array.isArray(online), 'E_ARG', 'MVEBLoss.forward: online must be an array of Tensors');
    check(Array.isArray(targets), 'E_ARG', 'MVEBLoss.forward: targets must be an array of Tensors');
    check(online.length >= 2, 'E_ARG', () => `MVEBLoss.forward: needs at least 2 online views, found ${online.length}`);
    check(targets.length === 2, 'E_ARG', () => `MVEBLoss.forward: needs exactly 2 target views, found ${targets.length}`);
    const first = checkEmbedding(online[0], 'MVEBLoss.forward: online[0]');
    const all = [...online.map((t, i) => [t, `online[${i}]`] as const), ...targets.map((t, i) => [t, `targets[${i}]`] as const)];
    for (const [t, name] of all) {
      const what = `MVEBLoss.forward: ${name}`;
      checkEmbedding(t, what);
      check(
        t.shape[0] === first.shape[0] && t.shape[1] === first.shape[1],
        'E_SHAPE',
        () => `${what}: expected shape [${first.shape.join(', ')}] (as online[0]), found [${t.shape.join(', ')}]`,
      );
      check(t.device === first.device, 'E_DEVICE', () => `${what}: expected device '${first.device}' (as online[0]), found '${t.device}'`);
    }
    const N = first.shape[0];
    if (this.groupSize !== undefined) {
      check(N % this.groupSize === 0, 'E_ARG', () => `MVEBLoss: groupSize ${this.groupSize} must divide the batch size ${N}`);
    }
    const r = (await native.mvebLossForward(
      online.map((t) => t._handle()),
      targets.map((t) => t._handle()),
      { lambda: this.lambda, eta: this.eta, minWidth: this.minWidth, groupSize: this.groupSize ?? 0 },
    )) as Omit<MVEBLossResult, 'grads'> & { grads: TensorHandle[] };
    return { ...r, grads: r.grads.map((h) => Tensor._wrap(h)) };
  }

  /** The loss holds no native resources; present so callers can treat it like other disposables. */
  dispose(): void {}

  /** vmfScore with this loss's eta and minWidth. */
  vmfScore(z: Tensor): Promise<VmfScoreResult> {
    return vmfScore(z, { eta: this.eta, minWidth: this.minWidth });
  }
}
