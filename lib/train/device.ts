// device.ts: `--device auto` resolution. auto picks CUDA when this build has it and a device is
// usable, the CPU otherwise, and says which and why. Tested in test/cli.test.ts.
import { MvebError } from '../errors';
import { backends } from '../doctor';
import type { DeviceName } from '../tensor';

export type DeviceChoice = 'auto' | DeviceName;

export function resolveDevice(requested: DeviceChoice = 'auto'): { device: DeviceName; reason: string } {
  const cuda = backends().cuda;
  if (requested === 'cpu') return { device: 'cpu', reason: 'cpu requested' };
  if (requested === 'cuda') {
    if (!cuda.available) {
      throw new MvebError('E_DEVICE', `--device cuda requested but CUDA is not usable: ${cuda.reason ?? 'unknown reason'} (use --device cpu or auto)`);
    }
    return { device: 'cuda', reason: `cuda requested (${cuda.device ?? 'GPU'})` };
  }
  if (requested !== 'auto') throw new MvebError('E_ARG', `device must be 'auto', 'cpu' or 'cuda', found '${String(requested)}'`);
  if (cuda.available) return { device: 'cuda', reason: `auto: CUDA is available (${cuda.device ?? 'GPU'})` };
  return { device: 'cpu', reason: `auto: CUDA is not available (${cuda.reason ?? (cuda.compiled ? 'no usable device' : 'not compiled into this build')}), using the CPU` };
}
