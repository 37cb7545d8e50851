// errors.ts: MvebError, the one error type of the library. `code` is stable (documented in the
// README): E_ARG, E_SHAPE, E_DTYPE, E_DEVICE, E_DISPOSED, E_FORMAT, E_IO, E_NUMERIC, E_UNSUPPORTED,
// E_CUDA, E_MEMORY, E_CHECKPOINT, E_STATE, E_INTERNAL. The native addon constructs this same class
// (registered at load time in native.ts), so `err instanceof MvebError` holds for native errors too.

export type MvebErrorCode =
  | 'E_ARG'
  | 'E_SHAPE'
  | 'E_DTYPE'
  | 'E_DEVICE'
  | 'E_DISPOSED'
  | 'E_FORMAT'
  | 'E_IO'
  | 'E_NUMERIC'
  | 'E_UNSUPPORTED'
  | 'E_CUDA'
  | 'E_MEMORY'
  | 'E_CHECKPOINT'
  | 'E_STATE'
  | 'E_INTERNAL'
  | (string & {});

export class MvebError extends Error {
  readonly code: MvebErrorCode;
  constructor(code: MvebErrorCode, message: string) {
    super(message);
    this.name = 'MvebError';
    this.code = code;
  }
}

/** Throws an MvebError with `code` unless `cond` holds. */
export function check(cond: unknown, code: MvebErrorCode, message: string | (() => string)): asserts cond {
  if (!cond) throw new MvebError(code, typeof message === 'function' ? message() : message);
}

/** A boolean option: `fallback` when undefined, E_ARG naming `what` for anything but a boolean (a
 * string such as 'false' would otherwise be taken as true). */
export function checkBoolean(value: unknown, fallback: boolean, what: string): boolean {
  const v = value ?? fallback;
  check(typeof v === 'boolean', 'E_ARG', () => `${what} must be a boolean, found ${typeof v === 'string' ? `'${v}'` : String(v)}`);
  return v;
}

/**
 * An options argument: undefined gives {}; anything but a plain object (null, a number, a string, an
 * array) is refused with E_ARG naming `what`, instead of a TypeError from reading its fields.
 */
export function checkOptions<T extends object>(opts: T | undefined, what: string): T {
  if (opts === undefined) return {} as T;
  check(
    opts !== null && typeof opts === 'object' && !Array.isArray(opts),
    'E_ARG',
    () => `${what}: options must be an object, found ${opts === null ? 'null' : Array.isArray(opts) ? 'an array' : typeof opts}`,
  );
  return opts;
}
