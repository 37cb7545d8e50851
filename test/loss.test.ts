// loss.test.ts: the TypeScript API of the loss area (MVEBLoss, vmfScore): spec section 9 values
// through the addon, result shapes, gradient properties, groupSize, and error codes.
// Run: npx jest test/loss.test.ts   (MVEB_ADDON_PATH=... to use another addon build)
// The numerics are checked in depth by the native tests (test/native/test_vmf.cpp).
import * as fs from 'fs';
import * as path from 'path';
import { MvebError, Tensor } from '../lib';
import { MVEBLoss, vmfScore } from '../lib/loss';
import { expectReject, relError } from './helpers';

// Golden values of the official loss with PyTorch autograd in float64 (benchmarks/loss_fixture.py).
interface FixtureCase {
  name: string;
  N: number;
  D: number;
  V: number;
  groupSize: number;
  lambda: number;
  online: number[][];
  targets: number[][];
  loss: number;
  grads: number[][];
}
const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'loss_torch.json'), 'utf8')) as {
  cases: FixtureCase[];
};

const example1 = [1, 0, 0, 0, 1, 0, 0.6, 0.8, 0, 0, 0.6, 0.8];
const example1Score = [
  -2.573913163006, 1.358728884977, 0.129525186122, 2.529171754952, -3.28453430024, 1.309914099718, -4.059658329842,
  -2.802316204601, 0.248287443958, 0.38691772893, -0.722649518282, -4.001896273159,
];
const z2 = [0.8, 0.6, 0, 0, 0.8, 0.6, 0, 0, 1, 0.6, 0, 0.8];
const tb1 = [1, 0, 0, 0, 0.6, 0.8, 0.8, 0.6, 0, 0, 0, 1];
const tb2 = [0.8, 0, 0.6, 0, 1, 0, 0, 0.8, 0.6, 0, 0.6, 0.8];

const t = (data: number[], n: number, d: number) => Tensor.from(data, [n, d]);
const randn = (n: number, d: number, seed: number) => Tensor.randn([n, d], { seed });

describe('vmfScore', () => {
  test('spec example 1: score, width, condition', async () => {
    const z = t(example1, 4, 3);
    const r = await vmfScore(z);
    expect(r.score.shape).toEqual([4, 3]);
    expect(relError(r.score.dataSync(), example1Score)).toBeLessThan(1e-5);
    expect(r.width).toBeCloseTo(0.4, 6);
    expect(r.widthRaw).toBeCloseTo(0.4, 6);
    expect(r.condition).toBeGreaterThan(3);
    expect(r.condition).toBeLessThanOrEqual(6.11398 * 1.001);
    r.score.dispose();
    z.dispose();
  });

  test('clamped width and options', async () => {
    const z = t([0.995037, 0.0995037, 0, 0.995037, 0, 0.0995037, 0.995037, -0.0995037, 0, 0.995037, 0, -0.0995037], 4, 3);
    const r = await vmfScore(z, { eta: 0.01, minWidth: 0.1 });
    expect(r.width).toBeCloseTo(0.1, 7);
    expect(r.widthRaw).toBeLessThan(0.011);
    const s = r.score.dataSync();
    expect(s[0]).toBeCloseTo(-9.95037, 3);
    expect(s[1]).toBeCloseTo(-20.1161, 3);
    const wide = await vmfScore(z, { minWidth: 0.5 });
    expect(wide.width).toBeCloseTo(0.5, 7);
  });

  test('bad input: codes', async () => {
    await expectReject(vmfScore(t([1, 0, 0], 1, 3)), 'E_SHAPE', /at least 2 samples/);
    await expectReject(vmfScore(Tensor.from([1, 2, 3, 4], [4])), 'E_SHAPE');
    await expectReject(vmfScore(t([1, 0, NaN, 1], 2, 2)), 'E_NUMERIC', /non-finite/);
    await expectReject(vmfScore(t(example1, 4, 3), { eta: -1 }), 'E_ARG', /eta/);
    await expectReject(vmfScore(t(example1, 4, 3), { minWidth: 0 }), 'E_ARG', /minWidth/);
    await expectReject(vmfScore(Tensor.from(new Int32Array(6), [2, 3])), 'E_DTYPE');
    await expectReject(vmfScore({} as Tensor), 'E_ARG');
    const z = t(example1, 4, 3);
    z.dispose();
    await expectReject(vmfScore(z), 'E_DISPOSED');
  });
});

