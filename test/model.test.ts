// model.test.ts: the Model API (lib/model.ts) and safetensors I/O (lib/safetensors.ts, lib/files.ts)
// through the addon: the PyTorch fixture through JS (features, input gradient, a parameter gradient
// within 1e-4), save/load round trip, strict-load errors, hostile files, clone/EMA/optimizer steps
// against their formulas, argument validation codes, dispose.
// Run: MVEB_ADDON_PATH=/tmp/addon-model/Release/mveb.node npx jest test/model.test.ts
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Model } from '../lib/model';
import { loadTensors, saveTensors } from '../lib/safetensors';
import { checkRegularFile, makeDirs, writeFileAtomic } from '../lib/files';
import { Tensor } from '../lib/tensor';
import { MvebError } from '../lib/errors';
import { expectReject, relError } from './helpers';

const fixtures = path.join(__dirname, 'fixtures');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mveb-model-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('resnet18 cifar fixture through the JS API matches PyTorch within 1e-4', async () => {
  const { tensors: f, metadata } = await loadTensors(path.join(fixtures, 'resnet18_cifar_c3.safetensors'));
  expect(metadata.depth).toBe('18');
  const net = Model.resnet({ depth: 18, stem: 'cifar', inChannels: 3, widthMultiplier: Number(metadata.width_multiplier), seed: 0 });
  const sd = new Map<string, Tensor>();
  for (const [k, v] of f) {
    if (k.startsWith('param.')) sd.set(k.slice(6), v);
    if (k.startsWith('buffer.')) sd.set(k.slice(7), v);
  }
  net.loadStateDict(sd, { strict: true });
  const feats = await net.forward(f.get('input')!, { train: true });
  expect(feats.shape).toEqual([4, net.featureDim]);
  expect(relError(feats.dataSync(), f.get('features')!.dataSync())).toBeLessThan(1e-4);
  const dx = await net.backward(f.get('grad_out')!);
  expect(relError(dx.dataSync(), f.get('input_grad')!.dataSync())).toBeLessThan(1e-4);
  const grads = net.gradients();
  expect(grads.get('conv1.weight')!.shape).toEqual([8, 3, 3, 3]);
  expect(relError(grads.get('conv1.weight')!.dataSync(), f.get('grad.conv1.weight')!.dataSync())).toBeLessThan(1e-4);
  expect(relError(grads.get('layer4.1.bn2.weight')!.dataSync(), f.get('grad.layer4.1.bn2.weight')!.dataSync())).toBeLessThan(1e-4);
  const bufs = net.buffers();
  expect(relError(bufs.get('layer2.0.downsample.1.running_var')!.dataSync(), f.get('after.layer2.0.downsample.1.running_var')!.dataSync())).toBeLessThan(1e-4);
  expect(Array.from(bufs.get('bn1.num_batches_tracked')!.dataSync())).toEqual([4]);
  [feats, dx, ...grads.values(), ...bufs.values(), ...f.values()].forEach((t) => t.dispose());
  net.dispose();
  expect(net.disposed).toBe(true);
  await expectReject(net.forward(Tensor.zeros([1, 3, 8, 8])), 'E_DISPOSED');
});

