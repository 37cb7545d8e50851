// data.test.ts: datasets, loaders and the native augmentation pipeline from TypeScript (lib/data).
// IDX (built-in Fashion-MNIST, corrupt and truncated files), CIFAR-10/100 on tiny synthetic batches,
// image folders made with sharp (one corrupt file skipped with a warning), fromTypedArray, format
// detection, augmentBatch/evalBatch values, determinism across thread counts, MultiCropLoader.
// Run: MVEB_ADDON_PATH=<built addon> npx jest test/data.test.ts
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as zlib from 'zlib';
import sharp from 'sharp';
import { MvebError } from '../lib/errors';
import { memory } from '../lib/tensor';
import { native } from '../lib/native';
import {
  Dataset,
  FASHION_MNIST_MEAN,
  FASHION_MNIST_STD,
  MultiCropLoader,
  NativeDataset,
  augmentBatch,
  builtinFashionMnist,
  channelStats,
  defaultViews,
  epochPermutation,
  evalBatch,
  fromTypedArray,
  loadCifar,
  loadDataset,
  loadIdx,
  loadImageFolder,
} from '../lib/data';
import { expectCode, expectReject } from './helpers';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mveb-data-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

function idxBytes(magicDims: number[], data: Uint8Array): Buffer {
  const header = Buffer.alloc(4 + 4 * magicDims.length);
  header[2] = 0x08;
  header[3] = magicDims.length;
  magicDims.forEach((d, i) => header.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([header, Buffer.from(data)]);
}

function pseudoRandomBytes(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 255;
  }
  return out;
}

