// load.ts: the built-in Fashion-MNIST and loadDataset(), which detects a path's format.
//   'fashion-mnist' | 'builtin'          the copy shipped in the package (data/fashion-mnist)
//   a folder with *-images-idx3-ubyte[.gz] IDX (train-* for 'train', t10k-* or test-* for 'test')
//   an IDX file                          images (labels: the sibling *-labels-idx1-ubyte[.gz])
//   a folder with CIFAR .bin batches     CIFAR-10 / CIFAR-100
//   a .bin file                          one CIFAR batch
//   any other folder                     an image folder (class subfolders or flat)
// Tested by test/data.test.ts.
import * as fs from 'fs';
import * as path from 'path';
import { MvebError, checkOptions } from '../errors';
import { cifarFiles, loadCifar } from './cifar';
import { Dataset } from './dataset';
import { ImageFolderOptions, loadImageFolder } from './folder';
import { loadIdx } from './idx';

export const FASHION_MNIST_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];
/** Pixel mean and standard deviation of the 60,000 Fashion-MNIST training images (in [0, 1] units). */
export const FASHION_MNIST_MEAN = [0.28604];
export const FASHION_MNIST_STD = [0.35302];

/** The package root: the nearest folder above this file holding package.json and data/ (lib/ under ts-jest, dist/ after tsc). */
function packageRoot(): string {
  let dir = __dirname;
  for (let i = 0; i < 5; i++) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'data'))) return dir;
    dir = path.dirname(dir);
  }
  return path.resolve(__dirname, '..', '..');
}

/** The folder of the built-in Fashion-MNIST files. */
export function builtinDataDir(): string {
  return path.join(packageRoot(), 'data', 'fashion-mnist');
}

/** Fashion-MNIST shipped with the package: 'train' (60,000 images) or 'test' (10,000), 28x28x1, 10 classes. */
export function builtinFashionMnist(split: 'train' | 'test' = 'train'): Dataset {
  if (split !== 'train' && split !== 'test') throw new MvebError('E_ARG', `builtinFashionMnist: split must be 'train' or 'test', found '${String(split)}'`);
  const dir = builtinDataDir();
  const prefix = split === 'train' ? 'train' : 't10k';
  const images = path.join(dir, `${prefix}-images-idx3-ubyte.gz`);
  if (!fs.existsSync(images))
    throw new MvebError('E_IO', `the built-in Fashion-MNIST is missing: ${images} does not exist (the package's data/ folder is incomplete)`);
  return loadIdx(images, path.join(dir, `${prefix}-labels-idx1-ubyte.gz`), {
    name: `fashion-mnist (built in, ${split})`,
    classNames: FASHION_MNIST_CLASSES,
    mean: FASHION_MNIST_MEAN,
    std: FASHION_MNIST_STD,
  });
}

export interface LoadOptions extends ImageFolderOptions {
  split?: 'train' | 'test';
}

const IDX_IMAGES = /^(.*)-images-idx3-ubyte(\.gz)?$/;

function idxLabelsFor(imagesFile: string): string | undefined {
  const dir = path.dirname(imagesFile);
  const m = IDX_IMAGES.exec(path.basename(imagesFile));
  if (!m) return undefined;
  for (const ext of ['.gz', '']) {
    const f = path.join(dir, `${m[1]}-labels-idx1-ubyte${ext}`);
    if (fs.existsSync(f)) return f;
  }
  return undefined;
}

function looksLikeIdx(file: string): boolean {
  if (IDX_IMAGES.test(path.basename(file)) || /-ubyte(\.gz)?$/.test(file)) return true;
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(4);
    fs.readSync(fd, head, 0, 4, 0);
    return head[0] === 0 && head[1] === 0 && head[2] === 0x08 && (head[3] === 3 || head[3] === 4);
  } finally {
    fs.closeSync(fd);
  }
}

/** Loads a dataset from a name or path, detecting the format (see the file comment). */
export async function loadDataset(spec: string, opts: LoadOptions = {}): Promise<Dataset> {
  opts = checkOptions(opts, 'loadDataset');
  const split = opts.split ?? 'train';
  if (spec === 'fashion-mnist' || spec === 'builtin') return builtinFashionMnist(split);
  if (!fs.existsSync(spec)) throw new MvebError('E_IO', `dataset not found: ${spec} does not exist`);
  const stat = fs.statSync(spec);
  if (stat.isDirectory()) {
    const names = fs.readdirSync(spec);
    const idx = names.filter((f) => IDX_IMAGES.test(f));
    if (idx.length > 0) {
      const prefixes = split === 'train' ? ['train'] : ['t10k', 'test'];
      const pick = prefixes.map((p) => idx.find((f) => IDX_IMAGES.exec(f)![1] === p)).find((f) => f !== undefined);
      if (!pick) throw new MvebError('E_IO', `${spec}: no IDX ${split} images (expected ${prefixes.map((p) => `${p}-images-idx3-ubyte[.gz]`).join(' or ')})`);
      const images = path.join(spec, pick);
      return loadIdx(images, idxLabelsFor(images), { name: `${spec} (${split})` });
    }
    if (cifarFiles(spec, split)) return loadCifar(spec, { split });
    return loadImageFolder(spec, opts);
  }
  if (spec.endsWith('.bin')) return loadCifar(spec);
  if (looksLikeIdx(spec)) return loadIdx(spec, idxLabelsFor(spec));
  throw new MvebError('E_FORMAT', `${spec}: unknown dataset format (expected an IDX file, a CIFAR .bin batch or a folder)`);
}
