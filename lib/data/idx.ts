// idx.ts: IDX files (MNIST, Fashion-MNIST), raw or gzip (detected by the gzip magic, not the name).
// IDX: two zero bytes, a type byte (0x08 = uint8), the number of dimensions, each dimension as a
// big-endian uint32, then the data. Every defect is an MvebError E_FORMAT naming the file and the
// byte offset (of the decompressed stream for .gz files). Tested by test/data.test.ts.
import * as fs from 'fs';
import * as zlib from 'zlib';
import { MvebError, checkOptions } from '../errors';
import { checkRegularFile } from '../files';
import { Dataset, makeDataset } from './dataset';

/** Reads a whole file, gunzipping it when it starts with the gzip magic (1f 8b). */
export function readMaybeGzip(file: string): Buffer {
  checkRegularFile(file);
  let raw: Buffer;
  try {
    raw = fs.readFileSync(file);
  } catch (e) {
    throw new MvebError('E_IO', `cannot read ${file}: ${(e as Error).message}`);
  }
  if (raw.length >= 2 && raw[0] === 0x1f && raw[1] === 0x8b) {
    // A gzip member ends with its uncompressed size mod 2^32 (ISIZE). Decompressing at most that many
    // bytes bounds what a hostile or corrupt file can make us allocate (a few KB of a "gzip bomb"
    // would otherwise inflate to Node's 4 GiB buffer limit before failing); an honest single-member
    // file, as IDX files are distributed, decompresses to exactly that size.
    const recorded = raw.length >= 18 ? raw.readUInt32LE(raw.length - 4) : 1;
    try {
      return zlib.gunzipSync(raw, { maxOutputLength: Math.max(1, recorded) });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE')
        throw new MvebError('E_FORMAT', `${file}: corrupt gzip data (it decompresses past the ${recorded} bytes its trailer records; multi-member gzip files are not supported)`);
      const msg = (e as Error).message;
      const where = /unexpected end/i.test(msg) ? `the compressed stream ends early at byte offset ${raw.length}` : msg;
      throw new MvebError('E_FORMAT', `${file}: corrupt gzip data (${where})`);
    }
  }
  return raw;
}

interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

function parseIdx(file: string, buf: Buffer, what: 'images' | 'labels'): IdxArray {
  const fail = (offset: number, msg: string): never => {
    throw new MvebError('E_FORMAT', `${file}: ${msg} (byte offset ${offset})`);
  };
  if (buf.length < 4) fail(buf.length, `truncated IDX header: expected at least 4 bytes, found ${buf.length}`);
  const magic = buf.readUInt32BE(0);
  const expectedMagic = what === 'images' ? '0x00000803 (or 0x00000804 with channels)' : '0x00000801';
  if (buf[0] !== 0 || buf[1] !== 0) fail(0, `bad IDX magic: expected ${expectedMagic} for ${what}, found 0x${magic.toString(16).padStart(8, '0')}`);
  if (buf[2] !== 0x08) fail(2, `unsupported IDX element type 0x${buf[2].toString(16)}: only 0x08 (uint8) is supported`);
  const ndims = buf[3];
  const okDims = what === 'images' ? ndims === 3 || ndims === 4 : ndims === 1;
  if (!okDims) fail(3, `bad IDX magic: expected ${expectedMagic} for ${what}, found 0x${magic.toString(16).padStart(8, '0')}`);
  const headerBytes = 4 + 4 * ndims;
  if (buf.length < headerBytes) fail(buf.length, `truncated IDX header: expected ${headerBytes} bytes, found ${buf.length}`);
  const dims: number[] = [];
  for (let d = 0; d < ndims; d++) {
    const v = buf.readUInt32BE(4 + 4 * d);
    if (v === 0 || v > 0x7fffffff) fail(4 + 4 * d, `dimension ${d} is ${v}`);
    dims.push(v);
  }
  const count = dims.reduce((a, b) => a * b, 1);
  const available = buf.length - headerBytes;
  if (available < count)
    fail(buf.length, `truncated: the header [${dims.join(', ')}] promises ${count} data bytes from offset ${headerBytes}, the data ends after ${available}`);
  if (available > count) fail(headerBytes + count, `${available - count} unexpected bytes after the data`);
  return { dims, data: new Uint8Array(buf.buffer, buf.byteOffset + headerBytes, count) };
}

/**
 * Loads IDX images ([N, H, W] or [N, H, W, C]) and optionally their labels ([N]). Both files may be
 * raw or gzip. Labels must be one per image.
 */
export function loadIdx(imagesPath: string, labelsPath?: string, opts: { name?: string; classNames?: string[]; mean?: number[]; std?: number[] } = {}): Dataset {
  opts = checkOptions(opts, 'loadIdx');
  const img = parseIdx(imagesPath, readMaybeGzip(imagesPath), 'images');
  const [n, h, w] = img.dims;
  const c = img.dims.length === 4 ? img.dims[3] : 1;
  if (c > 4) throw new MvebError('E_FORMAT', `${imagesPath}: ${c} channels; at most 4 are supported (byte offset 16)`);
  let labels: Int32Array | undefined;
  if (labelsPath !== undefined) {
    const lab = parseIdx(labelsPath, readMaybeGzip(labelsPath), 'labels');
    if (lab.dims[0] !== n)
      throw new MvebError('E_FORMAT', `${labelsPath}: ${lab.dims[0]} labels for the ${n} images of ${imagesPath} (byte offset 4)`);
    labels = Int32Array.from(lab.data);
  }
  return makeDataset({
    name: opts.name ?? imagesPath,
    size: n,
    channels: c,
    height: h,
    width: w,
    // a copy that owns exactly its bytes (the parsed view shares the decompressed buffer)
    images: img.data.slice(),
    labels,
    classNames: opts.classNames,
    mean: opts.mean,
    std: opts.std,
  });
}
