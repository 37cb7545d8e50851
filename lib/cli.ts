#!/usr/bin/env node
// cli.ts: the `mveb` command line (commander): pretrain, eval knn|linear, export, doctor.
// Every option is validated here with a message naming the option, the expected form and what was
// given; library errors print as `mveb: error [CODE] message` and exit 1. --json prints one JSON
// object as the last line of stdout (human-readable lines go to stderr in that mode).
// `--threads N` sets MVEB_NUM_THREADS before the native addon loads (modules load lazily for that).
// `--matmul-precision highest|high` (pretrain, eval) defaults to MVEB_MATMUL_PRECISION (else highest);
// given explicitly it also sets that variable before the addon loads, and it is applied with
// setMatmulPrecision before any work. It is a speed/precision setting, not recorded in checkpoints.
// Tested in test/cli.test.ts (help, validation, a tiny pretrain + eval + export round trip).
import { Command, InvalidArgumentError, Option } from 'commander';
import * as path from 'path';
import { MAX_LOCAL_CROPS, PRETRAIN_DEFAULTS } from './train/defaults';

type Lib = {
  pretrain: typeof import('./train/pretrain');
  evaluate: typeof import('./train/evaluate');
  doctor: typeof import('./doctor');
  device: typeof import('./train/device');
  precision: typeof import('./precision');
};

function lib(threads?: number): Lib {
  if (threads !== undefined) process.env.MVEB_NUM_THREADS = String(threads);
  /* eslint-disable @typescript-eslint/no-var-requires */
  return {
    pretrain: require('./train/pretrain'),
    evaluate: require('./train/evaluate'),
    doctor: require('./doctor'),
    device: require('./train/device'),
    precision: require('./precision'),
  };
}

/** lib(threads) with --matmul-precision applied: an explicit flag also sets MVEB_MATMUL_PRECISION
 * first (it wins over an invalid value there, which native.ts refuses otherwise). */
function libWithPrecision(o: { threads?: number; matmulPrecision: 'highest' | 'high' }, cmd: Command): Lib {
  if (cmd.getOptionValueSource('matmulPrecision') === 'cli') process.env.MVEB_MATMUL_PRECISION = o.matmulPrecision;
  const l = lib(o.threads);
  l.precision.setMatmulPrecision(o.matmulPrecision);
  return l;
}

// The pretrain defaults for the options' defaults (lib/train/defaults.ts: no native dependency, so
// reading them loads no addon before --threads is known).
export const DEFAULTS = PRETRAIN_DEFAULTS;

// ---- option parsers (commander calls them with the raw string; errors name the option) ----
const int = (min: number, max = Number.MAX_SAFE_INTEGER) => (v: string) => {
  const n = Number(v);
  if (!/^[+]?\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < min || n > max)
    throw new InvalidArgumentError(`expected an integer in [${min}, ${max === Number.MAX_SAFE_INTEGER ? '...' : max}], got '${v}'.`);
  return n;
};
const float = (min: number, max = Infinity, strictMin = false) => (v: string) => {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || (strictMin ? n <= min : n < min) || n > max)
    throw new InvalidArgumentError(`expected a number ${strictMin ? '>' : '>='} ${min}${max !== Infinity ? ` and <= ${max}` : ''}, got '${v}'.`);
  return n;
};
const scaleRange = (v: string): [number, number] => {
  const m = /^\s*([0-9.eE+-]+)\s*,\s*([0-9.eE+-]+)\s*$/.exec(v);
  const a = m ? Number(m[1]) : NaN, b = m ? Number(m[2]) : NaN;
  if (!(a > 0 && a <= b && b <= 1)) throw new InvalidArgumentError(`expected 'min,max' with 0 < min <= max <= 1, got '${v}'.`);
  return [a, b];
};
const choice = (...allowed: string[]) => (v: string) => {
  if (!allowed.includes(v)) throw new InvalidArgumentError(`expected one of ${allowed.join(', ')}, got '${v}'.`);
  return v;
};
// --matmul-precision; its default is MVEB_MATMUL_PRECISION when that is valid (an invalid value is
// refused with E_ARG when the addon loads).
const matmulPrecisionOption = () => {
  const env = process.env.MVEB_MATMUL_PRECISION;
  const fromEnv = env === 'high' || env === 'highest';
  return new Option(
    '--matmul-precision <p>',
    'CPU float32 matmul precision: highest (fp32) or high (bf16x3 on the AMX tiles of CPUs that have them: faster, ' +
      '~4e-6 relative error per product instead of ~1e-7; fp32 without AMX and on CUDA)',
  )
    .argParser(choice('highest', 'high'))
    .default(fromEnv ? env : 'highest', fromEnv ? `${env}, from MVEB_MATMUL_PRECISION` : 'highest, or MVEB_MATMUL_PRECISION');
};
const depthOf = (v: string) => {
  const m = /^(?:resnet)?(18|34|50)$/i.exec(v.trim());
  if (!m) throw new InvalidArgumentError(`expected resnet18, resnet34 or resnet50 (or 18, 34, 50), got '${v}'.`);
  return Number(m[1]) as 18 | 34 | 50;
};