describe('MVEBLoss', () => {
  test('spec example 3: loss = -0.784131', async () => {
    const loss = new MVEBLoss({ lambda: 0.01 });
    const r = await loss.forward([t(example1, 4, 3), t(z2, 4, 3)], [t(tb1, 4, 3), t(tb2, 4, 3)]);
    expect(Math.abs(r.loss + 0.784131) / 0.784131).toBeLessThan(1e-5);
    expect(r.alignment).toBeCloseTo(0.75, 6);
    expect(Math.abs(r.entropy - 3.41309) / 3.41309).toBeLessThan(1e-5);
    expect(r.surrogates[0]).toBeCloseTo(3.5428005, 5);
    expect(r.groups).toBe(1);
    expect(r.widths).toHaveLength(2);
    expect(r.widths[0]).toBeCloseTo(0.4, 6);
    expect(r.conditions).toHaveLength(2);
    expect(r.conditions[0]).toBeGreaterThan(1);
    expect(r.grads.map((g) => g.shape)).toEqual([
      [4, 3],
      [4, 3],
    ]);
    // example 1's rows are unit vectors, so the surrogate's gradient part is the tangential part of
    // -lambda/V * (-s/N); the alignment part is -(I - z z^T) t2 / (V N)
    const g = r.grads[0].dataSync();
    const expected: number[] = [];
    for (let i = 0; i < 4; i++) {
      const zi = example1.slice(3 * i, 3 * i + 3);
      const gz = [0, 1, 2].map((d) => (-tb2[3 * i + d] + 0.01 * example1Score[3 * i + d]) / 8);
      const dot = gz.reduce((a, v, d) => a + v * zi[d], 0);
      for (let d = 0; d < 3; d++) expected.push(gz[d] - zi[d] * dot);
    }
    expect(relError(g, expected)).toBeLessThan(1e-5);
    r.grads.forEach((x) => x.dispose());
  });

  test.each(fixture.cases.map((c) => [c.name, c] as const))(
    'PyTorch autograd golden values (float64 official loss): %s',
    async (_name, c) => {
      const online = c.online.map((v) => t(v, c.N, c.D));
      const targets = c.targets.map((v) => t(v, c.N, c.D));
      const loss = new MVEBLoss({ lambda: c.lambda, groupSize: c.groupSize || undefined });
      const r = await loss.forward(online, targets);
      expect(Math.abs(r.loss - c.loss) / Math.abs(c.loss)).toBeLessThan(1e-5);
      expect(r.grads).toHaveLength(c.V);
      const ours = r.grads.flatMap((g) => Array.from(g.dataSync()));
      expect(relError(ours, c.grads.flat())).toBeLessThan(1e-5);
      [...online, ...targets, ...r.grads].forEach((x) => x.dispose());
    },
  );

  test('local views, raw inputs: gradients are tangential to the raw rows; groupSize', async () => {
    const N = 12;
    const D = 8;
    const online = [0, 1, 2, 3].map((i) => randn(N, D, 10 + i));
    const targets = [randn(N, D, 20), randn(N, D, 21)];
    const r = await new MVEBLoss().forward(online, targets);
    expect(r.grads).toHaveLength(4);
    expect(r.widths).toHaveLength(4);
    expect(Number.isFinite(r.loss)).toBe(true);
    for (let v = 0; v < 4; v++) {
      const g = r.grads[v].dataSync();
      const x = online[v].dataSync();
      for (let i = 0; i < N; i++) {
        let dot = 0;
        let gn = 0;
        let xn = 0;
        for (let d = 0; d < D; d++) {
          dot += g[i * D + d] * x[i * D + d];
          gn += g[i * D + d] ** 2;
          xn += x[i * D + d] ** 2;
        }
        expect(Math.abs(dot)).toBeLessThan(1e-5 * Math.sqrt(gn * xn) + 1e-12);
      }
    }
    const grouped = await new MVEBLoss({ groupSize: 4 }).forward(online, targets);
    expect(grouped.groups).toBe(3);
    expect(grouped.widths).toHaveLength(12);
    expect(grouped.conditions).toHaveLength(12);
    expect(grouped.alignment).toBeCloseTo(r.alignment, 6);
    expect(Math.abs(grouped.entropy - r.entropy)).toBeGreaterThan(1e-4);
  });

  test('bad input: codes and messages', async () => {
    const a = randn(4, 3, 1);
    const b = randn(4, 3, 2);
    const loss = new MVEBLoss();
    await expectReject(loss.forward([a], [a, b]), 'E_ARG', /at least 2 online views/);
    await expectReject(loss.forward([a, b], [a]), 'E_ARG', /exactly 2 target/);
    await expectReject(loss.forward([a, b], [a, b, a]), 'E_ARG', /exactly 2 target/);
    await expectReject(loss.forward([randn(1, 3, 3), randn(1, 3, 4)], [randn(1, 3, 5), randn(1, 3, 6)]), 'E_SHAPE', /at least 2 samples/);
    await expectReject(loss.forward([a, randn(4, 5, 3)], [a, b]), 'E_SHAPE', /expected shape \[4, 3\]/);
    await expectReject(loss.forward([a, b], [a, randn(5, 3, 3)]), 'E_SHAPE', /targets\[1\]/);
    await expectReject(loss.forward([a, Tensor.from(new Int32Array(12), [4, 3])], [a, b]), 'E_DTYPE');
    await expectReject(loss.forward([a, t([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, Infinity], 4, 3)], [a, b]), 'E_NUMERIC', /online\[1\]/);
    await expectReject(loss.forward([a, b], [a, t([NaN, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 4, 3)]), 'E_NUMERIC', /targets\[1\]/);
    await expectReject(new MVEBLoss({ groupSize: 3 }).forward([a, b], [a, b]), 'E_ARG', /groupSize/);
    await expectReject(loss.forward(a as unknown as Tensor[], [a, b]), 'E_ARG');
    expect(() => new MVEBLoss({ lambda: NaN })).toThrow(MvebError);
    expect(() => new MVEBLoss({ groupSize: 1 })).toThrow(/groupSize/);
    expect(() => new MVEBLoss({ eta: -0.1 })).toThrow(/eta/);
    const c = randn(4, 3, 9);
    c.dispose();
    await expectReject(loss.forward([a, c], [a, b]), 'E_DISPOSED');
  });
});
