// folder.ts: an image folder, decoded and resized with sharp. Labelled: one subfolder per class
// (classes sorted by name, like torchvision's ImageFolder); unlabelled: images directly in the folder.
// JPEG, PNG and WebP (by extension); every image is resized to size x size (fit 'cover': scaled so
// the shorter side fits, centre-cropped) and converted to RGB (or one channel). An image that fails
// to decode is reported through onWarning (default console.warn) and skipped.
// Tested by test/data.test.ts.
import { constants as bufferConstants } from 'buffer';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { MvebError, check, checkOptions } from '../errors';
import { Dataset, makeDataset } from './dataset';

export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.webp'];
const isImage = (f: string) => IMAGE_EXTENSIONS.includes(path.extname(f).toLowerCase());

export interface ImageFolderOptions {
  /** output size: a number (square) or [height, width]; default: the first image's size */
  size?: number | [number, number];
  /** 3 (RGB, default) or 1 (grayscale) */
  channels?: 1 | 3;
  /** 'cover' (default: fill and centre-crop) or 'fill' (stretch) */
  fit?: 'cover' | 'fill';
  /** how many images are decoded at once (default 4) */
  concurrency?: number;
  /** receives a message for every image that is skipped (default console.warn) */
  onWarning?: (message: string) => void;
  name?: string;
}

// What a folder entry is, following symbolic links (a class folder or an image may be a link, as in
// datasets assembled from another's files); only links cost a stat.
function entryKind(dir: string, e: fs.Dirent): 'file' | 'dir' | 'other' {
  if (e.isFile()) return 'file';
  if (e.isDirectory()) return 'dir';
  if (!e.isSymbolicLink()) return 'other';  // devices, pipes, sockets: never read
  try {
    const st = fs.statSync(path.join(dir, e.name));
    return st.isFile() ? 'file' : st.isDirectory() ? 'dir' : 'other';
  } catch {
    return 'other';  // a dangling link
  }
}

function readEntries(dir: string): fs.Dirent[] {
  try {
    return fs.readdirSync(dir, { withFileTypes: true });
  } catch (e) {
    throw new MvebError('E_IO', `cannot read the image folder ${dir}: ${(e as Error).message}`);
  }
}

// The image files of a folder (regular files or links to them, image extensions), sorted by name.
function imagesIn(dir: string, entries: fs.Dirent[] = readEntries(dir)): string[] {
  return entries
    .filter((e) => isImage(e.name) && entryKind(dir, e) === 'file')
    .map((e) => e.name)
    .sort();
}

/** Finds the images of a folder: per-class subfolders, or a flat unlabelled folder. */
export function listImageFolder(dir: string): { files: string[]; labels?: number[]; classNames?: string[] } {
  const entries = readEntries(dir);
  const classes = entries
    .filter((e) => !e.name.startsWith('.') && entryKind(dir, e) === 'dir')
    .map((e) => e.name)
    .sort()
    .map((name) => ({ name, images: imagesIn(path.join(dir, name)) }))
    .filter((c) => c.images.length > 0);
  if (classes.length > 0) {
    const files: string[] = [], labels: number[] = [];
    classes.forEach((c, k) => {
      for (const f of c.images) {
        files.push(path.join(dir, c.name, f));
        labels.push(k);
      }
    });
    return { files, labels, classNames: classes.map((c) => c.name) };
  }
  return { files: imagesIn(dir, entries).map((f) => path.join(dir, f)) };
}

/** Loads an image folder into memory (all images resized to one size). */
export async function loadImageFolder(dir: string, opts: ImageFolderOptions = {}): Promise<Dataset> {
  opts = checkOptions(opts, 'loadImageFolder');
  // sharp is loaded lazily: its native library is only needed for image folders
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const sharp = require('sharp') as typeof import('sharp').default;
  const channels = opts.channels ?? 3;
  check(channels === 1 || channels === 3, 'E_ARG', `loadImageFolder: channels must be 1 or 3, found ${channels}`);
  const warn = opts.onWarning ?? ((m: string) => console.warn(m));
  const listing = listImageFolder(dir);
  check(listing.files.length > 0, 'E_IO', `${dir}: no images found (${IMAGE_EXTENSIONS.join(', ')}), neither in class subfolders nor directly`);
  let height: number, width: number;
  if (opts.size !== undefined) {
    [height, width] = typeof opts.size === 'number' ? [opts.size, opts.size] : opts.size;
    check(Number.isInteger(height) && Number.isInteger(width) && height >= 1 && width >= 1 && height <= 8192 && width <= 8192,
      'E_ARG', `loadImageFolder: size must be positive integers up to 8192, found ${String(opts.size)}`);
  } else {
    let found: { h: number; w: number } | undefined;
    for (const f of listing.files) {
      try {
        const m = await sharp(f).metadata();
        if (m.width && m.height) {
          found = { h: m.height, w: m.width };
          break;
        }
      } catch {
        // reported below when it is decoded
      }
    }
    if (!found) throw new MvebError('E_FORMAT', `${dir}: none of the ${listing.files.length} images could be decoded`);
    [height, width] = [found.h, found.w];
  }
  const per = height * width * channels;
  // checked before decoding anything: the decoded images and their concatenation are held together
  // (a size the images did not fit failed after decoding them all, with a RangeError)
  const bytes = listing.files.length * per;
  check(
    bytes <= bufferConstants.MAX_LENGTH && 2 * bytes <= os.totalmem(),
    'E_MEMORY',
    () => `loadImageFolder: ${listing.files.length} images of ${width}x${height}x${channels} need ${(bytes / 2 ** 30).toFixed(1)} GiB ` +
      `(twice that while loading; this machine has ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, one array holds at most ` +
      `${(bufferConstants.MAX_LENGTH / 2 ** 30).toFixed(1)} GiB): pass a smaller size`,
  );
  const decoded: (Uint8Array | null)[] = new Array(listing.files.length).fill(null);
  const concurrency = Math.max(1, opts.concurrency ?? 4);
  let next = 0;
  const work = async () => {
    for (let i; (i = next++) < listing.files.length; ) {
      const file = listing.files[i];
      try {
        let img = sharp(file).rotate().resize(width, height, { fit: opts.fit ?? 'cover', kernel: 'cubic' }).removeAlpha();
        img = channels === 1 ? img.grayscale() : img.toColourspace('srgb');
        const { data, info } = await img.raw().toBuffer({ resolveWithObject: true });
        if (info.channels !== channels || data.length !== per)
          throw new Error(`decoded to ${info.width}x${info.height}x${info.channels}, expected ${width}x${height}x${channels}`);
        decoded[i] = new Uint8Array(data.buffer, data.byteOffset, data.length);
      } catch (e) {
        warn(`mveb: skipping ${file}: ${(e as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, listing.files.length) }, work));
  const kept = decoded.map((d, i) => (d ? i : -1)).filter((i) => i >= 0);
  check(kept.length > 0, 'E_FORMAT', `${dir}: none of the ${listing.files.length} images could be decoded`);
  const images = new Uint8Array(kept.length * per);
  kept.forEach((i, k) => images.set(decoded[i]!, k * per));
  return makeDataset({
    name: opts.name ?? dir,
    size: kept.length,
    channels,
    height,
    width,
    images,
    labels: listing.labels ? Int32Array.from(kept, (i) => listing.labels![i]) : undefined,
    numClasses: listing.classNames?.length,
    classNames: listing.classNames,
  });
}