describe('IDX', () => {
  let train: Dataset;
  test('built-in Fashion-MNIST: 60000 train / 10000 test, 28x28x1, balanced labels 0..9', () => {
    train = builtinFashionMnist('train');
    const test = builtinFashionMnist('test');
    for (const [ds, n] of [[train, 60000], [test, 10000]] as const) {
      expect([ds.size, ds.height, ds.width, ds.channels]).toEqual([n, 28, 28, 1]);
      expect(ds.images.length).toBe(n * 784);
      expect(ds.numClasses).toBe(10);
      expect(ds.classNames?.[9]).toBe('Ankle boot');
      const counts = new Array(10).fill(0);
      ds.labels!.forEach((l) => counts[l]++);
      expect(counts).toEqual(new Array(10).fill(n / 10));
    }
    // the shipped statistics are those of the training images
    const st = channelStats(train);
    expect(Math.abs(st.mean[0] - FASHION_MNIST_MEAN[0])).toBeLessThan(1e-4);
    expect(Math.abs(st.std[0] - FASHION_MNIST_STD[0])).toBeLessThan(1e-4);
    // subset copies images and labels
    const sub = train.subset(new Int32Array([5, 0]));
    expect(sub.size).toBe(2);
    expect(Array.from(sub.images.subarray(784, 1568))).toEqual(Array.from(train.images.subarray(0, 784)));
    expect(Array.from(sub.labels!)).toEqual([train.labels![5], train.labels![0]]);
  });

  test('raw and gzip files give the same dataset; labels join images', () => {
    const img = pseudoRandomBytes(3 * 5 * 4, 7);
    fs.writeFileSync(path.join(tmp, 'a-images-idx3-ubyte'), idxBytes([3, 5, 4], img));
    fs.writeFileSync(path.join(tmp, 'a-labels-idx1-ubyte.gz'), zlib.gzipSync(idxBytes([3], new Uint8Array([2, 0, 1]))));
    const ds = loadIdx(path.join(tmp, 'a-images-idx3-ubyte'), path.join(tmp, 'a-labels-idx1-ubyte.gz'));
    expect([ds.size, ds.height, ds.width, ds.channels]).toEqual([3, 5, 4, 1]);
    expect(Array.from(ds.images)).toEqual(Array.from(img));
    expect(Array.from(ds.labels!)).toEqual([2, 0, 1]);
    expect(ds.numClasses).toBe(3);
  });

  test('corrupt and truncated IDX files: E_FORMAT naming the file and the byte offset', () => {
    const f = (name: string, b: Buffer) => {
      const p = path.join(tmp, name);
      fs.writeFileSync(p, b);
      return p;
    };
    const good = idxBytes([2, 3, 3], pseudoRandomBytes(18, 3));
    const truncated = f('trunc-images-idx3-ubyte', good.subarray(0, good.length - 5));
    expectCode(() => loadIdx(truncated), 'E_FORMAT', /trunc-images-idx3-ubyte.*promises 18 data bytes from offset 16.*byte offset 29/);
    const badMagic = Buffer.from(good);
    badMagic[0] = 0x12;
    expectCode(() => loadIdx(f('magic-images', badMagic)), 'E_FORMAT', /magic-images: bad IDX magic.*0x12000803.*byte offset 0/);
    expectCode(() => loadIdx(f('short-header', good.subarray(0, 10))), 'E_FORMAT', /short-header: truncated IDX header: expected 16 bytes, found 10 \(byte offset 10\)/);
    expectCode(() => loadIdx(f('trailing', Buffer.concat([good, Buffer.from([1, 2])]))), 'E_FORMAT', /trailing: 2 unexpected bytes.*byte offset 34/);
    expectCode(() => loadIdx(f('labels-as-images', idxBytes([4], new Uint8Array(4)))), 'E_FORMAT', /expected 0x00000803.*found 0x00000801/);
    const gz = zlib.gzipSync(good);
    expectCode(() => loadIdx(f('cut.gz', gz.subarray(0, gz.length - 9))), 'E_FORMAT', /cut\.gz: corrupt gzip data/);
    // a "gzip bomb": 64 MiB of zeros (~65 KB compressed) whose trailer claims 34 bytes: refused after
    // decompressing at most 34 bytes, not after inflating all of it
    const bomb = zlib.gzipSync(Buffer.concat([good, Buffer.alloc(64 << 20)]));
    bomb.writeUInt32LE(good.length, bomb.length - 4);
    expectCode(() => loadIdx(f('bomb.gz', bomb)), 'E_FORMAT', /bomb\.gz: corrupt gzip data \(it decompresses past the 34 bytes its trailer records/);
    const imgs = f('n2-images', good);
    expectCode(() => loadIdx(imgs, f('n3-labels', idxBytes([3], new Uint8Array(3)))), 'E_FORMAT', /n3-labels: 3 labels for the 2 images/);
    expectCode(() => loadIdx(path.join(tmp, 'missing')), 'E_IO', /missing/);
  });
});

describe('parser robustness', () => {
  test('every truncation and 300 random byte mutations of IDX / CIFAR files: a Dataset or an MvebError, never a crash', () => {
    const idx = idxBytes([3, 4, 5], pseudoRandomBytes(60, 17));
    const cifar = Buffer.concat([Buffer.from([3]), Buffer.from(pseudoRandomBytes(3072, 2)), Buffer.from([7]), Buffer.from(pseudoRandomBytes(3072, 3))]);
    const file = path.join(tmp, 'fuzz-images-idx3-ubyte');
    const cfile = path.join(tmp, 'fuzz.bin');
    let ok = 0, errors = 0;
    const attempt = (fn: () => Dataset) => {
      try {
        const ds = fn();
        expect(ds.images.length).toBe(ds.size * ds.height * ds.width * ds.channels);
        ok++;
      } catch (e) {
        expect(e).toBeInstanceOf(MvebError);
        expect(['E_FORMAT', 'E_SHAPE']).toContain((e as MvebError).code);
        errors++;
      }
    };
    for (let n = 0; n < idx.length; n++) {
      fs.writeFileSync(file, idx.subarray(0, n));
      attempt(() => loadIdx(file));
    }
    const rnd = pseudoRandomBytes(900, 99);
    for (let k = 0; k < 300; k++) {
      const m = Buffer.from(idx);
      m[rnd[3 * k] % 24] = rnd[3 * k + 1]; // the header is where structure lives
      fs.writeFileSync(file, k % 2 ? zlib.gzipSync(m) : m);
      attempt(() => loadIdx(file));
      const c = Buffer.from(cifar.subarray(0, cifar.length - (rnd[3 * k + 2] % 3)));
      c[(rnd[3 * k] * 7) % c.length] = rnd[3 * k + 1];
      fs.writeFileSync(cfile, c);
      attempt(() => loadCifar(cfile, { variant: 'cifar10' }));
    }
    expect(ok).toBeGreaterThan(0);
    expect(errors).toBeGreaterThan(idx.length - 2); // every truncation but the full file fails
  });
});

describe('CIFAR', () => {
  function record(label: number[], seed: number): { bytes: Buffer; hwc: Uint8Array } {
    const chw = pseudoRandomBytes(3072, seed);
    const hwc = new Uint8Array(3072);
    for (let p = 0; p < 1024; p++) for (let c = 0; c < 3; c++) hwc[3 * p + c] = chw[c * 1024 + p];
    return { bytes: Buffer.concat([Buffer.from(label), Buffer.from(chw)]), hwc };
  }

  test('CIFAR-10 folder (train batches + test batch + names) and planes transposed to HWC', () => {
    const dir = path.join(tmp, 'cifar10');
    fs.mkdirSync(dir);
    const r = [record([3], 1), record([9], 2), record([0], 3)];
    fs.writeFileSync(path.join(dir, 'data_batch_1.bin'), Buffer.concat([r[0].bytes, r[1].bytes]));
    fs.writeFileSync(path.join(dir, 'data_batch_2.bin'), r[2].bytes);
    fs.writeFileSync(path.join(dir, 'test_batch.bin'), r[1].bytes);
    fs.writeFileSync(path.join(dir, 'batches.meta.txt'), 'airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n');
    const ds = loadCifar(dir);
    expect([ds.size, ds.height, ds.width, ds.channels, ds.numClasses]).toEqual([3, 32, 32, 3, 10]);
    expect(Array.from(ds.labels!)).toEqual([3, 9, 0]);
    expect(ds.classNames?.[3]).toBe('cat');
    r.forEach((rec, i) => expect(Buffer.from(ds.images.subarray(i * 3072, (i + 1) * 3072)).equals(Buffer.from(rec.hwc))).toBe(true));
    const test = loadCifar(dir, { split: 'test' });
    expect(test.size).toBe(1);
    expect(Array.from(test.labels!)).toEqual([9]);
  });

  test('CIFAR-100 (coarse + fine label bytes, fine used); truncated and bad labels are E_FORMAT with offsets', async () => {
    const dir = path.join(tmp, 'cifar100');
    fs.mkdirSync(dir);
    const a = record([4, 77], 5), b = record([1, 12], 6);
    fs.writeFileSync(path.join(dir, 'train.bin'), Buffer.concat([a.bytes, b.bytes]));
    const ds = loadCifar(path.join(dir, 'train.bin'));
    expect(ds.numClasses).toBe(100);
    expect(Array.from(ds.labels!)).toEqual([77, 12]);
    expect(Buffer.from(ds.images.subarray(3072)).equals(Buffer.from(b.hwc))).toBe(true);
    // detection through loadDataset
    expect((await loadDataset(dir)).size).toBe(2);
    const cut = path.join(tmp, 'data_batch_9.bin');
    fs.writeFileSync(cut, Buffer.concat([a.bytes.subarray(1), b.bytes.subarray(0, 100)]));
    expectCode(() => loadCifar(cut), 'E_FORMAT', /data_batch_9\.bin: truncated cifar10 batch.*3173 bytes.*record 1 is cut off at byte offset 3173/);
    const badLabel = path.join(tmp, 'test_batch.bin');
    fs.writeFileSync(badLabel, Buffer.concat([record([4], 8).bytes, record([200], 9).bytes]));
    expectCode(() => loadCifar(badLabel), 'E_FORMAT', /label 200 > 9 .*byte offset 3073/);
  });
});

describe('image folder', () => {
  const solid = (w: number, h: number, rgb: [number, number, number]) =>
    sharp({ create: { width: w, height: h, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } });

  test('class subfolders, PNG/JPEG/WebP, one corrupt file skipped with a warning', async () => {
    const dir = path.join(tmp, 'folder');
    fs.mkdirSync(path.join(dir, 'cats'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'dogs'));
    await solid(20, 12, [200, 10, 30]).png().toFile(path.join(dir, 'cats', 'a.png'));
    await solid(9, 9, [0, 255, 0]).webp({ lossless: true }).toFile(path.join(dir, 'cats', 'b.webp'));
    await solid(30, 40, [40, 80, 160]).png().toFile(path.join(dir, 'dogs', 'c.png'));
    await solid(16, 16, [128, 128, 128]).jpeg({ quality: 95 }).toFile(path.join(dir, 'dogs', 'd.JPG'));
    fs.writeFileSync(path.join(dir, 'dogs', 'broken.png'), Buffer.from('this is not a png'));
    fs.writeFileSync(path.join(dir, 'dogs', 'notes.txt'), 'ignored');
    const warnings: string[] = [];
    const ds = await loadImageFolder(dir, { size: 8, onWarning: (m) => warnings.push(m) });
    expect(warnings.length).toBe(1);
    expect(warnings[0]).toMatch(/broken\.png/);
    expect([ds.size, ds.height, ds.width, ds.channels]).toEqual([4, 8, 8, 3]);
    expect(ds.classNames).toEqual(['cats', 'dogs']);
    expect(Array.from(ds.labels!)).toEqual([0, 0, 1, 1]);
    // solid images stay solid through the resize: check the centre pixel of each
    const centre = (i: number) => Array.from(ds.images.subarray(i * 192 + (4 * 8 + 4) * 3, i * 192 + (4 * 8 + 4) * 3 + 3));
    expect(centre(0)).toEqual([200, 10, 30]);
    expect(centre(1)).toEqual([0, 255, 0]);
    expect(centre(2)).toEqual([40, 80, 160]);
    centre(3).forEach((v) => expect(Math.abs(v - 128)).toBeLessThanOrEqual(2)); // JPEG
    // grayscale output, and loadDataset detects the folder
    const gray = await loadDataset(dir, { size: 5, channels: 1, onWarning: () => undefined });
    expect([gray.size, gray.channels, gray.height]).toEqual([4, 1, 5]);
  });

  test('a flat folder is an unlabelled dataset; default size is the first image', async () => {
    const dir = path.join(tmp, 'flat');
    fs.mkdirSync(dir);
    await solid(6, 4, [1, 2, 3]).png().toFile(path.join(dir, 'x.png'));
    await solid(12, 8, [9, 9, 9]).png().toFile(path.join(dir, 'y.png'));
    const ds = await loadImageFolder(dir);
    expect([ds.size, ds.height, ds.width]).toEqual([2, 4, 6]);
    expect(ds.labels).toBeUndefined();
    await expectReject(loadImageFolder(path.join(tmp, 'cifar10')), 'E_IO', /no images found/);
  });

  test('a size the images cannot fit in memory is E_MEMORY before any is decoded', async () => {
    // 22 images at 8192x8192x3 need 4.1 GiB, past one array's limit (a RangeError after decoding them all before)
    const dir = path.join(tmp, 'many');
    fs.mkdirSync(dir);
    const png = await solid(2, 2, [5, 6, 7]).png().toBuffer();
    for (let i = 0; i < 22; i++) fs.writeFileSync(path.join(dir, `${i}.png`), png);
    await expectReject(loadImageFolder(dir, { size: 8192 }), 'E_MEMORY', /22 images of 8192x8192x3 need 4\.1 GiB/);
    expect((await loadImageFolder(dir, { size: 3 })).size).toBe(22);
  });

  test('links to images and to class folders count; pipes, dangling links and folders named *.png do not', async () => {
    const src = path.join(tmp, 'linksrc');
    fs.mkdirSync(path.join(src, 'birds'), { recursive: true });
    await solid(4, 4, [7, 7, 7]).png().toFile(path.join(src, 'birds', 'p.png'));
    await solid(4, 4, [8, 8, 8]).png().toFile(path.join(src, 'q.png'));
    // flat: a link to an image (was skipped: only regular entries counted), a dangling link, a folder
    // and a named pipe with image names (a pipe would block the decoder forever)
    const flat = path.join(tmp, 'flatlinks');
    fs.mkdirSync(flat);
    fs.symlinkSync(path.join(src, 'q.png'), path.join(flat, 'a.png'));
    fs.symlinkSync(path.join(src, 'gone.png'), path.join(flat, 'b.png'));
    fs.mkdirSync(path.join(flat, 'c.png'));
    const fifo = spawnSync('mkfifo', [path.join(flat, 'd.png')]).status === 0;
    const f = await loadImageFolder(flat);
    expect(f.size).toBe(1);
    // classes: a linked class folder (was skipped) next to a real one, with a linked image
    const cls = path.join(tmp, 'classlinks');
    fs.mkdirSync(path.join(cls, 'cats'), { recursive: true });
    fs.symlinkSync(path.join(src, 'birds'), path.join(cls, 'birds'));
    fs.symlinkSync(path.join(src, 'q.png'), path.join(cls, 'cats', 'q.png'));
    if (fifo) spawnSync('mkfifo', [path.join(cls, 'cats', 'pipe.png')]);
    const c = await loadImageFolder(cls);
    expect(c.classNames).toEqual(['birds', 'cats']);
    expect(Array.from(c.labels!)).toEqual([0, 1]);
  });
});

describe('fromTypedArray and loadDataset', () => {
  test('NHWC, NCHW (transposed), [N,H,W], float input; shape errors', () => {
    const nchw = Uint8Array.from({ length: 2 * 3 * 2 * 2 }, (_, i) => i);
    const ds = fromTypedArray(nchw, { shape: [2, 3, 2, 2], layout: 'NCHW', labels: [1, 0] });
    expect([ds.size, ds.channels, ds.height, ds.width]).toEqual([2, 3, 2, 2]);
    // image 1, pixel (0,1), channel 2 = nchw[((1*3+2)*2+0)*2+1]
    expect(ds.images[(1 * 4 + 1) * 3 + 2]).toBe(nchw[((1 * 3 + 2) * 2 + 0) * 2 + 1]);
    expect(Array.from(ds.labels!)).toEqual([1, 0]);
    const f = fromTypedArray(new Float32Array([0, 0.5, 1, 0.25]), { shape: [1, 2, 2] });
    expect(Array.from(f.images)).toEqual([0, 128, 255, 64]);
    expectCode(() => fromTypedArray(new Uint8Array(5), { shape: [1, 2, 2, 1] }), 'E_SHAPE', /needs 4 values, found 5/);
    expectCode(() => fromTypedArray(new Float32Array([2]), { shape: [1, 1, 1] }), 'E_ARG', /\[0, 1\]/);
    expectCode(() => fromTypedArray(new Uint8Array(4), { shape: [1, 2, 2], labels: [0, 1] }), 'E_SHAPE', /expected 1 labels/);
    // labels that Int32Array.from would have truncated (1.5 -> 1, NaN -> 0) or that are no array
    for (const bad of [[1.5], [NaN], [2 ** 40], null, 'ab'])
      expectCode(() => fromTypedArray(new Uint8Array(4), { shape: [1, 2, 2], labels: bad as never }), 'E_ARG', /32-bit integers/);
  });

  test('loadDataset detects an IDX folder by split and reports unknown paths', async () => {
    const dir = path.join(tmp, 'idxdir');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'train-images-idx3-ubyte.gz'), zlib.gzipSync(idxBytes([2, 2, 2], new Uint8Array(8).fill(1))));
    fs.writeFileSync(path.join(dir, 'train-labels-idx1-ubyte.gz'), zlib.gzipSync(idxBytes([2], new Uint8Array([0, 1]))));
    fs.writeFileSync(path.join(dir, 't10k-images-idx3-ubyte'), idxBytes([1, 2, 2], new Uint8Array(4).fill(2)));
    const train = await loadDataset(dir, { split: 'train' });
    expect([train.size, train.numClasses]).toEqual([2, 2]);
    const test = await loadDataset(dir, { split: 'test' });
    expect(test.size).toBe(1);
    expect(test.labels).toBeUndefined();
    expect((await loadDataset('fashion-mnist', { split: 'test' })).size).toBe(10000);
    await expectReject(loadDataset(path.join(tmp, 'nope')), 'E_IO', /does not exist/);
  });
});

