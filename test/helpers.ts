// helpers.ts: assertions shared by the jest tests (not a test file itself).
import { MvebError } from '../lib';

/** Relative error ||a - b|| / ||b||; a non-finite value in a gives Infinity (NaN never passes). */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

function checkError(err: unknown, code: string, message?: RegExp): void {
  expect(err).toBeInstanceOf(MvebError);
  expect((err as MvebError).code).toBe(code);
  if (message) expect((err as MvebError).message).toMatch(message);
}

/** fn() throws an MvebError with `code` (and a message matching `message`). */
export function expectCode(fn: () => unknown, code: string, message?: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new Error(`expected an MvebError ${code}, nothing was thrown`);
  checkError(err, code, message);
}

/** The promise (or the function, called) rejects/throws with an MvebError with `code`. */
export async function expectReject(p: Promise<unknown> | (() => unknown), code: string, message?: RegExp): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? Promise.resolve().then(p) : p);
  } catch (e) {
    err = e;
  }
  if (err === undefined) throw new Error(`expected an MvebError ${code}, nothing was thrown`);
  checkError(err, code, message);
}
