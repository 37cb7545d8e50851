// train.test.ts: the MVEB training loop end to end on a tiny network (ResNet-18 CIFAR stem at width
// x0.0625 on 28x28 Fashion-MNIST subsets, batch 32): loss decreases and alignment increases,
// checkpoint + resume reproduce an uninterrupted run's losses step for step, a corrupted or
// truncated checkpoint is refused with E_CHECKPOINT, schedules match the spec's numbers, the report
// contains the curves. Run: MVEB_ADDON_PATH=/tmp/addon-train/Release/mveb.node npx jest test/train.test.ts
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { learningRateAt, momentumAt, maxLearningRate } from '../lib/train/schedule';
import { renderReport, lineChart } from '../lib/train/report';
import { pretrain, PretrainOptions, trainingViews } from '../lib/train/pretrain';
// trainStep and its scratch through the package's public surface
import { trainStep, makeStepScratch, disposeStepScratch, Net } from '../lib';
import { Model } from '../lib/model';
import { Tensor } from '../lib/tensor';
import { MVEBLoss } from '../lib/loss';
import { loadCheckpoint, checksumTensors } from '../lib/train/checkpoint';
import { loadTensors, saveTensors } from '../lib/safetensors';
import { builtinFashionMnist, fromTypedArray } from '../lib/data';
import type { Dataset } from '../lib/data';

/**
 * Runs pretrain() in a child Node process with MVEB_NUM_THREADS pinned (the addon reads it when it
 * loads; jest's sandboxed process.env cannot reach it) and returns the per-step losses and summary.
 * The child compiles lib/*.ts on the fly with the TypeScript transpiler.
 */
