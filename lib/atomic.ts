// atomic.ts: writeFileAtomic(path, data): the file at `path` is either its old content or the new
// one, never a torn mix, even if the process dies mid-write: write a temporary file in the same
// folder, fsync it, rename it over the target, fsync the folder. Tested by test/model.test.ts.
import * as fs from 'fs';
import * as path from 'path';
import { MvebError } from './errors';

export async function writeFileAtomic(file: string, data: Uint8Array): Promise<void> {
  const abs = path.resolve(file);
  const dir = path.dirname(abs);
  const tmp = path.join(dir, `.${path.basename(abs)}.${process.pid}.${Date.now()}.${Math.random().toString(36).slice(2)}.tmp`);
  let handle: fs.promises.FileHandle | undefined;
  try {
    handle = await fs.promises.open(tmp, 'wx', 0o644);
    let offset = 0;
    while (offset < data.length) {
      const { bytesWritten } = await handle.write(data, offset, data.length - offset);
      offset += bytesWritten;
    }
    await handle.sync();
    await handle.close();
    handle = undefined;
    await fs.promises.rename(tmp, abs);
  } catch (e) {
    if (handle) await handle.close().catch(() => undefined);
    await fs.promises.unlink(tmp).catch(() => undefined);
    const err = e as NodeJS.ErrnoException;
    throw new MvebError('E_IO', `cannot write ${abs}: ${err.code ?? ''} ${err.message}`.trim());
  }
  // make the rename durable (best effort: not every platform can fsync a directory)
  try {
    const d = await fs.promises.open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    /* directory fsync unsupported */
  }
}
