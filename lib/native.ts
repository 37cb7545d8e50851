// native.ts: loads the compiled addon (build/Release/mveb.node, built by `npm install` through
// cmake-js or by `npx node-gyp rebuild`; MVEB_ADDON_PATH overrides the path) and registers MvebError
// with it; refuses an invalid MVEB_MATMUL_PRECISION first. Every other module reaches native code
// through `native` exported here.
import * as fs from 'fs';
import * as path from 'path';
import { MvebError } from './errors';

/** Opaque native tensor handle (see native/binding/tensor_binding.cpp). */
export interface TensorHandle {
  dispose(): void;
  readonly disposed: boolean;
}

// The addon is an untyped object; each lib module declares the functions it uses via NativeAddon.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type NativeAddon = Record<string, any>;

/** The package root (works from lib/ under ts-jest and from dist/ after tsc). */
export const packageRoot: string = (() => {
  let dir = __dirname;
  for (let i = 0; i < 5; i++) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'native'))) return dir;
    dir = path.dirname(dir);
  }
  return path.resolve(__dirname, '..');
})();

// The native CPU backend reads MVEB_MATMUL_PRECISION, MVEB_NUM_THREADS and MVEB_ISA when the addon
// loads and falls back to its defaults on anything it does not recognise (fp32, all cores, the best
// ISA); such values are refused here instead, so a typo never silently means the default.
function checkEnvironment(): void {
  const env = process.env;
  const refuse = (name: string, want: string, found: string): never => {
    throw new MvebError('E_ARG', `${name} must be ${want}, found '${found}'`);
  };
  const p = env.MVEB_MATMUL_PRECISION;
  if (p !== undefined && p !== 'highest' && p !== 'high')
    refuse('MVEB_MATMUL_PRECISION', "'highest' (fp32, the default) or 'high' (bf16x3 on AMX CPUs)", p);
  const t = env.MVEB_NUM_THREADS;
  if (t !== undefined && !(/^[0-9]+$/.test(t) && Number(t) >= 1 && Number(t) <= 1024))
    refuse('MVEB_NUM_THREADS', 'an integer from 1 to 1024 (unset: all cores)', t);
  const isa = env.MVEB_ISA;
  if (isa !== undefined && !['avx512', 'avx2', 'scalar'].includes(isa))
    refuse('MVEB_ISA', "'avx512', 'avx2' or 'scalar' (unset: the best this CPU has)", isa);
}

function loadAddon(): NativeAddon {
  checkEnvironment();
  const candidates = process.env.MVEB_ADDON_PATH
    ? [path.resolve(process.env.MVEB_ADDON_PATH)]
    : [path.join(packageRoot, 'build', 'Release', 'mveb.node'), path.join(packageRoot, 'build', 'Debug', 'mveb.node')];
  const found = candidates.find((p) => fs.existsSync(p));
  if (!found) {
    throw new MvebError(
      'E_INTERNAL',
      `the mveb native addon is not built (looked for ${candidates.join(', ')}). Run \`npm install\` ` +
        '(or `npm run build:native`) in the package folder; see the README for build switches.',
    );
  }
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const addon = require(found) as NativeAddon;
  addon.setErrorClass(MvebError);
  addon.__path = found;
  return addon;
}

export const native: NativeAddon = loadAddon();
