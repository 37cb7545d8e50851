// eval.test.ts: the kNN classifier against a brute-force JavaScript reference on random features,
// the linear probe on separable synthetic data, accuracy bookkeeping, argument errors.
// Run: MVEB_ADDON_PATH=/tmp/addon-train/Release/mveb.node npx jest test/eval.test.ts
import { Tensor } from '../lib/tensor';
import { MvebError } from '../lib/errors';
import { knnScores, knnEvaluate, accuracyFromScores } from '../lib/eval/knn';
import { linearEvaluate } from '../lib/eval/linear';
import { subsetIndices } from '../lib/eval/subset';
import { expectReject } from './helpers';
import { evaluateCheckpoint, exportCheckpoint, loadBackbone } from '../lib/train/evaluate';

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s + 0.5) / 4294967296;
  };
}
function randn(r: () => number) {
  return Math.sqrt(-2 * Math.log(r())) * Math.cos(2 * Math.PI * r());
}

/** Brute force in float64: normalise, all similarities, sort (sim desc, index asc), top k, exp(sim/t) votes. */
function knnReference(bank: Float32Array, labels: Int32Array, q: Float32Array, d: number, k: number, t: number, classes: number): Float64Array {
  const n = labels.length, m = q.length / d;
  const norm = (x: Float32Array, i: number) => {
    let s = 0;
    for (let j = 0; j < d; j++) s += x[i * d + j] ** 2;
    return Math.max(Math.sqrt(s), 1e-12);
  };
  const out = new Float64Array(m * classes);
  for (let i = 0; i < m; i++) {
    const qi = norm(q, i);
    const sims: [number, number][] = [];
    for (let j = 0; j < n; j++) {
      const bj = norm(bank, j);
      let s = 0;
      for (let c = 0; c < d; c++) s += (q[i * d + c] / qi) * (bank[j * d + c] / bj);
      sims.push([s, j]);
    }
    sims.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    for (const [s, j] of sims.slice(0, Math.min(k, n))) out[i * classes + labels[j]] += Math.exp(s / t);
  }
  return out;
}