describe('native augmentation', () => {
  const N = 23, H = 11, W = 13;
  const rgb = fromTypedArray(pseudoRandomBytes(N * H * W * 3, 11), { shape: [N, H, W, 3], labels: Array.from({ length: N }, (_, i) => i % 4) });

  test('identity view = (x/255 - mean) / std in NCHW; evalBatch the same', async () => {
    const view = { size: 7, scale: [1, 1] as [number, number], ratio: [1, 1] as [number, number], flipP: 0, jitterP: 0, grayscaleP: 0, blurP: 0, solarizeP: 0, mean: [0.5], std: [0.25] };
    const gray = fromTypedArray(pseudoRandomBytes(4 * 7 * 7, 3), { shape: [4, 7, 7] });
    const [t] = await augmentBatch(gray, [3, 1], [view], 1, 0);
    expect(t.shape).toEqual([2, 1, 7, 7]);
    const got = t.dataSync() as Float32Array;
    for (let b = 0; b < 2; b++)
      for (let p = 0; p < 49; p++) {
        const idx = [3, 1][b];
        expect(Math.abs(got[b * 49 + p] - (gray.images[idx * 49 + p] / 255 - 0.5) / 0.25)).toBeLessThan(1e-5);
      }
    t.dispose();
    const e = await evalBatch(rgb, new Int32Array([4]));
    // size defaults to min(H, W) = 11 for a non-square dataset (bicubic resize); check the shape and ImageNet default
    expect(e.shape).toEqual([1, 3, 11, 11]);
    e.dispose();
    const sq = fromTypedArray(pseudoRandomBytes(2 * 5 * 5 * 3, 8), { shape: [2, 5, 5, 3] });
    const e2 = await evalBatch(sq, [1]);
    const d = e2.dataSync() as Float32Array;
    const mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225];
    for (let c = 0; c < 3; c++)
      for (let p = 0; p < 25; p++) expect(Math.abs(d[c * 25 + p] - (sq.images[75 + p * 3 + c] / 255 - mean[c]) / std[c])).toBeLessThan(1e-5);
    e2.dispose();
  });

  test('shapes per view; deterministic across thread counts; step and seed change the views', async () => {
    const views = defaultViews({ globalSize: 9, localSize: 5, localCrops: 3 });
    expect(views.map((v) => [v.size, v.blurP, v.solarizeP])).toEqual([[9, 1, 0], [9, 0.1, 0.2], [5, 0.5, 0], [5, 0.5, 0], [5, 0.5, 0]]);
    // at most 64 local crops (10^9 ran the JS heap out of memory)
    expect(defaultViews({ localCrops: 64 })).toHaveLength(66);
    expectCode(() => defaultViews({ localCrops: 65 }), 'E_ARG', /\[0, 64\], found 65/);
    expectCode(() => defaultViews({ localCrops: 1e9 }), 'E_ARG');
    expectCode(() => defaultViews({ globalSize: 10n as never }), 'E_ARG', /globalSize/);
    expectCode(() => defaultViews({ localSize: 0.5 }), 'E_ARG', /localSize/);
    const one = new NativeDataset(rgb, { threads: 1 }), three = new NativeDataset(rgb, { threads: 3 });
    const idx = new Int32Array([0, 22, 5, 9, 13]);
    const run = async (nd: NativeDataset, seed: number, step: number) => {
      const ts = await augmentBatch(nd, idx, views, seed, step);
      const out = ts.map((t) => ({ shape: [...t.shape], data: t.dataSync() as Float32Array }));
      ts.forEach((t) => t.dispose());
      return out;
    };
    const a = await run(one, 42, 3), b = await run(three, 42, 3), c = await run(three, 42, 4), d = await run(three, 43, 3);
    expect(a.map((x) => x.shape)).toEqual([[5, 3, 9, 9], [5, 3, 9, 9], [5, 3, 5, 5], [5, 3, 5, 5], [5, 3, 5, 5]]);
    a.forEach((x, v) => {
      expect(Buffer.from(x.data.buffer).equals(Buffer.from(b[v].data.buffer))).toBe(true);
      expect(Buffer.from(x.data.buffer).equals(Buffer.from(c[v].data.buffer))).toBe(false);
      expect(Buffer.from(x.data.buffer).equals(Buffer.from(d[v].data.buffer))).toBe(false);
      expect(x.data.every((y) => Number.isFinite(y))).toBe(true);
    });
    // an Int32Array view with a byte offset reads the right indices
    const big = new Int32Array([7, 0, 22, 5, 9, 13, 1]);
    const sub = await augmentBatch(three, big.subarray(1, 6), views, 42, 3);
    sub.forEach((t, v) => expect(Buffer.from((t.dataSync() as Float32Array).buffer).equals(Buffer.from(a[v].data.buffer))).toBe(true));
    sub.forEach((t) => t.dispose());
    one.dispose();
    three.dispose();
    await expectReject(augmentBatch(one, idx, views, 1, 1), 'E_DISPOSED');
    await expectReject(augmentBatch(rgb, [N], views, 1, 1), 'E_ARG', /index 23 .*outside/);
    await expectReject(augmentBatch(rgb, [0], [{ size: 4, mean: [0.5], std: [0.5] }], 1, 1), 'E_ARG', /one value per channel \(3\)/);
    await expectReject(augmentBatch(rgb, [0], [{ size: 4, flipP: 2 }], 1, 1), 'E_ARG', /flipP/);
  });

  test("device 'cuda' delivers CUDA tensors, or fails with E_DEVICE when CUDA is unusable", async () => {
    const cuda = (native.backends() as { cuda: { available: boolean } }).cuda;
    const view = [{ size: 4, scale: [0.5, 1] as [number, number] }];
    if (cuda.available) {
      const [t] = await augmentBatch(rgb, [1, 2], view, 1, 1, { device: 'cuda' });
      const [c] = await augmentBatch(rgb, [1, 2], view, 1, 1);
      expect(t.device).toBe('cuda');
      expect(Buffer.from((t.dataSync() as Float32Array).buffer).equals(Buffer.from((c.dataSync() as Float32Array).buffer))).toBe(true);
      t.dispose();
      c.dispose();
    } else {
      await expectReject(augmentBatch(rgb, [1, 2], view, 1, 1, { device: 'cuda' }), 'E_DEVICE');
      await expectReject(evalBatch(rgb, [1], { device: 'cuda' }), 'E_DEVICE');
    }
  });

  test('epoch permutations are seeded permutations', () => {
    const p = epochPermutation(100, 5, 2);
    expect(Array.from(p).sort((x, y) => x - y)).toEqual(Array.from({ length: 100 }, (_, i) => i));
    expect(Array.from(epochPermutation(100, 5, 2))).toEqual(Array.from(p));
    expect(Array.from(epochPermutation(100, 5, 3))).not.toEqual(Array.from(p));
  });
});

