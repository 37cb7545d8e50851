// precision.test.ts: setMatmulPrecision / getMatmulPrecision (lib/precision.ts, native/binding
// tensor_binding.cpp): the default, the round trip, E_ARG for anything but 'highest' / 'high' (the
// function, the native binding and MVEB_MATMUL_PRECISION at load, the latter in child processes),
// backends().cpu.amx / matmulPrecision, and the numbers: a projector forward (Linear layers on the
// general GEMM, every product >= 4 MFLOP) at 'high' matches 'highest' within 1e-4 relative and, where
// AMX is usable, differs from it bitwise (the AMX path ran); without AMX 'high' is bitwise 'highest'.
import * as path from 'path';
import { spawnSync } from 'child_process';
import { Model, Tensor, backends, getMatmulPrecision, setMatmulPrecision, MatmulPrecision } from '../lib';
import { native } from '../lib/native';
import { expectCode, relError } from './helpers';

const root = path.resolve(__dirname, '..');
const initial = getMatmulPrecision();
afterEach(() => setMatmulPrecision(initial));

/** Runs `body` (CommonJS, lib/*.ts requirable) in a fresh node process with `env` over this one's; the
 * last stdout line parsed as JSON. */
function child(body: string, env: Record<string, string | undefined>): { status: number | null; out: unknown; stderr: string } {
  const script = `
    const fs = require('fs'), ts = require('typescript');
    require.extensions['.ts'] = (m, f) => m._compile(ts.transpileModule(fs.readFileSync(f, 'utf8'),
      { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true } }).outputText, f);
    (async () => { ${body} })().catch((e) => { console.log(JSON.stringify({ thrown: { name: e.name, code: e.code, message: e.message } })); });`;
  const fullEnv: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined) delete fullEnv[k];
    else fullEnv[k] = v;
  }
  const r = spawnSync(process.execPath, ['-e', script], { cwd: root, env: fullEnv, encoding: 'utf8', timeout: 60000 });
  const last = (r.stdout ?? '').trim().split('\n').pop() ?? '';
  let out: unknown = undefined;
  try {
    out = JSON.parse(last);
  } catch {
    /* reported through the expectation below */
  }
  return { status: r.status, out, stderr: r.stderr ?? '' };
}

describe('matmul precision setting', () => {
  test("the default is 'highest' (MVEB_MATMUL_PRECISION=high aside)", () => {
    expect(initial).toBe(process.env.MVEB_MATMUL_PRECISION === 'high' ? 'high' : 'highest');
    const r = child(`const p = require('./lib/precision'); console.log(JSON.stringify(p.getMatmulPrecision()));`, { MVEB_MATMUL_PRECISION: undefined });
    expect(r.out).toBe('highest');
  });

  test('set / get round trip, mirrored by backends().cpu.matmulPrecision', () => {
    for (const p of ['high', 'highest', 'high', 'highest'] as MatmulPrecision[]) {
      setMatmulPrecision(p);
      expect(getMatmulPrecision()).toBe(p);
      expect(backends().cpu.matmulPrecision).toBe(p);
    }
  });

  test('anything else is E_ARG naming the accepted values, and changes nothing', () => {
    setMatmulPrecision('high');
    for (const bad of ['medium', 'HIGH', 'Highest', ' high', '', 'fp32', undefined, null, 1, true, {}]) {
      expectCode(() => setMatmulPrecision(bad as MatmulPrecision), 'E_ARG', /'highest'.*'high'/);
      expect(getMatmulPrecision()).toBe('high');
    }
    expectCode(() => setMatmulPrecision('medium' as MatmulPrecision), 'E_ARG', /found 'medium'/);
    // the native binding checks on its own too
    for (const bad of ['medium', 'HIGH', '', 3, undefined]) {
      expectCode(() => native.setMatmulPrecision(bad), 'E_ARG', /'highest'.*'high'/);
      expect(native.getMatmulPrecision()).toBe('high');
    }
  });

  test('backends().cpu.amx is a boolean (and false below the AVX-512 kernels)', () => {
    const c = backends().cpu;
    expect(typeof c.amx).toBe('boolean');
    if (c.amx) expect(c.isa).toBe('avx512');
  });

  test('MVEB_MATMUL_PRECISION: high and highest are taken at load, anything else is E_ARG naming the variable', () => {
    const show = `const { backends } = require('./lib/doctor'); const p = require('./lib/precision');
      console.log(JSON.stringify({ get: p.getMatmulPrecision(), backends: backends().cpu.matmulPrecision }));`;
    expect(child(show, { MVEB_MATMUL_PRECISION: 'high' }).out).toEqual({ get: 'high', backends: 'high' });
    expect(child(show, { MVEB_MATMUL_PRECISION: 'highest' }).out).toEqual({ get: 'highest', backends: 'highest' });
    for (const bad of ['medium', 'HIGH', '']) {
      const r = child(show, { MVEB_MATMUL_PRECISION: bad });
      const thrown = (r.out as { thrown?: { name: string; code: string; message: string } }).thrown;
      expect(thrown).toBeDefined();
      expect(thrown!.name).toBe('MvebError');
      expect(thrown!.code).toBe('E_ARG');
      expect(thrown!.message).toContain('MVEB_MATMUL_PRECISION');
      expect(thrown!.message).toMatch(/'highest'.*'high'/);
      expect(thrown!.message).toContain(`found '${bad}'`);
    }
  });
});