test('save/load round trip (atomic write), prefix, strict errors, torchvision-style extra fc', async () => {
  const a = Model.resnet({ depth: 18, stem: 'cifar', inChannels: 1, widthMultiplier: 0.0625, seed: 1 });
  const x = Tensor.randn([2, 1, 8, 8], { seed: 3 });
  (await a.forward(x)).dispose();
  const file = path.join(tmp, 'a.safetensors');
  await a.save(file);
  expect(fs.readdirSync(tmp).filter((n) => n.endsWith('.tmp'))).toEqual([]);
  const b = Model.resnet({ depth: 18, stem: 'cifar', inChannels: 1, widthMultiplier: 0.0625, seed: 2 });
  await b.load(file, { strict: true });
  const pa = a.stateDict();
  const pb = b.stateDict();
  expect([...pb.keys()]).toEqual([...pa.keys()]);
  for (const [k, v] of pa) expect(Array.from(pb.get(k)!.dataSync())).toEqual(Array.from(v.dataSync()));

  // the file a torchvision user would write: plus fc.*, num_batches_tracked as I64 (we write I64 too)
  const withFc = new Map(pa);
  withFc.set('fc.weight', Tensor.zeros([10, 32]));
  const tv = path.join(tmp, 'tv.safetensors');
  await saveTensors(tv, withFc, { format: 'pt' });
  await b.load(tv, { strict: true });

  // missing entry (strict) -> E_FORMAT; non-strict passes; wrong shape -> E_SHAPE
  const missing = new Map(pa);
  missing.delete('layer1.0.conv1.weight');
  const mfile = path.join(tmp, 'missing.safetensors');
  await saveTensors(mfile, missing);
  await expectReject(b.load(mfile, { strict: true }), 'E_FORMAT');
  await b.load(mfile, { strict: false });
  const bad = new Map(pa);
  bad.set('conv1.weight', Tensor.zeros([2, 1, 3, 3]));
  await expectReject(Promise.resolve().then(() => b.loadStateDict(bad)), 'E_SHAPE');

  // a backbone and a projector in one file under projector.*
  const proj = Model.projector({ inDim: 32, hiddenDim: 16, outDim: 8, seed: 4 });
  const both = new Map(pa);
  const ps = proj.stateDict();
  for (const [k, v] of ps) both.set(`projector.${k}`, v);
  const bfile = path.join(tmp, 'both.safetensors');
  await saveTensors(bfile, both);
  const proj2 = Model.projector({ inDim: 32, hiddenDim: 16, outDim: 8, seed: 5 });
  await proj2.load(bfile, { strict: true });
  await b.load(bfile, { strict: true });
  expect(Array.from(proj2.parameters().get('6.bias')!.dataSync())).toEqual(Array.from(ps.get('6.bias')!.dataSync()));
  [a, b, proj, proj2].forEach((m) => m.dispose());
  [...pa.values(), ...pb.values(), ...ps.values(), x].forEach((t) => t.dispose());
});