interface Io {
  json: boolean;
  log: (s: string) => void;
}
function io(json: boolean): Io {
  return { json, log: (s: string) => (json ? process.stderr : process.stdout).write(s + '\n') };
}

function fail(e: unknown, json: boolean): never {
  const err = e as { code?: string; message?: string };
  const code = err.code ?? 'E_INTERNAL';
  process.stderr.write(`mveb: error [${code}] ${err.message ?? String(e)}\n`);
  if (json) process.stdout.write(JSON.stringify({ error: { code, message: err.message ?? String(e) } }) + '\n');
  process.exit(1);
}

const pct = (v: number | null | undefined) => (v === null || v === undefined ? 'n/a' : `${(100 * v).toFixed(2)}%`);

/** The program; `configure` runs before any subcommand is added (tests: exitOverride, configureOutput). */
export function buildProgram(configure?: (program: Command) => void): Command {
  const program = new Command();
  const D = DEFAULTS;
  configure?.(program);
  program
    .name('mveb')
    .description('MVEB (Multi-View Entropy Bottleneck) self-supervised pretraining and evaluation')
    .version(require('../package.json').version)
    .showHelpAfterError('(run with --help for usage)')
    .configureHelp({ showGlobalOptions: true });

  // ---------------- pretrain ----------------
  program
    .command('pretrain')
    .description(
      'pretrain a ResNet with MVEB on unlabelled images. With no arguments: the built-in Fashion-MNIST, ' +
        'ResNet-18 (CIFAR stem) at width x0.125, 10,000 images, 4 epochs, batch 64, LARS lr 32, lambda 0.003 ' +
        '(about a minute on 2 CPU cores); prints kNN top-1 of the learned backbone next to the same network ' +
        'at random initialisation. Official ImageNet recipe: --arch resnet50 --stem imagenet --batch-size 4096 ' +
        '--lr 0.3 --lambda 0.01 --epochs 800 --local-crops 6.',
    )
    .option('--data <dir>', "training data: 'fashion-mnist' (built in), an IDX folder, a CIFAR binary folder or an image folder", 'fashion-mnist')
    .option('--test-data <dir>', 'labelled evaluation data (default: the test split of --data)')
    .addOption(new Option('--arch <name>', 'backbone: resnet18, resnet34 or resnet50').default(18, 'resnet18').argParser(depthOf))
    .addOption(new Option('--depth <n>', 'same as --arch with a number (18, 34, 50)').argParser(depthOf))
    .addOption(new Option('--stem <kind>', 'ResNet stem').choices(['cifar', 'imagenet']).default('cifar'))
    .option('--width <x>', 'ResNet width multiplier (stage widths 64x, 128x, 256x, 512x)', float(0, 4, true), D.width)
    .option('--projector-dim <n>', 'projector hidden and output dimension', int(1, 65536), D.projectorDim)
    .option('--epochs <n>', 'training epochs', int(1, 100000), D.epochs)
    .option('--batch-size <n>', 'images per step', int(2, 1 << 20), D.batchSize)
    .option('--lr <x>', 'base learning rate (max lr = lr x batch/256)', float(0, Infinity, true), D.lr)
    .addOption(new Option('--optimizer <kind>', 'optimiser').choices(['lars', 'sgd']).default('lars'))
    .option('--weight-decay <x>', 'weight decay (LARS: not on biases and BN parameters)', float(0), 1e-6)
    .option('--warmup-epochs <x>', 'linear warm-up in epochs (default min(10, epochs/10))', float(0))
    .option('--base-momentum <m>', 'EMA momentum m0 of the target (cosine to 1)', float(0, 1), 0.996)
    .option('--lambda <x>', 'weight of the entropy term (official 0.01)', float(0), D.lambda)
    .option('--local-crops <n>', 'local crops per image besides the two global views', int(0, MAX_LOCAL_CROPS), 0)
    .option('--global-scale <min,max>', 'area range of the global RandomResizedCrops', scaleRange, D.globalScale)
    .option('--local-scale <min,max>', 'area range of the local crops', scaleRange, D.localScale)
    .option('--train-images <n>', 'use a seeded random subset of this many training images (0 = all)', int(0), D.trainImages)
    .option('--device <name>', 'auto (CUDA when available, else CPU), cpu or cuda', choice('auto', 'cpu', 'cuda'), 'auto')
    .option('--out <dir>', 'run folder (checkpoint, metrics.jsonl, report.html)', path.join('runs', 'default'))
    .option('--resume [checkpoint]', 'continue from <out>/checkpoint.safetensors or the given checkpoint/run folder')
    .option('--overwrite', 'start a new run in an --out folder that already holds a checkpoint (refused otherwise)', false)
    .option('--seed <n>', 'random seed (initialisation, subsets, augmentation)', int(0, 2 ** 31), 0)
    .option('--threads <n>', 'CPU threads (default: all cores; fixes MVEB_NUM_THREADS)', int(1, 1024))
    .option('--no-side-by-side', 'run the views one after the other on all CPU threads, not side by side one thread each')
    .addOption(matmulPrecisionOption())
    .option('--knn-every <n>', 'kNN monitor every n epochs on a subset (0 = never)', int(0), 1)
    .option('--knn-bank <n>', 'memory bank size of the final kNN (0 = all training images)', int(0), 0)
    .option('--no-final-knn', 'skip the final kNN on the full test set (and the random-init baseline)')
    .option('--max-steps <n>', 'stop (with a resumable checkpoint) after this many steps in total', int(1))
    .addOption(new Option('--progress <mode>', 'progress display').choices(['auto', 'bar', 'log', 'none']).default('auto'))
    .option('--json', 'print the summary as JSON on the last line of stdout', false)
    .action(async (o, cmd: Command) => {
      const out = io(o.json);
      try {
        if (o.resume) {
          // resuming: the checkpoint's configuration applies unless an option is given explicitly
          for (const key of Object.keys(o)) if (cmd.getOptionValueSource(key) === 'default' && !['json', 'progress', 'device', 'out', 'finalKnn', 'matmulPrecision'].includes(key)) o[key] = undefined;
        }
        const l = libWithPrecision(o, cmd);
        const summary = await l.pretrain.pretrain({
          data: o.data,
          testData: o.testData,
          depth: o.depth ?? o.arch,
          stem: o.stem,
          width: o.width,
          projectorDim: o.projectorDim,
          epochs: o.epochs,
          batchSize: o.batchSize,
          lr: o.lr,
          optimizer: o.optimizer,
          weightDecay: o.weightDecay,
          warmupEpochs: o.warmupEpochs,
          localCrops: o.localCrops,
          globalScale: o.globalScale,
          localScale: o.localScale,
          baseMomentum: o.baseMomentum,
          lambda: o.lambda,
          trainImages: o.trainImages,
          device: o.device,
          out: o.out,
          resume: o.resume,
          overwrite: o.overwrite,
          seed: o.seed,
          threads: o.threads,
          sideBySide: o.sideBySide === false ? false : undefined,
          knnEvery: o.knnEvery,
          knnBank: o.knnBank,
          finalKnn: o.finalKnn,
          randomInitKnn: o.finalKnn,
          maxSteps: o.maxSteps,
          progress: o.json && o.progress === 'auto' ? 'log' : o.progress,
          handleSignals: true,
        });
        const epochs = Number.isInteger(summary.epochs) ? String(summary.epochs) : summary.epochs.toFixed(2);
        out.log(`pretrained ${summary.steps} steps (${epochs} epochs) in ${summary.seconds.toFixed(1)} s, ${summary.imagesPerSecond.toFixed(1)} img/s on ${summary.device}`);
        if (summary.knnTop1 !== null)
          out.log(`kNN top-1 (k=200, t=0.1) on the test set: learned ${pct(summary.knnTop1)}  vs  random init ${pct(summary.knnTop1RandomInit)}`);
        out.log(`checkpoint: ${summary.checkpoint}`);
        out.log(`report: ${summary.report}`);
        if (o.json) process.stdout.write(JSON.stringify(summary) + '\n');
      } catch (e) {
        fail(e, o.json);
      }
    });

  // ---------------- eval ----------------
  const evalCmd = program.command('eval').description('evaluate a pretrained backbone (kNN or linear probe)');
  const common = (c: Command) =>
    c
      .requiredOption('--checkpoint <path>', 'training checkpoint (a file or a run folder)')
      .option('--data <dir>', 'labelled data (default: the data the checkpoint was trained on)')
      .option('--train-images <n>', 'training images for the bank / probe (0 = all)', int(0), 0)
      .option('--test-images <n>', 'test images (0 = all)', int(0), 0)
      .option('--target', 'use the momentum (target) backbone instead of the online one', false)
      .option('--device <name>', 'auto, cpu or cuda', choice('auto', 'cpu', 'cuda'), 'auto')
      .option('--threads <n>', 'CPU threads', int(1, 1024))
      .addOption(matmulPrecisionOption())
      .option('--json', 'print the result as JSON on the last line of stdout', false);
  common(evalCmd.command('knn').description('weighted kNN (official monitor): L2-normalised backbone features, top-k votes exp(sim/t)'))
    .option('--k <n>', 'neighbours', int(1, 100000), 200)
    .option('--temperature <t>', 'vote temperature', float(0, Infinity, true), 0.1)
    .action(async (o, cmd: Command) => {
      const out = io(o.json);
      try {
        const l = libWithPrecision(o, cmd);
        const r = await l.evaluate.evaluateCheckpoint(o.checkpoint, {
          mode: 'knn', data: o.data, trainImages: o.trainImages, testImages: o.testImages, target: o.target,
          device: o.device, k: o.k, temperature: o.temperature, log: out.log,
        });
        out.log(`kNN top-1 ${pct(r.top1)}${r.top5 !== undefined ? `  top-5 ${pct(r.top5)}` : ''} (${r.testCount} test images, bank ${r.trainCount})`);
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
      } catch (e) {
        fail(e, o.json);
      }
    });
  common(evalCmd.command('linear').description('linear probe on frozen features: SGD (or LARC) + cosine, top-1 and top-5'))
    .option('--epochs <n>', 'probe epochs', int(1, 100000), 90)
    .option('--batch-size <n>', 'probe batch size', int(1, 1 << 20), 256)
    .option('--lr <x>', 'base lr (x batch/256)', float(0, Infinity, true), 0.1)
    .option('--weight-decay <x>', 'weight decay', float(0), 0)
    .option('--lars', 'LARC adaptation, trust 0.001 (the official --lars)', false)
    .option('--no-standardize', 'do not standardise the features (official behaviour)')
    .action(async (o, cmd: Command) => {
      const out = io(o.json);
      try {
        const l = libWithPrecision(o, cmd);
        const r = await l.evaluate.evaluateCheckpoint(o.checkpoint, {
          mode: 'linear', data: o.data, trainImages: o.trainImages, testImages: o.testImages, target: o.target,
          device: o.device, epochs: o.epochs, batchSize: o.batchSize, lr: o.lr, weightDecay: o.weightDecay,
          lars: o.lars, standardize: o.standardize, log: out.log,
        });
        out.log(`linear top-1 ${pct(r.top1)}${r.top5 !== undefined ? `  top-5 ${pct(r.top5)}` : ''} (${r.testCount} test images, ${r.trainCount} training images)`);
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
      } catch (e) {
        fail(e, o.json);
      }
    });

  // ---------------- export ----------------
  program
    .command('export')
    .description('write the backbone of a checkpoint as torchvision-compatible safetensors (load with strict=False: no fc)')
    .requiredOption('--checkpoint <path>', 'training checkpoint (a file or a run folder)')
    .requiredOption('--out <file>', 'output .safetensors file')
    .option('--target', 'export the momentum (target) backbone instead of the online one', false)
    .option('--projector', 'also write the projector (projector.* names)', false)
    .option('--json', 'print the result as JSON on the last line of stdout', false)
    .action(async (o) => {
      const out = io(o.json);
      try {
        const l = lib();
        const r = await l.evaluate.exportCheckpoint(o.checkpoint, o.out, { target: o.target, projector: o.projector });
        out.log(`wrote ${r.tensors} tensors (${r.parameters} parameters) to ${r.path}`);
        if (o.json) process.stdout.write(JSON.stringify(r) + '\n');
      } catch (e) {
        fail(e, o.json);
      }
    });

  // ---------------- doctor ----------------
  program
    .command('doctor')
    .description('what this build can run on: CPU features and threads, CUDA compiled/available and why not')
    .option('--device <name>', 'also say what --device would pick', choice('auto', 'cpu', 'cuda'), 'auto')
    .option('--json', 'print the backends as JSON on the last line of stdout', false)
    .action((o) => {
      const out = io(o.json);
      try {
        const l = lib();
        const r = l.doctor.doctorReport();
        for (const line of r.lines) out.log(line);
        let picked: { device: string; reason: string } | { error: string };
        try {
          picked = l.device.resolveDevice(o.device);
          out.log(`--device ${o.device} picks: ${picked.device} (${picked.reason})`);
        } catch (e) {
          picked = { error: (e as Error).message };
          out.log(`--device ${o.device}: ${(e as Error).message}`);
        }
        if (o.json) process.stdout.write(JSON.stringify({ ok: r.ok, backends: r.backends, device: picked }) + '\n');
        if (!r.ok) process.exitCode = 1;
      } catch (e) {
        fail(e, o.json);
      }
    });
  return program;
}

if (require.main === module) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((e) => fail(e, process.argv.includes('--json')));
}