describe('matmul precision numerics', () => {
  // batch 256 x 512 -> 512 -> 512 -> 512: each Linear is 2 * 256 * 512 * 512 = 134 MFLOP (>= 4 MFLOP)
  const N = 256, D = 512;
  async function projectorOut(p: MatmulPrecision): Promise<Float32Array> {
    setMatmulPrecision(p);
    const proj = Model.projector({ inDim: D, hiddenDim: D, outDim: D, seed: 3 });
    const x = Tensor.randn([N, D], { seed: 11 });
    try {
      const y = await proj.forward(x, { train: false });
      const v = (await y.data()) as Float32Array;
      y.dispose();
      return v;
    } finally {
      x.dispose();
      proj.dispose();
    }
  }
  const identical = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

  test("a projector forward at 'high' matches 'highest' within 1e-4; with AMX it is not bitwise the same", async () => {
    const ref = await projectorOut('highest');
    const again = await projectorOut('highest');
    expect(identical(ref, again)).toBe(true); // deterministic, so a bitwise difference below means another path
    const high = await projectorOut('high');
    const err = relError(high, ref);
    expect(err).toBeLessThan(1e-4);
    if (backends().cpu.amx) {
      expect(identical(high, ref)).toBe(false);
      expect(err).toBeGreaterThan(0);
    } else {
      expect(identical(high, ref)).toBe(true);
    }
  });

  test("without AMX (MVEB_ISA=avx2) 'high' computes exactly what 'highest' does", () => {
    const r = child(
      `const { Model, Tensor, backends, setMatmulPrecision } = require('./lib');
      const run = async (p) => {
        setMatmulPrecision(p);
        const proj = Model.projector({ inDim: ${D}, hiddenDim: ${D}, outDim: ${D}, seed: 3 });
        const x = Tensor.randn([${N}, ${D}], { seed: 11 });
        const y = await proj.forward(x, { train: false });
        const v = await y.data();
        y.dispose(); x.dispose(); proj.dispose();
        return v;
      };
      const a = await run('highest'), b = await run('high');
      console.log(JSON.stringify({ amx: backends().cpu.amx, isa: backends().cpu.isa, same: a.every((v, i) => Object.is(v, b[i])) }));`,
      { MVEB_ISA: 'avx2', MVEB_MATMUL_PRECISION: undefined },
    );
    const out = r.out as { amx: boolean; same: boolean; isa: string };
    expect(out).toBeDefined();
    expect(out.amx).toBe(false);
    expect(out.same).toBe(true);
  });
});
