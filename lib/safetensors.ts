// safetensors.ts: saveTensors / loadTensors for any named tensors (checkpoints, exports) in the
// safetensors format. Encoding and the hardened parsing run natively off the JS thread
// (native/core/safetensors.cpp: malformed, truncated or hostile files give MvebError E_FORMAT /
// E_DTYPE, never a crash); writes are atomic (lib/files.ts). Int32 tensors named
// *.num_batches_tracked are written as I64 like torchvision's; I64 reads back as int32, F64/F16/BF16
// as float32. Tested by test/model.test.ts.
import * as fs from 'fs';
import { checkRegularFile, writeFileAtomic } from './files';
import { MvebError, check, checkOptions } from './errors';
import { native, TensorHandle } from './native';
import { Tensor, DeviceName } from './tensor';

export interface LoadedTensors {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

function checkMetadata(metadata: unknown): Record<string, string> {
  if (metadata === undefined || metadata === null) return {};
  check(typeof metadata === 'object' && !Array.isArray(metadata), 'E_ARG', 'metadata must be an object of strings');
  for (const [k, v] of Object.entries(metadata as Record<string, unknown>)) {
    check(typeof v === 'string', 'E_ARG', () => `metadata value of '${k}' must be a string, found ${typeof v}`);
  }
  return metadata as Record<string, string>;
}

/** Encodes named tensors as safetensors bytes. */
export async function encodeTensors(tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): Promise<Buffer> {
  check(tensors instanceof Map, 'E_ARG', 'tensors must be a Map<string, Tensor>');
  const names: string[] = [];
  const handles: TensorHandle[] = [];
  for (const [name, t] of tensors) {
    check(typeof name === 'string' && name.length > 0, 'E_ARG', 'tensor names must be non-empty strings');
    check(t instanceof Tensor, 'E_ARG', () => `'${name}' is not a Tensor`);
    names.push(name);
    handles.push(t._handle());
  }
  return native.safetensorsEncode(names, handles, checkMetadata(metadata));
}

/** Decodes safetensors bytes into tensors on `device` (default cpu). */
export async function decodeTensors(bytes: Uint8Array, opts: { device?: DeviceName } = {}): Promise<LoadedTensors> {
  opts = checkOptions(opts, 'decodeTensors');
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const r = await native.safetensorsDecode(buf, opts.device ?? 'cpu');
  const tensors = new Map<string, Tensor>();
  (r.names as string[]).forEach((n, i) => tensors.set(n, Tensor._wrap(r.tensors[i])));
  return { tensors, metadata: r.metadata as Record<string, string> };
}

/** Writes `tensors` (and string metadata) to `path` as safetensors, atomically. */
export async function saveTensors(path: string, tensors: Map<string, Tensor>, metadata: Record<string, string> = {}): Promise<void> {
  check(typeof path === 'string' && path.length > 0, 'E_ARG', 'path must be a non-empty string');
  const bytes = await encodeTensors(tensors, metadata);
  await writeFileAtomic(path, bytes);
}

/** Reads a safetensors file. E_IO when it cannot be read, E_FORMAT when it is malformed. */
export async function loadTensors(path: string, opts: { device?: DeviceName } = {}): Promise<LoadedTensors> {
  opts = checkOptions(opts, 'loadTensors');
  check(typeof path === 'string' && path.length > 0, 'E_ARG', 'path must be a non-empty string');
  checkRegularFile(path);
  let bytes: Buffer;
  try {
    bytes = await fs.promises.readFile(path);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new MvebError('E_IO', `cannot read ${path}: ${err.message}`);
  }
  try {
    return await decodeTensors(bytes, opts);
  } catch (e) {
    const err = e as MvebError;
    if (err && typeof err.code === 'string' && err.code !== 'E_INTERNAL') {
      throw new MvebError(err.code, `${path}: ${err.message}`);
    }
    throw e;
  }
}
