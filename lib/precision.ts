// precision.ts: the float32 matrix-product precision of the CPU backend, as PyTorch's
// torch.set_float32_matmul_precision (native/cpu/cpu_backend.h MatmulPrecision, gemm_amx.cpp).
// MVEB_MATMUL_PRECISION sets the starting value; lib/native.ts refuses values other than 'highest'
// and 'high' at load. Tested by test/precision.test.ts.
import { check } from './errors';
import { native } from './native';
import type { DeviceName } from './tensor';

/** 'highest': IEEE fp32 products (the default); 'high': bf16x3 on the AMX tiles of CPUs that have them. */
export type MatmulPrecision = 'highest' | 'high';

/** The accepted values, in documentation order. */
export const MATMUL_PRECISIONS: readonly MatmulPrecision[] = ['highest', 'high'];

/**
 * Sets the precision of the CPU backend's float32 matrix products, like PyTorch's
 * `torch.set_float32_matmul_precision`: the products of the convolutions (forward, input and weight
 * gradients; Winograd F(4x4) keeps fp32 products) and of the projector's Linear layers. The vMF
 * entropy estimator of the loss always computes in fp32 (its Cholesky and solves would amplify the
 * error by the kernel matrix's condition number).
 *
 * - `'highest'` (the default): IEEE fp32 products everywhere, ~1e-7 relative error per product sum.
 * - `'high'`: on a CPU with Intel AMX (AMX-TILE, AMX-BF16 and AVX512-BF16, the AVX-512 kernels in use
 *   and the Linux kernel granting this process the tile state; see `backends().cpu.amx`), matrix
 *   products of at least ~4 MFLOP run on the AMX tiles in "bf16x3": each float is split into two
 *   bfloat16 (hi + lo, 16 significant bits) and a*b is computed as hi*lo + hi*hi + lo*hi with fp32
 *   accumulation. The relative error of a product sum is ~4e-6 (1024-deep dot product) instead of
 *   ~1e-7; results are no longer bitwise equal to `'highest'`. Smaller products, CPUs without AMX and
 *   the CUDA backend compute exactly what `'highest'` does.
 *
 * The setting is process-wide for this Node.js environment (each worker_thread has its own) and
 * applies to the products computed after the call; change it while no computation is in flight.
 * `MVEB_MATMUL_PRECISION=high` (or `highest`) in the environment sets the starting value; the CLI
 * takes `--matmul-precision`. Anything but `'highest'` or `'high'` is an `E_ARG` MvebError.
 */
export function setMatmulPrecision(precision: MatmulPrecision): void {
  check(
    MATMUL_PRECISIONS.includes(precision),
    'E_ARG',
    () => `matmul precision must be 'highest' (fp32, the default) or 'high' (bf16x3 on AMX CPUs), found ${describe(precision)}`,
  );
  native.setMatmulPrecision(precision);
}

/** The current CPU matmul precision ('highest' unless set by setMatmulPrecision or MVEB_MATMUL_PRECISION). */
export function getMatmulPrecision(): MatmulPrecision {
  return native.getMatmulPrecision() as MatmulPrecision;
}

function describe(v: unknown): string {
  if (typeof v === 'string') return `'${v}'`;
  if (v === undefined || v === null || typeof v === 'number' || typeof v === 'boolean') return String(v);
  return `a ${typeof v}`;
}

/**
 * One line for run logs: the precision and what it means for `device` here, e.g.
 * "highest (fp32)", "high (bf16x3 on AMX)", "high (no AMX on this CPU: fp32)" (internal).
 */
export function matmulPrecisionSummary(device: DeviceName = 'cpu'): string {
  const p = getMatmulPrecision();
  if (p === 'highest') return 'highest (fp32)';
  if (device === 'cuda') return 'high (CPU-only setting: the CUDA products stay fp32)';
  return native.backends().cpu.amx ? 'high (bf16x3 on AMX)' : 'high (no AMX on this CPU: fp32)';
}
