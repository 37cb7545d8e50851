// defaults.ts: the pretraining defaults (PRETRAIN_DEFAULTS, re-exported by pretrain.ts) in a module
// with no native dependency, so that the CLI can read them for its option defaults before --threads
// is known and the addon loads.
import * as path from 'path';

/** The most local crops a step may take (the paper uses 6-10; 10^9 ran the JS heap out of memory
 * building the views). */
export const MAX_LOCAL_CROPS = 64;

/**
 * Defaults: the small recipe behind `npx mveb pretrain` with no arguments, sized to finish in a few
 * minutes on a 2-core CPU (about one minute with the current kernels) (benchmarks/RESULTS.md,
 * "Pretraining", has the sweep that chose it).
 * It differs from the official ImageNet recipe (ResNet-50, batch 4096, base lr 0.3, lambda 0.01,
 * 800 epochs, 6 local crops) where a few hundred steps need it: a small batch (more steps per
 * image), a high LARS lr (trust 0.001 makes the step relative to the weight norm) and lambda 0.003
 * (the entropy gradient's weight grows as the batch shrinks; 0.01 kept the views' alignment ~0.3).
 */
export const PRETRAIN_DEFAULTS = {
  data: 'fashion-mnist',
  depth: 18 as const,
  stem: 'cifar' as const,
  width: 0.125,
  projectorDim: 512,
  epochs: 4,
  batchSize: 64,
  lr: 32,
  optimizer: 'lars' as const,
  weightDecay: 1e-6,
  baseMomentum: 0.996,
  lambda: 0.003,
  eta: 0.01,
  minWidth: 0.1,
  localCrops: 0,
  globalScale: [0.4, 1] as [number, number],
  localScale: [0.05, 0.4] as [number, number],
  trainImages: 10000,
  seed: 0,
  knnEvery: 1,
  knnK: 200,
  knnTemperature: 0.1,
  knnMonitorBank: 5000,
  knnMonitorQueries: 1000,
  knnBank: 0,
  out: path.join('runs', 'default'),
};