function pretrainInChild(opts: Record<string, unknown>, threads: number): { losses: number[]; summary: { steps: number; checkpoint: string; metrics: string } } {
  const script = `
    const fs = require('fs'), ts = require('typescript');
    require.extensions['.ts'] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, 'utf8'),
      { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true } }).outputText, f);
    const { pretrain } = require('./lib/train/pretrain');
    const { builtinFashionMnist } = require('./lib/data');
    const { backends } = require('./lib/doctor');
    const o = JSON.parse(process.argv[1]);
    const first = (ds, n) => ds.subset(Int32Array.from({ length: n }, (_, i) => i));
    const losses = [];
    pretrain({ ...o, data: first(builtinFashionMnist('train'), o.trainCount), testData: first(builtinFashionMnist('test'), 200),
               onProgress: (e) => e.type === 'step' && losses.push(e.loss) })
      .then((summary) => process.stdout.write(JSON.stringify({ losses, summary, threads: backends().cpu.threads })))
      .catch((e) => { process.stderr.write(String(e.stack || e)); process.exit(1); });`;
  const r = spawnSync(process.execPath, ['-e', script, JSON.stringify(opts)], {
    cwd: path.resolve(__dirname, '..'),
    env: { ...process.env, MVEB_NUM_THREADS: String(threads) },
    encoding: 'utf8',
    maxBuffer: 1 << 24,
  });
  if (r.status !== 0) throw new Error(`child pretrain failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout);
  expect(out.threads).toBe(threads);
  return out;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mveb-train-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('train: one MVEB step', () => {
  const net = (seed: number): Net => ({
    backbone: Model.resnet({ depth: 18, stem: 'cifar', inChannels: 1, widthMultiplier: 0.0625, seed }),
    projector: Model.projector({ inDim: 32, hiddenDim: 48, outDim: 40, seed: seed + 1 }),
  });
  const values = (m: Map<string, Tensor>): [string, number[]][] =>
    [...m].map(([k, t]) => {
      const v = Array.from(t.dataSync() as Float32Array);
      t.dispose();
      return [k, v];
    });
  const relError = (a: number[], b: number[]) => {
    let d = 0, n = 0;
    for (let i = 0; i < a.length; i++) d += (a[i] - b[i]) ** 2, n += b[i] ** 2;
    return Math.sqrt(d / Math.max(n, 1e-30));
  };

  test.each([2, 3])('%i views: kept in copies of the online networks (one after the other or side by side) or recomputed, the same step', async (V) => {
    // two global views and (V = 3) one smaller local crop
    const views = [Tensor.randn([12, 1, 16, 16], { seed: 1 }), Tensor.randn([12, 1, 16, 16], { seed: 2 }), Tensor.randn([12, 1, 10, 10], { seed: 3 })].slice(0, V);
    const loss = new MVEBLoss({ lambda: 0.01 });
    const run = async (budget: number, sideBySide: boolean) => {
      const online = net(5), target = net(5);
      const scratch = makeStepScratch(online, target, budget, sideBySide);
      const state = () => ({
        grads: [...values(online.backbone.gradients()), ...values(online.projector.gradients())],
        buffers: [...values(online.backbone.buffers()), ...values(online.projector.buffers())],
        target: [...values(target.backbone.parameters()), ...values(target.backbone.buffers())],
      });
      // two steps with an optimiser step between: the copies must follow the online parameters
      const r1 = await trainStep(online, target, loss, views, 0.99, scratch);
      const s1 = state();
      for (const m of [online.backbone, online.projector]) await m.optimizerStep({ kind: 'sgd', lr: 0.05, momentum: 0.9 });
      const r2 = await trainStep(online, target, loss, views, 0.99, scratch);
      const out = { r1, s1, r2, s2: state(), kept: scratch.viewNets !== null, targetView: scratch.targetView !== null };
      disposeStepScratch(scratch);
      for (const m of [online.backbone, online.projector, target.backbone, target.projector]) m.dispose();
      return out;
    };
    const recomputed = await run(0, true), kept = await run(1 << 30, false), side = await run(1 << 30, true);
    expect(recomputed.kept).toBe(false);
    expect(kept.kept).toBe(true);
    expect([recomputed.targetView, kept.targetView, side.kept, side.targetView]).toEqual([false, false, true, true]);
    const close = (a: [string, number[]][], b: [string, number[]][], tol: number) =>
      a.forEach(([name, v], i) => expect({ name, close: relError(v, b[i][1]) <= tol }).toEqual({ name, close: true }));
    // step 1: the same forwards (loss, BN running statistics counting every view once, in order, the
    // target's EMA); the gradients summed in another order
    expect(kept.r1.loss).toBe(recomputed.r1.loss);
    expect(kept.r1.widths).toEqual(recomputed.r1.widths);
    expect(kept.s1.buffers).toEqual(recomputed.s1.buffers);
    expect(kept.s1.target).toEqual(recomputed.s1.target);
    close(kept.s1.grads, recomputed.s1.grads, 1e-5);
    // step 2, after the optimiser: equal up to that rounding
    expect(Math.abs(kept.r2.loss - recomputed.r2.loss)).toBeLessThan(1e-6 * Math.abs(recomputed.r2.loss));
    close(kept.s2.grads, recomputed.s2.grads, 1e-4);
    close(kept.s2.buffers, recomputed.s2.buffers, 1e-6);
    close(kept.s2.target, recomputed.s2.target, 1e-6);
    // side by side (each view's passes on one thread when there are two; the running statistics
    // merged as the sequential order leaves them): the same step up to the float sums' rounding. A
    // merge that counted a view twice, dropped one or weighted them in the other order, or a copy
    // that missed the online parameters, is far outside these bounds.
    expect(Math.abs(side.r1.loss - recomputed.r1.loss)).toBeLessThan(1e-5 * Math.abs(recomputed.r1.loss));
    close(side.s1.buffers, recomputed.s1.buffers, 1e-6);
    close(side.s1.target, recomputed.s1.target, 1e-6);
    close(side.s1.grads, recomputed.s1.grads, 1e-4);
    expect(Math.abs(side.r2.loss - recomputed.r2.loss)).toBeLessThan(1e-5 * Math.abs(recomputed.r2.loss));
    close(side.s2.grads, recomputed.s2.grads, 1e-4);
    close(side.s2.buffers, recomputed.s2.buffers, 1e-6);
    close(side.s2.target, recomputed.s2.target, 1e-6);
  });

  test('viewActivationBudget is validated', async () => {
    await expect(pretrain({ viewActivationBudget: -1 })).rejects.toMatchObject({ code: 'E_ARG' });
  });
});

describe('train: schedules (mveb-spec.md section 4 numbers)', () => {
  const o = { baseLr: 0.3, batchSize: 4096, warmupSteps: 3120, totalSteps: 249600 };
  test('learning rate: warm-up from min_lr, cosine with the T denominator', () => {
    expect(maxLearningRate(o)).toBeCloseTo(4.8, 12);
    expect(learningRateAt(0, o)).toBeCloseTo(0.0048, 12);
    expect(learningRateAt(3120, o)).toBeCloseTo(4.8, 10);
    expect(learningRateAt(1560, o)).toBeCloseTo(0.0048 + (4.8 - 0.0048) / 2, 10);
    expect(learningRateAt(249600 / 2, o)).toBeCloseTo(2.4965, 3);
    expect(learningRateAt(249599, o)).toBeCloseTo(0.0066497, 6);
  });
  test('EMA momentum: 0.996 -> 0.998 at T/2 -> 1 at T', () => {
    expect(momentumAt(0, 1000)).toBeCloseTo(0.996, 12);
    expect(momentumAt(500, 1000)).toBeCloseTo(0.998, 12);
    expect(momentumAt(1000, 1000)).toBeCloseTo(1, 12);
  });
});

describe('train: report', () => {
  test('charts contain one point per record and survive non-finite values', () => {
    const svg = lineChart('t', { name: 't', x: [0, 1, 2, 3], y: [1, NaN, 3, 2] });
    expect(svg.startsWith('<svg')).toBe(true);
    expect((svg.match(/<circle/g) ?? []).length).toBe(3);
    const html = renderReport({
      title: 'x < y',
      steps: [0, 1, 2].map((s) => ({ step: s, epoch: 0, loss: -s, alignment: s / 3, entropy: 1, tau: 0.5, lr: 0.1, momentum: 0.996, imagesPerSecond: 10 })),
      epochs: [{ epoch: 0, step: 3, knnTop1: 0.5, seconds: 1 }],
      summary: { knnTop1: 0.5 },
      config: { depth: 18 },
    });
    expect(html).toContain('x &lt; y');
    for (const t of ['loss', 'alignment', 'entropy surrogate', 'kernel width tau', 'learning rate', 'kNN top-1']) expect(html).toContain(t);
    expect((html.match(/<svg/g) ?? []).length).toBe(8);
    // no kNN at all (unlabelled data): no empty kNN chart, and a null summary value reads n/a
    const none = renderReport({
      title: 't',
      steps: [0, 1].map((s) => ({ step: s, epoch: 0, loss: -s, alignment: 0.5, entropy: 1, tau: 0.5, lr: 0.1, momentum: 0.996, imagesPerSecond: 10 })),
      epochs: [{ epoch: 0, step: 2, seconds: 1 }],
      summary: { knnTop1: null },
      config: {},
    });
    expect((none.match(/<svg/g) ?? []).length).toBe(7);
    expect(none).not.toContain('kNN top-1 (monitor subset)');
    expect(none).toContain('<td>n/a</td>');
  });
});

describe('train: pretrain end to end (tiny network)', () => {
  let train: Dataset, testSet: Dataset;
  beforeAll(async () => {
    const all = await builtinFashionMnist('train');
    train = all.subset(Int32Array.from({ length: 256 }, (_, i) => i));
    const t = await builtinFashionMnist('test');
    testSet = t.subset(Int32Array.from({ length: 200 }, (_, i) => i));
  });
  const base = (out: string): PretrainOptions => ({
    data: train,
    testData: testSet,
    width: 0.0625,
    projectorDim: 64,
    batchSize: 32,
    epochs: 3,
    trainImages: 0,
    optimizer: 'sgd',
    lr: 0.5,
    weightDecay: 1e-5,
    warmupEpochs: 0,
    knnEvery: 0,
    finalKnn: false,
    progress: 'none',
    device: 'cpu',
    seed: 1,
    out: path.join(tmp, out),
  });

  test('loss decreases and alignment increases; metrics, report and checkpoint are written', async () => {
    const steps: { loss: number; alignment: number; step: number }[] = [];
    const summary = await pretrain({ ...base('a'), onProgress: (e) => e.type === 'step' && steps.push(e) });
    expect(summary.steps).toBe(24);
    expect(steps.map((s) => s.step)).toEqual(Array.from({ length: 24 }, (_, i) => i));
    const mean = (a: number[]) => a.reduce((x, y) => x + y, 0) / a.length;
    const first = steps.slice(0, 4), last = steps.slice(-4);
    expect(mean(last.map((s) => s.loss))).toBeLessThan(mean(first.map((s) => s.loss)));
    expect(mean(last.map((s) => s.alignment))).toBeGreaterThan(mean(first.map((s) => s.alignment)));
    for (const s of steps) expect(Number.isFinite(s.loss)).toBe(true);
    const lines = fs.readFileSync(summary.metrics, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.filter((l) => l.type === 'step').length).toBe(24);
    expect(lines.filter((l) => l.type === 'epoch').length).toBe(3);
    expect(fs.readFileSync(summary.report, 'utf8')).toContain('<svg');
    const ck = await loadCheckpoint(summary.checkpoint);
    expect(ck.state.step).toBe(24);
    expect([...ck.tensors.keys()].some((k) => k === 'online.backbone.conv1.weight')).toBe(true);
    expect([...ck.tensors.keys()].some((k) => k.startsWith('target.projector.'))).toBe(true);
    expect([...ck.tensors.keys()].some((k) => k.startsWith('optim.backbone.'))).toBe(true);
    ck.tensors.forEach((t) => t.dispose());
  });

  test('resume reproduces the uninterrupted run step for step (mid-epoch and epoch boundary)', async () => {
    const o = (out: string) => {
      const { data, testData, ...rest } = base(out);
      void data, void testData;
      return { ...rest, trainCount: 128, epochs: 2 };
    };
    const full = pretrainInChild(o('full'), 2);
    expect(full.losses.length).toBe(8);
    const part1 = pretrainInChild({ ...o('part'), maxSteps: 3 }, 2);
    expect(part1.summary.steps).toBe(3);
    expect(part1.losses).toEqual(full.losses.slice(0, 3));
    const part2 = pretrainInChild({ ...o('part'), maxSteps: 4, resume: true }, 2); // stops at the epoch boundary
    expect(part2.losses).toEqual(full.losses.slice(3, 4));
    const part3 = pretrainInChild({ ...o('part'), resume: true }, 2);
    expect(part3.losses).toEqual(full.losses.slice(4));
    const a = await loadCheckpoint(full.summary.checkpoint), b = await loadCheckpoint(part3.summary.checkpoint);
    expect(checksumTensors(b.tensors)).toBe(checksumTensors(a.tensors));
    a.tensors.forEach((t) => t.dispose());
    b.tensors.forEach((t) => t.dispose());
    // the resumed run's metrics file has each step once
    const lines = fs.readFileSync(part3.summary.metrics, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.filter((l) => l.type === 'step').map((l) => l.step)).toEqual(Array.from({ length: 8 }, (_, i) => i));
  });

  test('a corrupted or truncated checkpoint is refused with E_CHECKPOINT', async () => {
    const src = path.join(tmp, 'a', 'checkpoint.safetensors');
    const bytes = fs.readFileSync(src);
    const flipped = Buffer.from(bytes);
    flipped[flipped.length - 100] ^= 0x40;
    const p1 = path.join(tmp, 'flipped.safetensors');
    fs.writeFileSync(p1, flipped);
    await expect(loadCheckpoint(p1)).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringContaining('corrupted') });
    const p2 = path.join(tmp, 'truncated.safetensors');
    fs.writeFileSync(p2, bytes.subarray(0, Math.floor(bytes.length / 2)));
    await expect(loadCheckpoint(p2)).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringContaining(p2) });
    await expect(loadCheckpoint(path.join(tmp, 'missing.safetensors'))).rejects.toMatchObject({ code: 'E_CHECKPOINT' });
    await expect(pretrain({ ...base('b'), resume: p1 })).rejects.toMatchObject({ code: 'E_CHECKPOINT' });
  });

  test('a checkpoint whose training state or configuration is malformed, or of other data, is refused with E_CHECKPOINT', async () => {
    // (valid tensors and checksum; these states had failed later with TypeErrors, or resumed at a nonsense step)
    const src = path.join(tmp, 'a', 'checkpoint.safetensors');
    const { tensors, metadata } = await loadTensors(src);
    const state = JSON.parse(metadata.state);
    const cases: [string, unknown, RegExp][] = [
      ['null', null, /invalid training state: expected an object/],
      ['negative step', { ...state, step: -5 }, /step must be a non-negative integer/],
      ['history', { ...state, knnHistory: 5 }, /knnHistory must be an array/],
      ['config', { ...state, config: { ...state.config, lr: 'fast' } }, /invalid configuration: lr must be a positive number/],
      ['step', { ...state, step: state.step + 1 }, /does not match this data's 8 steps per epoch/],
    ];
    for (const [name, st, message] of cases) {
      const dir = path.join(tmp, `bad-state-${name.replace(/ /g, '-')}`);
      fs.mkdirSync(dir);
      await saveTensors(path.join(dir, 'checkpoint.safetensors'), tensors, { ...metadata, state: JSON.stringify(st) });
      await expect(pretrain({ ...base('x'), out: dir, resume: true })).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringMatching(message) });
    }
    tensors.forEach((t) => t.dispose());
    // resuming with other data (fewer images: other steps per epoch)
    const fewer = train.subset(Int32Array.from({ length: 160 }, (_, i) => i));
    await expect(pretrain({ ...base('a2'), data: fewer, resume: src })).rejects.toMatchObject({ code: 'E_CHECKPOINT', message: expect.stringContaining('resume with the data it was trained on') });
  });

  test('a non-finite loss stops the run with E_NUMERIC and a checkpoint of the state before that step', async () => {
    const o = { ...base('nan'), lr: 1e24, weightDecay: 0 };
    await expect(pretrain(o)).rejects.toMatchObject({ code: 'E_NUMERIC', message: expect.stringMatching(/training stopped: the loss became non-finite at step \d+/) });
    const ck = await loadCheckpoint(path.join(o.out!, 'checkpoint.safetensors'));
    expect(ck.state.reason).toBe('non-finite-loss');
    expect(ck.state.step).toBeGreaterThanOrEqual(1);
    for (const t of ck.tensors.values()) {
      const d = t.dataSync();
      for (let i = 0; i < d.length; i++) if (!Number.isFinite(d[i])) throw new Error('non-finite value in the saved state');
      t.dispose();
    }
  });

  test('unlabelled data pretrains: the kNN evaluation is skipped with a message (it refused the run before)', async () => {
    const unlabelled = fromTypedArray(train.images, { shape: [train.size, train.height, train.width, train.channels] });
    expect(unlabelled.labels).toBeUndefined();
    const messages: string[] = [];
    const summary = await pretrain({
      ...base('unlabelled'), data: unlabelled, testData: undefined, epochs: 1, knnEvery: 1, finalKnn: true,
      onProgress: (e) => e.type === 'message' && messages.push(e.message),
    });
    expect(summary.steps).toBe(8);
    expect(summary.knnTop1).toBeNull();
    expect(messages.filter((m) => m.startsWith('kNN evaluation skipped: no labels in'))).toHaveLength(1);
    // labelled training images with an unlabelled test set: skipped too
    const s2 = await pretrain({ ...base('unlabelled-test'), testData: unlabelled, epochs: 1, finalKnn: true });
    expect(s2.knnTop1).toBeNull();
  });

  test('options are validated with clear messages', async () => {
    await expect(pretrain({ ...base('c'), width: -1 })).rejects.toMatchObject({ code: 'E_ARG', message: expect.stringContaining('width') });
    await expect(pretrain({ ...base('c'), optimizer: 'adam' as never })).rejects.toMatchObject({ code: 'E_ARG' });
    await expect(pretrain({ ...base('c'), localCrops: 65 })).rejects.toMatchObject({ code: 'E_ARG', message: expect.stringContaining('localCrops') });
    // a folder with a checkpoint is not started over without overwrite (running the same command twice
    // overwrote a finished run's checkpoint)
    const once = { ...base('ow'), epochs: 1, maxSteps: 2 };
    await pretrain(once);
    const first = fs.readFileSync(path.join(tmp, 'ow', 'checkpoint.safetensors'));
    await expect(pretrain(once)).rejects.toMatchObject({ code: 'E_ARG', message: expect.stringContaining('already holds a training checkpoint') });
    expect(fs.readFileSync(path.join(tmp, 'ow', 'checkpoint.safetensors')).equals(first)).toBe(true);
    expect((await pretrain({ ...once, overwrite: true })).steps).toBe(2);
    await expect(pretrain({ ...base('c'), overwrite: 'yes' as never })).rejects.toMatchObject({ code: 'E_ARG', message: expect.stringContaining('overwrite') });
    await expect(pretrain({ ...base('c'), batchSize: 1000 })).rejects.toMatchObject({ code: 'E_ARG', message: expect.stringContaining('batchSize') });
    await expect(pretrain({ ...base('c'), globalScale: [0.9, 0.5] })).rejects.toMatchObject({ code: 'E_ARG', message: expect.stringContaining('globalScale') });
    await expect(pretrain({ ...base('c'), localScale: [0, 0.4] })).rejects.toMatchObject({ code: 'E_ARG', message: expect.stringContaining('localScale') });
    await expect(pretrain({ ...base('c'), sideBySide: 'yes' as never })).rejects.toMatchObject({ code: 'E_ARG', message: expect.stringContaining('sideBySide') });
    // (these reached the data loader or path.resolve as they were: TypeErrors, or 5 taken as resume: true)
    for (const [k, v] of [['data', 5], ['data', {}], ['data', null], ['testData', 7], ['out', 5], ['resume', 5], ['resume', ''], ['finalKnn', 'no']] as const)
      await expect(pretrain({ ...base('c'), [k]: v } as never)).rejects.toMatchObject({ code: 'E_ARG', message: expect.stringContaining(k) });
  });

  test('trainingViews: crop scales go to the global and local views; blur sigma scales with the crop size', () => {
    const v = trainingViews({ cropSize: 28, localCropSize: 12, localCrops: 2, globalScale: [0.6, 1], localScale: [0.1, 0.3] });
    expect(v.map((x) => x.size)).toEqual([28, 28, 12, 12]);
    expect(v.map((x) => x.scale)).toEqual([[0.6, 1], [0.6, 1], [0.1, 0.3], [0.1, 0.3]]);
    expect(v[0].blurSigma![1]).toBeCloseTo((2.0 * 28) / 224, 6);
    const d = trainingViews({ cropSize: 224, localCropSize: 96, localCrops: 1 });
    expect(d.map((x) => x.scale)).toEqual([[0.4, 1], [0.4, 1], [0.05, 0.4]]);
    expect(d[0].blurSigma).toEqual([0.1, 2.0]);
  });
});
