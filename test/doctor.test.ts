// doctor.test.ts: backends() and the doctor report name the CPU features and why CUDA can or cannot run.
import { backends, doctorReport } from '../lib';

test('backends() reports the CPU backend and the CUDA state with a reason', () => {
  const b = backends();
  expect(b.cpu.available).toBe(true);
  expect(['avx512', 'avx2', 'scalar']).toContain(b.cpu.isa);
  expect(b.cpu.threads).toBeGreaterThanOrEqual(1);
  for (const k of ['avx512', 'avx2', 'fma', 'avx512bf16', 'amx'] as const) expect(typeof b.cpu[k]).toBe('boolean');
  expect(['highest', 'high']).toContain(b.cpu.matmulPrecision);
  expect(typeof b.cuda.compiled).toBe('boolean');
  if (!b.cuda.available) expect(b.cuda.reason).toMatch(/\w+/);
  if (b.cuda.compiled) expect(b.cuda.arch).toMatch(/\d/);
});

test('doctorReport() prints CPU ok and a CUDA line', () => {
  const r = doctorReport();
  expect(r.ok).toBe(true);
  const text = r.lines.join('\n');
  expect(text).toMatch(/^mveb \d+\.\d+\.\d+ {2}node v\d+/);
  expect(text).toMatch(/CPU: ok/);
  expect(text).toMatch(/AVX-512: (yes|no) {2}AVX2: (yes|no) {2}FMA: (yes|no) {2}AVX512-BF16: (yes|no)/);
  expect(text).toContain(`matmul precision: ${r.backends.cpu.matmulPrecision} (AMX: ${r.backends.cpu.amx ? 'available' : 'not available'}`);
  expect(text).toMatch(/CUDA: /);
  if (!r.backends.cuda.available) expect(text).toContain(r.backends.cuda.reason as string);
});
