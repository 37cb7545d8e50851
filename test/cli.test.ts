// cli.test.ts: the `mveb` command line in process: --help shows defaults, every kind of bad option is
// refused with a message naming it, and a tiny pretrain -> eval knn -> eval linear -> export round
// trip prints JSON summaries. Run: MVEB_ADDON_PATH=/tmp/addon-train/Release/mveb.node npx jest test/cli.test.ts
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { CommanderError } from 'commander';
import { spawn, spawnSync } from 'child_process';
import { buildProgram, DEFAULTS } from '../lib/cli';
import { resolveDevice } from '../lib/train/device';
import { backends } from '../lib/doctor';
import { getMatmulPrecision } from '../lib/precision';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mveb-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs the CLI in process; returns stdout, stderr and the commander error (if any). */
async function cli(...args: string[]): Promise<{ out: string; err: string; error?: CommanderError; exit?: number }> {
  let out = '', err = '';
  const write = jest.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => ((out += String(s)), true));
  const writeErr = jest.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => ((err += String(s)), true));
  const exit = jest.spyOn(process, 'exit').mockImplementation(((code?: number) => {
    throw Object.assign(new Error(`exit ${code}`), { exitCode: code });
  }) as never);
  try {
    await buildProgram((p) => p.exitOverride().configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (err += s) })).parseAsync(['node', 'mveb', ...args]);
    return { out, err };
  } catch (e) {
    if (e instanceof CommanderError) return { out, err, error: e };
    const code = (e as { exitCode?: number }).exitCode;
    if (code !== undefined) return { out, err, exit: code };
    throw e;
  } finally {
    write.mockRestore();
    writeErr.mockRestore();
    exit.mockRestore();
  }
}