describe('MultiCropLoader', () => {
  const N = 29;
  const ds = fromTypedArray(pseudoRandomBytes(N * 10 * 10, 21), { shape: [N, 10, 10], labels: Array.from({ length: N }, (_, i) => i % 3) });

  test('epochs: length, shapes, a permutation per epoch, labels, reproducible', async () => {
    const loader = new MultiCropLoader(ds, { batchSize: 6, localCrops: 2, localSize: 4, seed: 3 });
    expect(loader.length).toBe(4); // 29 / 6, last partial batch dropped
    const seen: number[] = [];
    const first: Float32Array[] = [];
    let steps = 0;
    for await (const b of loader.epoch(1)) {
      expect(b.step).toBe(steps);
      expect(b.globalStep).toBe(4 + steps);
      expect(b.views.map((v) => v.shape)).toEqual([[6, 1, 10, 10], [6, 1, 10, 10], [6, 1, 4, 4], [6, 1, 4, 4]]);
      expect(Array.from(b.labels!)).toEqual(Array.from(b.indices, (i) => i % 3));
      seen.push(...b.indices);
      if (steps === 2) first.push(...b.views.map((v) => v.dataSync() as Float32Array));
      b.views.forEach((v) => v.dispose());
      steps++;
    }
    expect(steps).toBe(4);
    expect(new Set(seen).size).toBe(24);
    // a batch is a pure function of (seed, epoch, step): resume from step 2 reproduces it
    const again = new MultiCropLoader(ds, { batchSize: 6, localCrops: 2, localSize: 4, seed: 3, threads: 1 });
    for await (const b of again.epoch(1, 2)) {
      expect(b.step).toBe(2);
      b.views.forEach((v, i) => expect(Buffer.from((v.dataSync() as Float32Array).buffer).equals(Buffer.from(first[i].buffer))).toBe(true));
      b.views.forEach((v) => v.dispose());
      break;
    }
    // fromStep = length: nothing left (a finished epoch); past it or negative: E_ARG (past it was silently empty)
    let left = 0;
    for await (const b of again.epoch(1, again.length)) left += b.views.length;
    expect(left).toBe(0);
    for (const bad of [again.length + 1, -1, 0.5]) {
      const it = again.epoch(1, bad);
      await expectReject(it.next(), 'E_ARG', /fromStep must be in \[0, 4\]/);
    }
    const order0 = loader.order(0), order1 = loader.order(1);
    expect(Array.from(order0)).not.toEqual(Array.from(order1));
    const all = new MultiCropLoader(ds, { batchSize: 6, dropLast: false, shuffle: false });
    expect(all.length).toBe(5);
    loader.dispose();
    again.dispose();
    all.dispose();
    expect(() => new MultiCropLoader(ds, { batchSize: 30 })).toThrow(/fewer than one batch/);
  });

  test('prefetches the next batch while the caller works; leaving early frees it', async () => {
    const calls: number[] = [];
    const original = native.dataAugmentBatch;
    native.dataAugmentBatch = (...args: unknown[]) => {
      calls.push(args[4] as number);
      return original(...args);
    };
    const before = memory().cpu.tensors;
    try {
      const loader = new MultiCropLoader(ds, { batchSize: 5, seed: 1 });
      for await (const b of loader.epoch(0)) {
        // when the first batch arrives, the second one has already been requested
        expect(calls).toEqual([0, 1]);
        b.views.forEach((v) => v.dispose());
        break;
      }
      loader.dispose();
    } finally {
      native.dataAugmentBatch = original;
    }
    expect(memory().cpu.tensors).toBe(before);
  });
});