describe('eval: kNN', () => {
  test('scores match a brute-force reference on random odd-sized features', async () => {
    const r = rng(7);
    const n = 301, m = 53, d = 13, classes = 7;
    const bank = Float32Array.from({ length: n * d }, () => randn(r));
    const q = Float32Array.from({ length: m * d }, () => randn(r));
    const labels = Int32Array.from({ length: n }, () => Math.floor(r() * classes));
    for (const k of [1, 20, 200, 500]) {
      const B = Tensor.from(bank, [n, d]), Q = Tensor.from(q, [m, d]);
      const got = await knnScores(B, labels, Q, { k, temperature: 0.1, classes });
      const ref = knnReference(bank, labels, q, d, k, 0.1, classes);
      let num = 0, den = 0;
      for (let i = 0; i < ref.length; i++) {
        expect(Number.isFinite(got[i])).toBe(true);
        num += (got[i] - ref[i]) ** 2;
        den += ref[i] ** 2;
      }
      expect(Math.sqrt(num / den)).toBeLessThan(1e-5);
      B.dispose();
      Q.dispose();
    }
  });

  test('non-finite features are refused with E_NUMERIC (the error crosses the thread pool)', async () => {
    const n = 64, d = 4;
    const bank = Float32Array.from({ length: n * d }, (_, i) => Math.sin(i + 1));
    const q = Float32Array.from({ length: 9 * d }, (_, i) => Math.cos(i + 1));
    q[5 * d + 1] = NaN; // one bad query row, handled by some pool thread
    const B = Tensor.from(bank, [n, d]), Q = Tensor.from(q, [9, d]);
    const labels = Int32Array.from({ length: n }, (_, i) => i % 3);
    await expectReject(knnScores(B, labels, Q, { k: 5, temperature: 0.1, classes: 3 }), 'E_NUMERIC', /not finite/);
    B.dispose();
    Q.dispose();
  });

  test('classes are recovered on clustered data', async () => {
    const r = rng(3);
    const classes = 5, d = 8, per = 40;
    const centers = Array.from({ length: classes }, () => Array.from({ length: d }, () => randn(r) * 3));
    const make = (count: number) => {
      const x = new Float32Array(count * classes * d), y = new Int32Array(count * classes);
      for (let i = 0; i < count * classes; i++) {
        y[i] = i % classes;
        for (let j = 0; j < d; j++) x[i * d + j] = centers[y[i]][j] + 0.3 * randn(r);
      }
      return { x, y };
    };
    const tr = make(per), te = make(10);
    const B = Tensor.from(tr.x, [tr.y.length, d]), Q = Tensor.from(te.x, [te.y.length, d]);
    const res = await knnEvaluate(B, tr.y, Q, te.y, { k: 10, temperature: 0.1 });
    expect(res.top1).toBeGreaterThan(0.95);
    expect(res.top5).toBeUndefined(); // 5 classes: top-5 is trivially 1 and not reported
    expect(res.count).toBe(te.y.length);
    B.dispose();
    Q.dispose();
  });

  test('bad arguments give MvebError with a stable code', async () => {
    const B = Tensor.from(new Float32Array(12), [4, 3]);
    const Q = Tensor.from(new Float32Array(8), [2, 4]);
    await expect(knnScores(B, new Int32Array([0, 1, 0, 1]), Q, { classes: 2 })).rejects.toMatchObject({ code: 'E_SHAPE' });
    const Q3 = Tensor.from(new Float32Array(6).fill(1), [2, 3]);
    await expect(knnScores(B, new Int32Array([0, 1, 5, 1]), Q3, { classes: 2 })).rejects.toMatchObject({ code: 'E_ARG' });
    await expect(knnScores(B, new Int32Array([0, 1]), Q3, { classes: 2 })).rejects.toMatchObject({ code: 'E_SHAPE' });
    await expect(knnScores(B, new Int32Array([0, 1, 0, 1]), Q3, { classes: 2, k: 0 })).rejects.toBeInstanceOf(MvebError);
    // non-Tensors and non-Int32Array labels: E_ARG, not a TypeError from reading their fields
    await expect(knnEvaluate(B, null as never, Q3, new Int32Array(2))).rejects.toMatchObject({ code: 'E_ARG' });
    await expect(knnEvaluate(B, [0, 1, 0, 1] as never, Q3, new Int32Array(2))).rejects.toMatchObject({ code: 'E_ARG' });
    await expect(knnEvaluate({ shape: [4, 3] } as never, new Int32Array(4), Q3, new Int32Array(2))).rejects.toMatchObject({ code: 'E_ARG' });
    await expect(knnScores(3 as never, new Int32Array(4), Q3, { classes: 2 })).rejects.toMatchObject({ code: 'E_ARG' });
    await expect(knnScores(B, new Int32Array(4), [1, 2] as never, { classes: 2 })).rejects.toMatchObject({ code: 'E_ARG' });
    await expect(knnScores(B, new Int32Array(4), Q3, null as never)).rejects.toMatchObject({ code: 'E_ARG' });
    expect(() => accuracyFromScores([0, 1] as never, new Int32Array(1), 2)).toThrow(expect.objectContaining({ code: 'E_ARG' }));
    expect(() => accuracyFromScores(new Float32Array(2), new Int32Array(1), 0)).toThrow(expect.objectContaining({ code: 'E_ARG' }));
    [B, Q, Q3].forEach((t) => t.dispose());
  });

  test('accuracyFromScores: top-1, top-5 and ties to the lower class', () => {
    const classes = 7;
    const scores = new Float32Array(3 * classes);
    // row 0: best class 2; row 1: tie between 1 and 4 -> 1; row 2: true class ranks 6th
    scores.set([0, 1, 5, 2, 0, 0, 0], 0);
    scores.set([0, 3, 0, 0, 3, 0, 0], 7);
    scores.set([6, 5, 4, 3, 2, 1, 0], 14);
    const r = accuracyFromScores(scores, new Int32Array([2, 4, 5]), classes);
    expect(Array.from(r.predictions)).toEqual([2, 1, 0]);
    expect(r.top1).toBeCloseTo(1 / 3, 12);
    expect(r.top5).toBeCloseTo(2 / 3, 12);
  });
});