describe('cli: help and validation', () => {
  test('--help of every command shows the defaults', async () => {
    const top = await cli('--help');
    for (const c of ['pretrain', 'eval', 'export', 'doctor']) expect(top.out).toContain(c);
    const p = await cli('pretrain', '--help');
    expect(p.out).toContain('--epochs <n>');
    expect(p.out).toContain('(default: 4)');
    expect(p.out).toContain('(default: 64)');
    expect(p.out).toContain('(default: "auto")');
    expect(p.out).toContain('--resume');
    expect(p.out).toContain('--matmul-precision <p>');
    const k = await cli('eval', 'knn', '--help');
    expect(k.out).toContain('(default: 200)');
    expect(k.out).toContain('--matmul-precision <p>');
    const l = await cli('eval', 'linear', '--help');
    expect(l.out).toContain('(default: 90)');
    expect(l.out).toContain('--matmul-precision <p>');
    const x = await cli('export', '--help');
    expect(x.out).toContain('--checkpoint <path>');
  });

  test.each([
    [['pretrain', '--epochs', '0'], '--epochs'],
    [['pretrain', '--epochs', 'ten'], '--epochs'],
    [['pretrain', '--batch-size', '1'], '--batch-size'],
    [['pretrain', '--width', '-0.5'], '--width'],
    [['pretrain', '--lr', 'NaN'], '--lr'],
    [['pretrain', '--device', 'tpu'], '--device'],
    [['pretrain', '--optimizer', 'adam'], '--optimizer'],
    [['pretrain', '--arch', 'vgg16'], '--arch'],
    [['pretrain', '--local-crops', '2.5'], '--local-crops'],
    [['pretrain', '--global-scale', '0,1'], '--global-scale'],
    [['pretrain', '--global-scale', '0.8,0.5'], '--global-scale'],
    [['pretrain', '--local-scale', '0.1'], '--local-scale'],
    [['pretrain', '--no-such-option'], 'no-such-option'],
    [['pretrain', '--matmul-precision', 'medium'], '--matmul-precision'],
    [['pretrain', '--matmul-precision', 'HIGH'], '--matmul-precision'],
    [['eval', 'knn', '--checkpoint', 'x', '--matmul-precision', 'fp32'], '--matmul-precision'],
    [['eval', 'linear', '--checkpoint', 'x', '--matmul-precision', ''], '--matmul-precision'],
    [['eval', 'knn'], '--checkpoint'],
    [['eval', 'knn', '--checkpoint', 'x', '--k', '0'], '--k'],
    [['eval', 'linear', '--checkpoint', 'x', '--epochs', '-3'], '--epochs'],
    [['export', '--checkpoint', 'x'], '--out'],
  ])('%j is refused naming %s', async (args, name) => {
    const r = await cli(...(args as string[]));
    expect(r.error).toBeDefined();
    expect(r.error!.exitCode).not.toBe(0);
    expect(r.err).toContain(name);
  });

  test('a missing checkpoint is an E_CHECKPOINT error with --json error line', async () => {
    const r = await cli('eval', 'knn', '--checkpoint', path.join(tmp, 'nope.safetensors'), '--json');
    expect(r.exit).toBe(1);
    expect(r.err).toContain('[E_CHECKPOINT]');
    expect(JSON.parse(r.out.trim().split('\n').pop()!).error.code).toBe('E_CHECKPOINT');
  });

  test('the CLI defaults are the library defaults', () => {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { PRETRAIN_DEFAULTS } = require('../lib/train/pretrain');
    for (const [k, v] of Object.entries(DEFAULTS)) expect([k, PRETRAIN_DEFAULTS[k]]).toEqual([k, v]);
  });

  test('--device auto says which device and why', () => {
    const r = resolveDevice('auto');
    expect(r.device).toBe(backends().cuda.available ? 'cuda' : 'cpu');
    expect(r.reason).toMatch(/auto: CUDA is (not )?available/);
    if (!backends().cuda.available) expect(() => resolveDevice('cuda')).toThrow(/CUDA is not usable/);
  });

  test('an invalid MVEB_MATMUL_PRECISION, MVEB_NUM_THREADS or MVEB_ISA is an E_ARG error naming it', () => {
    const script = `
      const fs = require('fs'), ts = require('typescript');
      require.extensions['.ts'] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, 'utf8'),
        { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true } }).outputText, f);
      require('./lib/cli').buildProgram().parseAsync(process.argv);`;
    // (the native side fell back to its defaults on these: fp32, all cores, the best ISA)
    for (const [name, value] of [['MVEB_MATMUL_PRECISION', 'hihg'], ['MVEB_NUM_THREADS', 'four'], ['MVEB_NUM_THREADS', '0'],
      ['MVEB_NUM_THREADS', '2000'], ['MVEB_ISA', 'avx-512']]) {
      const env: NodeJS.ProcessEnv = { ...process.env, MVEB_NUM_THREADS: undefined, MVEB_ISA: undefined, MVEB_MATMUL_PRECISION: undefined };
      env[name] = value;
      const r = spawnSync(process.execPath, ['-e', script, 'mveb', 'doctor', '--json'], {
        cwd: path.resolve(__dirname, '..'), env, encoding: 'utf8', timeout: 60000,
      });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`[E_ARG] ${name}`);
      expect(r.stderr).toContain(`found '${value}'`);
      expect(JSON.parse(r.stdout.trim().split('\n').pop()!).error.code).toBe('E_ARG');
    }
  });

  test('doctor --json', async () => {
    const r = await cli('doctor', '--json');
    const j = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(j.backends.cpu.available).toBe(true);
    expect(j.device.device).toBeDefined();
  });
});

