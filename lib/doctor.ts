// doctor.ts: backends() (what was compiled and what can run here) and the `mveb doctor` report.
// Tested by test/doctor.test.ts.
import * as fs from 'fs';
import * as path from 'path';
import { native, packageRoot } from './native';
import type { MatmulPrecision } from './precision';

export interface CpuInfo {
  available: true;
  brand: string;
  /** the kernel path in use: 'avx512' | 'avx2' | 'scalar' (MVEB_ISA can lower it) */
  isa: string;
  threads: number;
  avx512: boolean;
  avx2: boolean;
  fma: boolean;
  avx512bf16: boolean;
  avx512vnni: boolean;
  /** the AMX bf16x3 SGEMM of matmul precision 'high' can run here: AMX-TILE, AMX-BF16 and AVX512-BF16,
   * the AVX-512 kernels in use and the Linux kernel granting the tile state */
  amx: boolean;
  /** the current matmul precision (setMatmulPrecision, MVEB_MATMUL_PRECISION) */
  matmulPrecision: MatmulPrecision;
}

export interface CudaInfo {
  compiled: boolean;
  available: boolean;
  /** why CUDA cannot be used here (absent when available) */
  reason?: string;
  arch?: string;
  driverVersion?: number;
  runtimeVersion?: number;
  deviceCount?: number;
  device?: string;
  computeCapability?: string;
  totalMemory?: number;
  freeMemory?: number;
}

export interface Backends {
  cpu: CpuInfo;
  cuda: CudaInfo;
}

/** What this build of mveb can run on: CPU features and threads, CUDA compiled/available and why not. */
export function backends(): Backends {
  return native.backends();
}

function packageVersion(): string {
  return JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')).version;
}

const cudaVersion = (v?: number) => (v ? `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}` : 'none');

/** The lines `mveb doctor` prints. */
export function doctorReport(): { ok: boolean; lines: string[]; backends: Backends } {
  const b = backends();
  const yes = (x: boolean) => (x ? 'yes' : 'no');
  const lines = [
    `mveb ${packageVersion()}  node ${process.version}  ${process.platform}-${process.arch}`,
    `addon: ${native.__path}`,
    `CPU: ok  ${b.cpu.brand || 'unknown CPU'}`,
    `  kernels: ${b.cpu.isa}  threads: ${b.cpu.threads} (MVEB_NUM_THREADS to change)`,
    `  AVX-512: ${yes(b.cpu.avx512)}  AVX2: ${yes(b.cpu.avx2)}  FMA: ${yes(b.cpu.fma)}  AVX512-BF16: ${yes(b.cpu.avx512bf16)}  AVX512-VNNI: ${yes(b.cpu.avx512vnni)}`,
    `  matmul precision: ${b.cpu.matmulPrecision} (AMX: ${b.cpu.amx ? 'available' : 'not available'}${
      b.cpu.matmulPrecision === 'high' && !b.cpu.amx ? ', so fp32 as with highest' : ''
    }; MVEB_MATMUL_PRECISION=highest|high to change)`,
  ];
  const c = b.cuda;
  if (!c.compiled) {
    lines.push(`CUDA: ${c.reason ?? 'not compiled'}`);
  } else if (!c.available) {
    lines.push(`CUDA: compiled for sm_${c.arch}; NOT AVAILABLE: ${c.reason}`);
    lines.push(`  driver: ${cudaVersion(c.driverVersion)}  runtime: ${cudaVersion(c.runtimeVersion)}`);
  } else {
    lines.push(`CUDA: ok  compiled for sm_${c.arch}`);
    lines.push(`  driver: ${cudaVersion(c.driverVersion)}  runtime: ${cudaVersion(c.runtimeVersion)}  devices: ${c.deviceCount}`);
    lines.push(
      `  device 0: ${c.device}  compute capability ${c.computeCapability}  memory ${((c.totalMemory ?? 0) / 2 ** 30).toFixed(1)} GiB ` +
        `(${((c.freeMemory ?? 0) / 2 ** 30).toFixed(1)} GiB free)`,
    );
  }
  return { ok: b.cpu.available, lines, backends: b };
}
