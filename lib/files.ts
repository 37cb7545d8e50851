// files.ts: the file-system helpers that keep saved work whole and bad paths clear errors (E_IO).
// - writeFileAtomic(path, data): the file at `path` is either its old content or the new one, never a
//   torn mix, even if the process dies mid-write: write a temporary file in the same folder, fsync it,
//   rename it over the target, fsync the folder.
// - makeDirs(dir): mkdir -p that cannot hang.
// - checkRegularFile(path): before a whole-file read, so that a device or a folder is refused instead
//   of read forever (/dev/zero as a checkpoint hung `mveb eval`).
// Tested by test/model.test.ts.
import * as fs from 'fs';
import * as path from 'path';
import { MvebError } from './errors';

/** E_IO unless `file` is a regular file (following links). */
export function checkRegularFile(file: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    throw new MvebError('E_IO', `cannot read ${file}: ${(e as Error).message}`);
  }
  if (!st.isFile()) throw new MvebError('E_IO', `cannot read ${file}: not a regular file (${st.isDirectory() ? 'a folder' : 'a device or special file'})`);
}

/**
 * mkdir -p: `dir` and its missing parents, each made on its own. Node 20's recursive mkdir loops
 * forever where mkdir reports ENOENT for a child of a folder that exists (under /proc: `--out
 * /proc/x` hung the CLI); here any failure, or a non-folder in the way, is E_IO naming the path.
 */
export function makeDirs(dir: string): void {
  const abs = path.resolve(dir);
  const missing: string[] = [];
  for (let d = abs; !fs.existsSync(d) && path.dirname(d) !== d; d = path.dirname(d)) missing.push(d);
  for (const d of missing.reverse()) {
    try {
      fs.mkdirSync(d);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      if (err.code !== 'EEXIST') throw new MvebError('E_IO', `cannot create the folder ${d}: ${err.message}`);
    }
  }
  let isDir = false;
  try {
    isDir = fs.statSync(abs).isDirectory();
  } catch {
    // (a dangling symlink: not a folder)
  }
  if (!isDir) throw new MvebError('E_IO', `cannot create the folder ${abs}: something else is in the way`);
}

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
    throw new MvebError('E_IO', `cannot write ${abs}: ${err.message}`);
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