describe('eval: linear probe', () => {
  test('separable synthetic data reaches high accuracy; top-5 reported for 10 classes', async () => {
    const r = rng(11);
    const classes = 10, d = 24;
    const centers = Array.from({ length: classes }, () => Array.from({ length: d }, () => randn(r)));
    const make = (count: number) => {
      const x = new Float32Array(count * d), y = new Int32Array(count);
      for (let i = 0; i < count; i++) {
        y[i] = Math.floor(r() * classes);
        for (let j = 0; j < d; j++) x[i * d + j] = 2 * centers[y[i]][j] + 0.5 * randn(r) + 3; // offset: standardisation matters
      }
      return { x, y };
    };
    const tr = make(2000), te = make(500);
    const X = Tensor.from(tr.x, [2000, d]), T = Tensor.from(te.x, [500, d]);
    const res = await linearEvaluate(X, tr.y, T, te.y, { epochs: 15, batchSize: 64 });
    expect(res.top1).toBeGreaterThan(0.97);
    expect(res.top5).toBeGreaterThan(0.99);
    expect(res.losses.length).toBe(15);
    expect(res.losses[14]).toBeLessThan(res.losses[0]);
    // LARC variant also learns
    const lars = await linearEvaluate(X, tr.y, T, te.y, { epochs: 15, batchSize: 64, lars: true, baseLr: 10 });
    expect(lars.top1).toBeGreaterThan(0.9);
    // same seed, same result
    const again = await linearEvaluate(X, tr.y, T, te.y, { epochs: 15, batchSize: 64 });
    expect(again.losses).toEqual(res.losses);
    X.dispose();
    T.dispose();
  });

  test('label / shape errors', async () => {
    const X = Tensor.from(new Float32Array(8), [4, 2]), T = Tensor.from(new Float32Array(6), [2, 3]);
    await expect(linearEvaluate(X, new Int32Array(4), T, new Int32Array(2))).rejects.toMatchObject({ code: 'E_SHAPE' });
    await expect(linearEvaluate(X, new Int32Array(3), X, new Int32Array(4))).rejects.toMatchObject({ code: 'E_SHAPE' });
    await expect(linearEvaluate(X, undefined as never, T, new Int32Array(2))).rejects.toMatchObject({ code: 'E_ARG' });
    await expect(linearEvaluate(X, new Int32Array(4), 'T' as never, new Int32Array(2))).rejects.toMatchObject({ code: 'E_ARG' });
    X.dispose();
    T.dispose();
  });
});

describe('eval: subsets', () => {
  test('subsetIndices is seeded, sorted and distinct; 0 means all', () => {
    const a = subsetIndices(1000, 100, 5), b = subsetIndices(1000, 100, 5), c = subsetIndices(1000, 100, 6);
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(Array.from(a)).not.toEqual(Array.from(c));
    expect(new Set(a).size).toBe(100);
    for (let i = 1; i < a.length; i++) expect(a[i]).toBeGreaterThan(a[i - 1]);
    expect(subsetIndices(10, 0, 1).length).toBe(10);
    expect(subsetIndices(10, 20, 1).length).toBe(10);
  });
});

describe('eval: checkpoint entry points refuse bad arguments before reading anything', () => {
  // (a mode other than 'knn' ran the linear probe; no options, null or a numeric path were TypeErrors)
  test('evaluateCheckpoint, exportCheckpoint, loadBackbone', async () => {
    const missing = '/nonexistent/run';
    const cases: [() => Promise<unknown>, RegExp][] = [
      [() => evaluateCheckpoint(missing, undefined as never), /mode must be 'knn' or 'linear', found undefined/],
      [() => evaluateCheckpoint(missing, null as never), /options must be an object/],
      [() => evaluateCheckpoint(missing, { mode: 'svm' as never }), /mode must be 'knn' or 'linear', found svm/],
      [() => evaluateCheckpoint(missing, { mode: 'knn', trainImages: -1 }), /trainImages must be an integer >= 0/],
      [() => evaluateCheckpoint(missing, { mode: 'knn', data: 5 as never }), /data must be a path/],
      [() => evaluateCheckpoint(5 as never, { mode: 'knn' }), /checkpoint path must be a non-empty string/],
      [() => exportCheckpoint(missing, 5 as never), /out must be a non-empty path/],
      [() => exportCheckpoint(missing, 'x.safetensors', { projector: 'yes' as never }), /projector must be a boolean/],
      [() => loadBackbone(missing, null as never), /options must be an object/],
    ];
    for (const [call, message] of cases) await expectReject(call, 'E_ARG', message);
    await expectReject(evaluateCheckpoint(missing, { mode: 'knn' }), 'E_CHECKPOINT', /does not exist/);
  });
});
