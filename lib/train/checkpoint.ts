// checkpoint.ts: the training checkpoint: one .safetensors file holding the online and target
// networks (backbone + projector state dicts, torchvision names under online.backbone.*,
// online.projector.*, target.backbone.*, target.projector.*), the optimiser momentum
// (optim.backbone.*, optim.projector.*) and, in the header metadata, the training state as JSON (step,
// epoch, loader seed, configuration, kNN history) plus a SHA-256 of every tensor's bytes.
// Written atomically by lib/safetensors.ts (temporary file, fsync, rename), so a process killed at
// any moment leaves the previous checkpoint loadable; a file that does not parse or whose checksum
// differs is refused with MvebError E_CHECKPOINT naming the file and the problem.
// Tested in test/train.test.ts (round trip, exact resume, corrupted and truncated files).
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { MvebError, check } from '../errors';
import { loadTensors, saveTensors } from '../safetensors';
import { Tensor } from '../tensor';

export const CHECKPOINT_FORMAT = 'mveb-checkpoint';

/** A checkpoint argument as an absolute file path: a run folder stands for its checkpoint.safetensors. */
export function resolveCheckpointPath(p: string): string {
  check(typeof p === 'string' && p.length > 0, 'E_ARG', () => `the checkpoint path must be a non-empty string, found ${String(p)}`);
  const abs = path.resolve(p);
  if (fs.existsSync(abs) && fs.statSync(abs).isDirectory()) return path.join(abs, 'checkpoint.safetensors');
  return abs;
}
export const CHECKPOINT_VERSION = 1;

export interface TrainingState {
  /** steps completed (the next step to run) */
  step: number;
  /** epoch the next step belongs to */
  epoch: number;
  /** configuration the run was started with (resolved options) */
  config: Record<string, unknown>;
  /** loader state: the loader is a pure function of (seed, epoch, step in epoch) */
  loader: { seed: number; epoch: number; stepInEpoch: number };
  skippedSteps: number;
  /** training seconds so far (excludes evaluation) */
  trainSeconds: number;
  imagesSeen: number;
  knnTop1RandomInit?: number;
  knnHistory: { epoch: number; step: number; knnTop1?: number; seconds: number }[];
  /** why this checkpoint was written: 'epoch' | 'final' | 'non-finite-loss' */
  reason: string;
}

function tensorBytes(t: Tensor): Buffer {
  const d = t.dataSync();
  return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
}

/** SHA-256 over the sorted names, shapes, dtypes and bytes. */
export function checksumTensors(tensors: Map<string, Tensor>): string {
  const h = createHash('sha256');
  for (const name of [...tensors.keys()].sort()) {
    const t = tensors.get(name)!;
    h.update(`${name}|${t.dtype}|${t.shape.join('x')}|`);
    h.update(tensorBytes(t));
  }
  return h.digest('hex');
}

/** Writes `tensors` + state to `path` atomically. */
export async function saveCheckpoint(path: string, tensors: Map<string, Tensor>, state: TrainingState): Promise<void> {
  const metadata: Record<string, string> = {
    format: CHECKPOINT_FORMAT,
    version: String(CHECKPOINT_VERSION),
    state: JSON.stringify(state),
    sha256: checksumTensors(tensors),
  };
  await saveTensors(path, tensors, metadata);
}

export interface LoadedCheckpoint {
  tensors: Map<string, Tensor>;
  state: TrainingState;
}

/** Reads and verifies a checkpoint; E_CHECKPOINT (never a crash) when it is missing, corrupt or not ours. */
export async function loadCheckpoint(path: string): Promise<LoadedCheckpoint> {
  if (!fs.existsSync(path)) throw new MvebError('E_CHECKPOINT', `checkpoint ${path} does not exist`);
  let loaded: { tensors: Map<string, Tensor>; metadata: Record<string, string> };
  try {
    loaded = await loadTensors(path);
  } catch (e) {
    const err = e as { code?: string; message?: string };
    throw new MvebError('E_CHECKPOINT', `checkpoint ${path} is corrupt or unreadable (${err.code ?? 'error'}: ${err.message ?? String(e)})`);
  }
  const disposeAll = () => loaded.tensors.forEach((t) => t.dispose());
  const md = loaded.metadata ?? {};
  if (md.format !== CHECKPOINT_FORMAT) {
    disposeAll();
    throw new MvebError('E_CHECKPOINT', `${path} is not an mveb training checkpoint (metadata format '${md.format ?? '(none)'}', expected '${CHECKPOINT_FORMAT}')`);
  }
  if (Number(md.version) !== CHECKPOINT_VERSION) {
    disposeAll();
    throw new MvebError('E_CHECKPOINT', `checkpoint ${path} has version ${md.version}, this mveb reads version ${CHECKPOINT_VERSION}`);
  }
  const sum = checksumTensors(loaded.tensors);
  if (sum !== md.sha256) {
    disposeAll();
    throw new MvebError('E_CHECKPOINT', `checkpoint ${path} is corrupted: SHA-256 of its tensors is ${sum.slice(0, 16)}..., the header says ${String(md.sha256).slice(0, 16)}...`);
  }
  let state: TrainingState;
  try {
    state = JSON.parse(md.state);
  } catch (e) {
    disposeAll();
    throw new MvebError('E_CHECKPOINT', `checkpoint ${path} has an unreadable training state (${(e as Error).message})`);
  }
  try {
    checkState(state);
  } catch (e) {
    disposeAll();
    throw new MvebError('E_CHECKPOINT', `checkpoint ${path} has an invalid training state: ${(e as Error).message}`);
  }
  return { tensors: loaded.tensors, state };
}

// The training state's fields, type by type (a state that parses but holds null, a negative step or
// a non-array history had failed later with TypeErrors, or resumed with a nonsense step count).
function checkState(s: unknown): void {
  const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  const fail = (what: string): never => {
    throw new Error(what);
  };
  if (!isObject(s)) return fail(`expected an object, found ${JSON.stringify(s)}`);
  const count = (o: Record<string, unknown>, k: string, integer: boolean) => {
    const v = o[k];
    if (!(typeof v === 'number' && v >= 0 && (integer ? Number.isSafeInteger(v) : Number.isFinite(v))))
      fail(`${k} must be a ${integer ? 'non-negative integer' : 'finite number >= 0'}, found ${JSON.stringify(v)}`);
  };
  for (const k of ['step', 'epoch', 'skippedSteps']) count(s, k, true);
  for (const k of ['trainSeconds', 'imagesSeen']) count(s, k, false);
  if (!isObject(s.config)) fail('config must be an object');
  if (!isObject(s.loader)) fail('loader must be an object');
  for (const k of ['seed', 'epoch', 'stepInEpoch']) count(s.loader as Record<string, unknown>, k, true);
  const r = s.knnTop1RandomInit;
  if (r !== undefined && r !== null && !(typeof r === 'number' && r >= 0 && r <= 1)) fail(`knnTop1RandomInit must be in [0, 1], found ${JSON.stringify(r)}`);
  if (!Array.isArray(s.knnHistory) || !s.knnHistory.every(isObject)) fail('knnHistory must be an array of records');
}

/** The tensors under `prefix` (prefix removed). */
export function withPrefix(tensors: Map<string, Tensor>, prefix: string): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [k, v] of tensors) if (k.startsWith(prefix)) out.set(k.slice(prefix.length), v);
  return out;
}