test('hostile files give MvebError, never a crash', async () => {
  const cases: Array<[string, Buffer, string]> = [
    ['empty', Buffer.alloc(0), 'E_FORMAT'],
    ['huge header length', Buffer.from([0, 0, 0, 0, 0, 0, 0, 1, 0x7b, 0x7d]), 'E_FORMAT'],
    ['garbage JSON', Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"a"')]), 'E_FORMAT'],
  ];
  const header = '{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,64]}}';
  const h = Buffer.alloc(8);
  h.writeUInt32LE(header.length, 0);
  cases.push(['offset out of range', Buffer.concat([h, Buffer.from(header), Buffer.alloc(16)]), 'E_FORMAT']);
  for (const [name, bytes, code] of cases) {
    const file = path.join(tmp, `${name.replace(/ /g, '_')}.safetensors`);
    fs.writeFileSync(file, bytes);
    await expectReject(loadTensors(file), code);
  }
  await expectReject(loadTensors(path.join(tmp, 'does-not-exist.safetensors')), 'E_IO');
  const net = Model.projector({ inDim: 4, hiddenDim: 4, outDim: 4 });
  await expectReject(net.load(path.join(tmp, 'empty.safetensors')), 'E_FORMAT');
  net.dispose();
});

test('clone, emaUpdate and SGD optimizerStep follow their formulas; NaN gradients skip the step', async () => {
  const online = Model.projector({ inDim: 6, hiddenDim: 8, outDim: 4, seed: 9 });
  const target = online.clone();
  const x = Tensor.randn([5, 6], { seed: 1 });
  const g = Tensor.randn([5, 4], { seed: 2 });
  (await online.forward(x)).dispose();
  const dx = await online.backward(g);
  expect(dx.shape).toEqual([5, 6]);
  const p0 = online.parameters();
  const g0 = online.gradients();
  expect((await online.optimizerStep({ kind: 'sgd', lr: 0.1, momentum: 0.9, weightDecay: 0.01 })).finite).toBe(true);
  const p1 = online.parameters();
  for (const [k, v] of p0) {
    const p = v.dataSync();
    const gr = g0.get(k)!.dataSync();
    const want = Array.from(p, (pv, i) => pv - 0.1 * (gr[i] + 0.01 * pv));
    expect(relError(p1.get(k)!.dataSync(), want)).toBeLessThan(1e-6);
  }
  const mom = online.optimizerState();
  expect(mom.size).toBe(p0.size);
  const t0 = target.parameters();
  await target.emaUpdate(online, 0.9);
  const t1 = target.parameters();
  for (const [k, v] of t0) {
    const o = p1.get(k)!.dataSync();
    const want = Array.from(v.dataSync(), (tv, i) => 0.9 * tv + 0.1 * o[i]);
    expect(relError(t1.get(k)!.dataSync(), want)).toBeLessThan(1e-6);
  }
  // copyFrom: a cheap rollback of the parameters
  const snap = target.clone();
  snap.copyFrom(online, { parameters: true, buffers: false });
  const ps = snap.parameters();
  for (const [k, v] of p1) expect(Array.from(ps.get(k)!.dataSync())).toEqual(Array.from(v.dataSync()));
  ps.forEach((t) => t.dispose());
  expect(() => snap.copyFrom(Model.projector({ inDim: 6, hiddenDim: 9, outDim: 4 }))).toThrow(MvebError);
  snap.dispose();
  // a NaN input makes NaN gradients: the step is skipped
  online.zeroGrad();
  const nanX = Tensor.from(new Float32Array(30).fill(NaN), [5, 6]);
  (await online.forward(nanX)).dispose();
  (await online.backward(g, { inputGrad: false }));
  expect((await online.optimizerStep({ kind: 'lars', lr: 0.1, weightDecay: 1e-6 })).finite).toBe(false);
  const p2 = online.parameters();
  for (const [k, v] of p1) expect(Array.from(p2.get(k)!.dataSync())).toEqual(Array.from(v.dataSync()));
  [x, g, dx, nanX, ...p0.values(), ...g0.values(), ...p1.values(), ...p2.values(), ...mom.values(), ...t0.values(), ...t1.values()].forEach((t) => t.dispose());
  online.dispose();
  target.dispose();
});

test('addGradientsFrom adds a copy\'s gradients; activationBytesFor predicts the arena of a forward', async () => {
  const net = Model.projector({ inDim: 6, hiddenDim: 8, outDim: 4, seed: 3 });
  const copy = net.clone();
  expect(net.activationBytes).toBe(0);
  const predicted = net.activationBytesFor([5, 6]);
  expect(predicted).toBeGreaterThan(0);
  const x = Tensor.randn([5, 6], { seed: 1 }), g = Tensor.randn([5, 4], { seed: 2 });
  const y = Tensor.randn([7, 6], { seed: 3 }), h = Tensor.randn([7, 4], { seed: 4 });
  (await net.forward(x)).dispose();
  expect(net.activationBytes).toBe(predicted);
  (await net.backward(g, { inputGrad: false }));
  (await copy.forward(y)).dispose();
  (await copy.backward(h, { inputGrad: false }));
  const a = net.gradients(), b = copy.gradients();
  net.addGradientsFrom(copy);
  const sum = net.gradients();
  for (const [k, v] of a) {
    const bv = b.get(k)!.dataSync();
    const want = Array.from(v.dataSync(), (av, i) => av + bv[i]);
    expect(relError(sum.get(k)!.dataSync(), want)).toBeLessThan(1e-7);
  }
  expect(() => net.addGradientsFrom(net)).toThrow(expect.objectContaining({ code: 'E_ARG' }));
  expect(() => net.addGradientsFrom({} as Model)).toThrow(expect.objectContaining({ code: 'E_ARG' }));
  const other = Model.projector({ inDim: 6, hiddenDim: 9, outDim: 4 });
  expect(() => net.addGradientsFrom(other)).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
  expect(() => net.activationBytesFor([5, 7])).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
  expect(() => net.activationBytesFor([5, -6])).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
  copy.dispose();
  expect(() => net.addGradientsFrom(copy)).toThrow(expect.objectContaining({ code: 'E_DISPOSED' }));
  [x, g, y, h, ...a.values(), ...b.values(), ...sum.values()].forEach((t) => t.dispose());
  other.dispose();
  net.dispose();
});

test('forwardAll / backwardAll run several models side by side with forward / backward results; mergeRunningStats', async () => {
  const base = Model.resnet({ depth: 18, stem: 'cifar', inChannels: 1, widthMultiplier: 0.0625, seed: 4 });
  const a = base.clone(), b = base.clone(), ra = base.clone(), rb = base.clone();
  const xa = Tensor.randn([6, 1, 12, 12], { seed: 1 }), xb = Tensor.randn([5, 1, 10, 14], { seed: 2 });
  const ga = Tensor.randn([6, 32], { seed: 3 }), gb = Tensor.randn([5, 32], { seed: 4 });
  const [ya, yb] = await Model.forwardAll([a, b], [xa, xb]);
  const [dxa, dxb] = await Model.backwardAll([a, b], [ga, gb]);
  // the same passes one model at a time (all threads on each): equal up to the float sums' rounding
  const wa = await ra.forward(xa), wb = await rb.forward(xb);
  const ea = await ra.backward(ga), eb = await rb.backward(gb);
  expect(ya.shape).toEqual([6, 32]);
  expect(yb.shape).toEqual([5, 32]);
  expect(relError(ya.dataSync(), wa.dataSync())).toBeLessThan(1e-5);
  expect(relError(yb.dataSync(), wb.dataSync())).toBeLessThan(1e-5);
  expect(relError(dxa!.dataSync(), ea.dataSync())).toBeLessThan(1e-4);
  expect(relError(dxb!.dataSync(), eb.dataSync())).toBeLessThan(1e-4);
  for (const [m, r] of [[a, ra], [b, rb]] as const) {
    const got = m.gradients(), want = r.gradients();
    for (const [k, v] of want) expect({ k, e: relError(got.get(k)!.dataSync(), v.dataSync()) < 1e-4 }).toEqual({ k, e: true });
    [...got.values(), ...want.values()].forEach((t) => t.dispose());
  }
  const none = await Model.backwardAll([a, b], [ga, gb], { inputGrad: false });
  expect(none).toEqual([null, null]);
  // mergeRunningStats: a's and b's forwards above started from base's buffers; merged into b they
  // equal one model running xa then xb (the counters too)
  const seq = base.clone();
  (await seq.forward(xa)).dispose();
  (await seq.forward(xb)).dispose();
  b.mergeRunningStats(base, [a]);
  const got = b.buffers(), want = seq.buffers();
  for (const [k, v] of want) {
    if (v.dtype === 'int32') expect({ k, v: Array.from(got.get(k)!.dataSync()) }).toEqual({ k, v: Array.from(v.dataSync()) });
    else expect({ k, e: relError(got.get(k)!.dataSync(), v.dataSync()) < 1e-6 }).toEqual({ k, e: true });
  }
  [...got.values(), ...want.values()].forEach((t) => t.dispose());
  // bad input: stable codes, nothing runs
  await expectReject(Model.forwardAll([a, a], [xa, xa]), 'E_ARG', /appears twice/);
  await expectReject(Model.forwardAll([a, b], [xa]), 'E_ARG');
  await expectReject(Model.forwardAll([a, b], [xa, Tensor.zeros([2, 3, 8, 8])]), 'E_SHAPE');
  await expectReject(Model.forwardAll([a, {} as Model], [xa, xb]), 'E_ARG');
  await expectReject(Model.backwardAll([a, b], [ga, Tensor.zeros([2, 32], { dtype: 'int32' })]), 'E_DTYPE');
  expect(() => b.mergeRunningStats(b, [a])).toThrow(expect.objectContaining({ code: 'E_ARG' }));
  expect(() => b.mergeRunningStats(base, [b])).toThrow(expect.objectContaining({ code: 'E_ARG' }));
  const proj = Model.projector({ inDim: 32, hiddenDim: 8, outDim: 4 });
  expect(() => b.mergeRunningStats(base, [proj])).toThrow(expect.objectContaining({ code: 'E_SHAPE' }));
  const mixed = await Model.forwardAll([a, proj], [xa, ya], { train: false });  // a backbone and a projector together
  expect(mixed.map((t) => t.shape)).toEqual([[6, 32], [6, 4]]);
  mixed.forEach((t) => t.dispose());
  a.dispose();
  await expectReject(Model.forwardAll([a, b], [xa, xb]), 'E_DISPOSED');
  [xa, xb, ga, gb, ya, yb, dxa!, dxb!, wa, wb, ea, eb].forEach((t) => t.dispose());
  [base, b, ra, rb, seq, proj].forEach((m) => m.dispose());
});

test('argument validation gives stable codes', async () => {
  await expectReject(() => Model.resnet({ depth: 20 as 18 }), 'E_ARG');
  await expectReject(() => Model.resnet({ depth: 18, stem: 'tiny' as 'cifar' }), 'E_ARG');
  await expectReject(() => Model.resnet({ depth: 18, inChannels: 0 }), 'E_ARG');
  await expectReject(() => Model.resnet({ depth: 18, device: 'tpu' as 'cpu' }), 'E_DEVICE');
  await expectReject(() => Model.projector({ inDim: 4, hiddenDim: 0, outDim: 2 }), 'E_ARG');
  const net = Model.resnet({ depth: 18, stem: 'cifar', widthMultiplier: 0.0625 });
  expect(net.featureDim).toBe(32);
  const wrong = Tensor.zeros([2, 1, 8, 8]);
  await expectReject(net.forward(wrong), 'E_SHAPE');
  await expectReject(net.backward(Tensor.zeros([2, 32])), 'E_ARG');
  await expectReject(net.optimizerStep({ lr: NaN }), 'E_ARG');
  await expectReject(net.optimizerStep({ kind: 'adam' as 'sgd', lr: 1 }), 'E_ARG');
  const other = Model.projector({ inDim: 4, hiddenDim: 4, outDim: 4 });
  await expectReject(net.emaUpdate(other, 0.5), 'E_SHAPE');
  await expectReject(net.emaUpdate(net, 2), 'E_ARG');
  net.dispose();
  other.dispose();
  wrong.dispose();
});

test('boolean options refuse other types with E_ARG (a string was taken as true)', async () => {
  const a = Model.projector({ inDim: 4, hiddenDim: 4, outDim: 4, seed: 1 }), b = a.clone();
  expect(() => a.copyFrom(b, { parameters: 'false' as never })).toThrow(expect.objectContaining({ code: 'E_ARG', message: expect.stringContaining('copyFrom: parameters') }));
  expect(() => a.loadStateDict(b.stateDict(), { strict: 1 as never })).toThrow(expect.objectContaining({ code: 'E_ARG' }));
  const y = await a.forward(Tensor.randn([3, 4], { seed: 1 }));
  await expectReject(a.backward(Tensor.randn([...y.shape], { seed: 2 }), { inputGrad: 'no' as never }), 'E_ARG', /backward: inputGrad must be a boolean, found 'no'/);
  [a, b, y].forEach((t) => t.dispose());
});

test('writeFileAtomic replaces the file whole and leaves no temporary file', async () => {
  const file = path.join(tmp, 'atomic.bin');
  await writeFileAtomic(file, Buffer.from('old'));
  await writeFileAtomic(file, Buffer.from('new content'));
  expect(fs.readFileSync(file, 'utf8')).toBe('new content');
  expect(fs.readdirSync(tmp).filter((n) => n.includes('atomic.bin') && n.endsWith('.tmp'))).toEqual([]);
  await expectReject(writeFileAtomic(path.join(tmp, 'no-such-dir', 'x.bin'), Buffer.from('x')), 'E_IO');
});

test('makeDirs makes missing parents and refuses what cannot be a folder with E_IO (never hangs)', () => {
  const deep = path.join(tmp, 'mk', 'a', 'b');
  makeDirs(deep);
  makeDirs(deep);  // (exists: nothing to do)
  expect(fs.statSync(deep).isDirectory()).toBe(true);
  fs.writeFileSync(path.join(tmp, 'mk', 'file'), 'x');
  expect(() => makeDirs(path.join(tmp, 'mk', 'file', 'sub'))).toThrow(expect.objectContaining({ code: 'E_IO' }));
  expect(() => makeDirs(path.join(tmp, 'mk', 'file'))).toThrow(/something else is in the way/);
  fs.symlinkSync(path.join(tmp, 'mk', 'nowhere'), path.join(tmp, 'mk', 'dangling'));
  expect(() => makeDirs(path.join(tmp, 'mk', 'dangling', 'out'))).toThrow(expect.objectContaining({ code: 'E_IO' }));
  // where mkdir says ENOENT under an existing folder (Node 20's recursive mkdir looped forever here)
  if (fs.existsSync('/proc/self')) expect(() => makeDirs('/proc/mveb-test/out')).toThrow(expect.objectContaining({ code: 'E_IO' }));
});

test('a device or a folder given as a file to read is E_IO, not an endless read', async () => {
  expect(() => checkRegularFile(tmp)).toThrow(/not a regular file \(a folder\)/);
  if (fs.existsSync('/dev/zero')) {
    expect(() => checkRegularFile('/dev/zero')).toThrow(/a device or special file/);
    await expectReject(loadTensors('/dev/zero'), 'E_IO', /not a regular file/);  // (read forever before)
  }
  expect(() => checkRegularFile(path.join(tmp, 'missing'))).toThrow(expect.objectContaining({ code: 'E_IO' }));
});
