// cifar.ts: CIFAR-10 and CIFAR-100 binary batches. A record is <label byte> (CIFAR-10) or <coarse
// byte><fine byte> (CIFAR-100, the fine label is used) followed by 3072 bytes: the 32x32 red plane,
// then green, then blue (row-major); they are transposed to HWC here. Files: CIFAR-10
// data_batch_1..5.bin (train) and test_batch.bin (test), class names in batches.meta.txt; CIFAR-100
// train.bin / test.bin, names in fine_label_names.txt. Tested by test/data.test.ts.
import * as fs from 'fs';
import * as path from 'path';
import { MvebError, check, checkOptions } from '../errors';
import { Dataset, makeDataset } from './dataset';
import { readMaybeGzip } from './idx';

const PIXELS = 32 * 32 * 3;

export interface CifarOptions {
  /** which split to read when given a folder (default 'train') */
  split?: 'train' | 'test';
  /** 'cifar10' or 'cifar100'; default: from the file names, else from the record size */
  variant?: 'cifar10' | 'cifar100';
  name?: string;
}

function isCifarFile(f: string): boolean {
  return /^(data_batch_\d+|test_batch|train|test)\.bin$/.test(f);
}

/** Lists the batch files of a CIFAR folder for a split, with the variant they imply. */
export function cifarFiles(dir: string, split: 'train' | 'test'): { files: string[]; variant: 'cifar10' | 'cifar100' } | null {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return null;
  }
  if (names.includes('data_batch_1.bin') || names.includes('test_batch.bin')) {
    const files = split === 'train' ? names.filter((f) => /^data_batch_\d+\.bin$/.test(f)).sort() : names.filter((f) => f === 'test_batch.bin');
    return { files: files.map((f) => path.join(dir, f)), variant: 'cifar10' };
  }
  if (names.includes('train.bin') || names.includes('test.bin')) {
    const f = split === 'train' ? 'train.bin' : 'test.bin';
    return { files: names.includes(f) ? [path.join(dir, f)] : [], variant: 'cifar100' };
  }
  return null;
}

function readNames(file: string): string[] | undefined {
  try {
    const names = fs.readFileSync(file, 'utf8').split(/\r?\n/).map((s) => s.trim()).filter((s) => s.length > 0);
    return names.length ? names : undefined;
  } catch {
    return undefined;
  }
}

/** Loads CIFAR-10/100 binary batches from a folder (split chosen by options.split), one file, or a list of files. */
export function loadCifar(pathOrFiles: string | string[], opts: CifarOptions = {}): Dataset {
  opts = checkOptions(opts, 'loadCifar');
  const split = opts.split ?? 'train';
  let files: string[];
  let variant = opts.variant;
  let dir: string | undefined;
  if (Array.isArray(pathOrFiles)) {
    files = pathOrFiles;
  } else if (fs.existsSync(pathOrFiles) && fs.statSync(pathOrFiles).isDirectory()) {
    const found = cifarFiles(pathOrFiles, split);
    if (!found || found.files.length === 0)
      throw new MvebError('E_IO', `${pathOrFiles}: no CIFAR ${split} batches (expected data_batch_*.bin / test_batch.bin or train.bin / test.bin)`);
    files = found.files;
    variant = variant ?? found.variant;
    dir = pathOrFiles;
  } else {
    files = [pathOrFiles];
  }
  check(files.length > 0, 'E_ARG', 'loadCifar: no files given');
  if (!variant) {
    const base = path.basename(files[0]);
    if (/^(data_batch_\d+|test_batch)\.bin$/.test(base)) variant = 'cifar10';
    else if (/^(train|test)\.bin$/.test(base)) variant = 'cifar100';
  }
  const buffers = files.map((f) => readMaybeGzip(f));
  if (!variant) {
    // from the record size: 3073 bytes (CIFAR-10) or 3074 (CIFAR-100)
    const b = buffers[0];
    variant = b.length % (PIXELS + 1) === 0 ? 'cifar10' : b.length % (PIXELS + 2) === 0 ? 'cifar100' : 'cifar10';
  }
  const labelBytes = variant === 'cifar10' ? 1 : 2;
  const record = PIXELS + labelBytes;
  const maxLabel = variant === 'cifar10' ? 9 : 99;
  let total = 0;
  buffers.forEach((b, k) => {
    if (b.length === 0) throw new MvebError('E_FORMAT', `${files[k]}: empty file (byte offset 0)`);
    if (b.length % record !== 0) {
      const whole = Math.floor(b.length / record);
      throw new MvebError(
        'E_FORMAT',
        `${files[k]}: truncated ${variant} batch: ${b.length} bytes is not a multiple of the ${record}-byte record; ` +
          `record ${whole} is cut off at byte offset ${b.length} (it starts at ${whole * record})`,
      );
    }
    total += b.length / record;
  });
  const images = new Uint8Array(total * PIXELS);
  const labels = new Int32Array(total);
  let s = 0;
  buffers.forEach((b, k) => {
    for (let off = 0; off < b.length; off += record, s++) {
      const label = b[off + labelBytes - 1];
      if (label > maxLabel)
        throw new MvebError('E_FORMAT', `${files[k]}: label ${label} > ${maxLabel} for ${variant} at byte offset ${off + labelBytes - 1}`);
      labels[s] = label;
      const px = off + labelBytes;
      const out = s * PIXELS;
      for (let p = 0; p < 1024; p++) {
        images[out + 3 * p] = b[px + p];
        images[out + 3 * p + 1] = b[px + 1024 + p];
        images[out + 3 * p + 2] = b[px + 2048 + p];
      }
    }
  });
  const metaDir = dir ?? path.dirname(files[0]);
  const classNames = readNames(path.join(metaDir, variant === 'cifar10' ? 'batches.meta.txt' : 'fine_label_names.txt'));
  return makeDataset({
    name: opts.name ?? (dir ? `${dir} (${variant} ${split})` : files.join(', ')),
    size: total,
    channels: 3,
    height: 32,
    width: 32,
    images,
    labels,
    numClasses: maxLabel + 1,
    classNames: classNames && classNames.length === maxLabel + 1 ? classNames : undefined,
  });
}

export { isCifarFile };
