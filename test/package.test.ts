// package.test.ts: what `npm install mveb` gets. The packed tarball (npm pack, files in package.json)
// must hold what the install script builds from, and its CMake project must configure without the
// repository's tests: an unconditional native test executable with no sources (test/native is not
// packed) made every install of the package fail. Configures with plain cmake (no build: the suite's
// own build covers compiling). Without cmake, the install script must fall back to node-gyp (checked
// with its --dry-run on a PATH that holds only node; a real fallback install into a fresh app took 34 s,
// RESULTS.md).
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const root = path.resolve(__dirname, '..');

describe('the npm package', () => {
  let tmp: string;
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'mveb-pack-'));
  });
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  test('the packed files configure with CMake and hold the built JS, the native sources and the data', () => {
    // --ignore-scripts: dist/ is already built by the suite's tsc step (prepare would rebuild it)
    const pack = spawnSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tmp], { cwd: root, encoding: 'utf8' });
    expect(pack.status).toBe(0);
    const [info] = JSON.parse(pack.stdout) as { filename: string; files: { path: string }[] }[];
    const files = new Set(info.files.map((f) => f.path));
    for (const f of ['package.json', 'CMakeLists.txt', 'binding.gyp', 'scripts/build-native.js', 'native/sources.js', 'dist/index.js', 'dist/index.d.ts', 'dist/cli.js'])
      expect({ f, packed: files.has(f) }).toEqual({ f, packed: true });
    expect([...files].some((f) => f.startsWith('data/'))).toBe(true);
    expect([...files].some((f) => f.startsWith('test/'))).toBe(false);
    const unpack = spawnSync('tar', ['-xzf', path.join(tmp, info.filename), '-C', tmp]);
    expect(unpack.status).toBe(0);
    const pkg = path.join(tmp, 'package');
    const cmake = spawnSync('cmake', ['-S', pkg, '-B', path.join(tmp, 'build'), '-DMVEB_CUDA=off'], { encoding: 'utf8' });
    expect({ status: cmake.status, stderr: cmake.stderr }).toEqual({ status: 0, stderr: '' });
  });

  test('without cmake on PATH the install script builds the CPU-only addon with node-gyp, and says so', () => {
    const bin = path.join(tmp, 'bin-node-only');
    fs.mkdirSync(bin);
    fs.symlinkSync(process.execPath, path.join(bin, 'node'));
    const script = path.join(root, 'scripts', 'build-native.js');
    const run = (env: Record<string, string>) =>
      spawnSync(process.execPath, [script, '--dry-run'], { encoding: 'utf8', env: { ...process.env, PATH: bin, MVEB_CUDA: 'auto', MVEB_BUILD: 'auto', ...env } });
    const gyp = run({});
    expect(gyp.status).toBe(0);
    expect(gyp.stdout).toMatch(/no cmake on PATH: building the CPU-only addon with node-gyp/);
    expect(gyp.stdout).toMatch(/would run: node \S*node-gyp\S* rebuild/);
    expect(gyp.stdout).not.toMatch(/cmake-js/);
    const cuda = run({ MVEB_CUDA: 'on' });
    expect(cuda.status).toBe(1);
    expect(cuda.stderr).toMatch(/MVEB_CUDA=on needs the cmake-js build.*no cmake was found on PATH/);
    const forced = run({ MVEB_BUILD: 'cmake' });
    expect(forced.status).toBe(1);
    expect(forced.stderr).toMatch(/MVEB_BUILD=cmake but no cmake was found on PATH/);
    // with cmake where it is (the suite's own PATH): cmake-js, as before
    const normal = spawnSync(process.execPath, [script, '--dry-run'], { encoding: 'utf8', env: { ...process.env, MVEB_CUDA: 'off', MVEB_BUILD: 'auto' } });
    expect(normal.status).toBe(0);
    expect(normal.stdout).toMatch(/would run: node \S*cmake-js configure/);
  });
});