describe('cli: pretrain -> eval -> export', () => {
  const out = path.join(tmp, 'run');
  test('tiny run prints a JSON summary last', async () => {
    const r = await cli('pretrain', '--width', '0.0625', '--projector-dim', '32', '--batch-size', '32', '--train-images', '96',
      '--epochs', '1', '--knn-every', '0', '--no-final-knn', '--device', 'cpu', '--out', out, '--optimizer', 'sgd', '--lr', '0.3', '--json');
    expect(r.exit).toBeUndefined();
    const s = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(s.steps).toBe(3);
    expect(s.epochs).toBe(1);
    for (const k of ['seconds', 'imagesPerSecond', 'knnTop1', 'knnTop1RandomInit', 'checkpoint', 'report']) expect(k in s).toBe(true);
    expect(fs.existsSync(s.checkpoint)).toBe(true);
    expect(r.err).toContain('device: cpu');
    expect(s.matmulPrecision).toBe(getMatmulPrecision());
    expect(r.err).toContain(`matmul precision: ${s.matmulPrecision}`);
  });
  test('eval knn and linear on the checkpoint', async () => {
    // an explicit --matmul-precision is applied (and sets MVEB_MATMUL_PRECISION for the addon; restored after)
    const env = process.env.MVEB_MATMUL_PRECISION;
    let k;
    try {
      k = await cli('eval', 'knn', '--checkpoint', out, '--train-images', '300', '--test-images', '100', '--device', 'cpu', '--matmul-precision', 'high', '--json');
    } finally {
      if (env === undefined) delete process.env.MVEB_MATMUL_PRECISION;
      else process.env.MVEB_MATMUL_PRECISION = env;
    }
    const kj = JSON.parse(k.out.trim().split('\n').pop()!);
    expect(kj.matmulPrecision).toBe('high');
    expect(k.err).toContain(`matmul precision: high (${backends().cpu.amx ? 'bf16x3 on AMX' : 'no AMX on this CPU: fp32'})`);
    expect(kj.top1).toBeGreaterThan(0.1); // 10 classes: better than chance even for a barely trained net
    expect(kj.top5).toBeGreaterThanOrEqual(kj.top1);
    expect(kj.testCount).toBe(100);
    const l = await cli('eval', 'linear', '--checkpoint', out, '--train-images', '300', '--test-images', '100', '--epochs', '5', '--device', 'cpu', '--json');
    const lj = JSON.parse(l.out.trim().split('\n').pop()!);
    expect(lj.matmulPrecision).toBe(process.env.MVEB_MATMUL_PRECISION === 'high' ? 'high' : 'highest'); // the default again
    expect(lj.top1).toBeGreaterThan(0.1);
    expect(lj.mode).toBe('linear');
  });
  test('export writes torchvision names without fc', async () => {
    const file = path.join(tmp, 'backbone.safetensors');
    const r = await cli('export', '--checkpoint', out, '--out', file, '--json');
    const j = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(j.path).toBe(file);
    const bytes = fs.readFileSync(file);
    const headerLen = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8'));
    expect(header['conv1.weight']).toBeDefined();
    expect(header['layer4.1.bn2.running_var']).toBeDefined();
    expect(Object.keys(header).some((k) => k.startsWith('fc.'))).toBe(false);
  });
});

describe('cli: interrupt and resume', () => {
  test('SIGINT writes a resumable checkpoint; --resume keeps the checkpoint configuration', async () => {
    const out = path.join(tmp, 'sig');
    const script = `
      const fs = require('fs'), ts = require('typescript');
      require.extensions['.ts'] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, 'utf8'),
        { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true } }).outputText, f);
      require('./lib/cli').buildProgram().parseAsync(process.argv);`;
    const child = spawn(process.execPath, ['-e', script, 'mveb', 'pretrain', '--width', '0.0625', '--projector-dim', '32', '--batch-size', '32',
      '--train-images', '1024', '--epochs', '2', '--knn-every', '0', '--no-final-knn', '--device', 'cpu', '--out', out, '--progress', 'log', '--json'],
      { cwd: path.resolve(__dirname, '..'), env: process.env });
    let stdout = '', stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      if (/step \d+\//.test(stderr) && !child.killed) child.kill('SIGINT'); // by this child's pid
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(0);
    expect(stderr).toContain('SIGINT: stopping after this step');
    const first = JSON.parse(stdout.trim().split('\n').pop()!);
    expect(first.steps).toBeGreaterThanOrEqual(1);
    expect(first.steps).toBeLessThan(64);
    const r = await cli('pretrain', '--resume', '--out', out, '--no-final-knn', '--json');
    const s = JSON.parse(r.out.trim().split('\n').pop()!);
    expect(s.steps).toBe(64); // 2 epochs x 32 steps from the checkpoint, not the default 4 epochs
    expect(s.epochs).toBe(2);
    expect(r.err).toContain(`at step ${first.steps}`);
  });
});
