// progress.ts: how a training run reports itself. A live cli-progress bar on a terminal (epoch,
// step, loss, alignment, width tau, lr, img/s, ETA), plain log lines otherwise (every `logEvery`
// steps and at each epoch end), a JSONL file with every step's metrics, and the onProgress
// callback. Tested through test/train.test.ts (the JSONL content) and test/cli.test.ts (log lines).
import * as fs from 'fs';
import { SingleBar } from 'cli-progress';
import type { StepRecord } from './report';

export type ProgressMode = 'auto' | 'bar' | 'log' | 'none';

/** What onProgress receives. */
export type ProgressEvent =
  | ({ type: 'step'; totalSteps: number; etaSeconds: number } & StepRecord)
  | { type: 'epoch'; epoch: number; epochs: number; step: number; knnTop1?: number; seconds: number }
  | { type: 'message'; message: string };

export interface ReporterOptions {
  mode: ProgressMode;
  totalSteps: number;
  epochs: number;
  jsonlPath?: string;
  logEvery?: number;
  stream?: NodeJS.WriteStream;
  onProgress?: (e: ProgressEvent) => void;
}

const num = (v: number, digits = 4) => (Number.isFinite(v) ? v.toFixed(digits) : String(v));

function duration(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : m ? `${m}m${String(sec).padStart(2, '0')}s` : `${sec}s`;
}

export class ProgressReporter {
  private bar: SingleBar | null = null;
  private readonly mode: 'bar' | 'log' | 'none';
  private readonly stream: NodeJS.WriteStream;
  private jsonl: number | null = null;
  private lastLog = 0;

  constructor(private readonly o: ReporterOptions) {
    this.stream = o.stream ?? process.stderr;
    this.mode = o.mode === 'auto' ? (this.stream.isTTY ? 'bar' : 'log') : o.mode;
    if (o.jsonlPath) this.jsonl = fs.openSync(o.jsonlPath, 'a');
  }

  message(text: string): void {
    this.o.onProgress?.({ type: 'message', message: text });
    if (this.mode === 'none') return;
    if (this.bar) {
      // cli-progress redraws the bar on its own line; print above it
      this.stream.write(`\r\x1b[K${text}\n`);
    } else {
      this.stream.write(`${text}\n`);
    }
  }

  step(r: StepRecord, etaSeconds: number): void {
    if (this.jsonl !== null) fs.writeSync(this.jsonl, JSON.stringify({ type: 'step', ...r }) + '\n');
    this.o.onProgress?.({ type: 'step', totalSteps: this.o.totalSteps, etaSeconds, ...r });
    const payload = {
      epochText: `${r.epoch + 1}/${this.o.epochs}`,
      loss: num(r.loss),
      align: num(r.alignment),
      tau: num(r.tau, 3),
      lr: r.lr.toExponential(2),
      ips: r.imagesPerSecond.toFixed(1),
      etaText: duration(etaSeconds),
    };
    if (this.mode === 'bar') {
      if (!this.bar) {
        this.bar = new SingleBar(
          {
            format:
              'epoch {epochText} |{bar}| step {value}/{total} loss {loss} align {align} tau {tau} lr {lr} {ips} img/s ETA {etaText}',
            barsize: 20,
            stream: this.stream,
            hideCursor: true,
            clearOnComplete: false,
            etaBuffer: 50,
          },
        );
        this.bar.start(this.o.totalSteps, r.step, payload);
      }
      this.bar.update(r.step + 1, payload);
    } else if (this.mode === 'log') {
      const every = this.o.logEvery ?? 10;
      const now = Date.now();
      if ((r.step + 1) % every === 0 || r.step === 0 || r.step + 1 === this.o.totalSteps || now - this.lastLog > 30000) {
        this.lastLog = now;
        this.stream.write(
          `epoch ${payload.epochText} step ${r.step + 1}/${this.o.totalSteps} loss ${payload.loss} alignment ${payload.align} ` +
            `tau ${payload.tau} lr ${payload.lr} ${payload.ips} img/s ETA ${payload.etaText}${r.skipped ? ' (step skipped: non-finite gradients)' : ''}\n`,
        );
      }
    }
  }

  epoch(e: { epoch: number; step: number; knnTop1?: number; seconds: number }): void {
    if (this.jsonl !== null) fs.writeSync(this.jsonl, JSON.stringify({ type: 'epoch', ...e }) + '\n');
    this.o.onProgress?.({ type: 'epoch', epochs: this.o.epochs, ...e });
    const knn = e.knnTop1 !== undefined ? ` kNN top-1 (monitor subset) ${(100 * e.knnTop1).toFixed(2)}%` : '';
    this.message(`epoch ${e.epoch + 1}/${this.o.epochs} done at step ${e.step} (${duration(e.seconds)} elapsed)${knn}`);
  }

  close(): void {
    if (this.bar) {
      this.bar.stop();
      this.bar = null;
    }
    if (this.jsonl !== null) {
      fs.closeSync(this.jsonl);
      this.jsonl = null;
    }
  }
}

/** Reads the records of a metrics.jsonl file (ignores a torn last line). */
export function readMetrics(path: string): { steps: StepRecord[]; epochs: { epoch: number; step: number; knnTop1?: number; seconds: number }[] } {
  const steps: StepRecord[] = [], epochs: { epoch: number; step: number; knnTop1?: number; seconds: number }[] = [];
  if (!fs.existsSync(path)) return { steps, epochs };
  for (const line of fs.readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let r: { type?: string } & Record<string, unknown>;
    try {
      r = JSON.parse(line);
    } catch {
      continue;
    }
    if (r.type === 'step') steps.push(r as unknown as StepRecord);
    else if (r.type === 'epoch') epochs.push(r as unknown as { epoch: number; step: number; knnTop1?: number; seconds: number });
  }
  return { steps, epochs };
}

/** Keeps only the records before `step` (used on resume, so a killed run's extra steps are not duplicated). */
export function truncateMetrics(path: string, step: number): void {
  if (!fs.existsSync(path)) return;
  const keep: string[] = [];
  for (const line of fs.readFileSync(path, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      const r = JSON.parse(line) as { type?: string; step?: number };
      if (r.type === 'step' && (r.step ?? 0) < step) keep.push(line);
      else if (r.type === 'epoch' && (r.step ?? 0) <= step) keep.push(line);
    } catch {
      /* torn line from a killed run */
    }
  }
  fs.writeFileSync(path, keep.length ? keep.join('\n') + '\n' : '');
}
