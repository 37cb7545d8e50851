// schedule.ts: the learning-rate and EMA-momentum schedules of the official MVEB code
// (mveb-spec.md section 4 and 1.4). Pure functions of the step; tested in test/train.test.ts
// against the values the spec computes for the ImageNet recipe (lr(0) = 0.0048, lr(W) = 4.8,
// lr(T/2) = 2.4965, lr(T-1) = 0.0066497; m(0) = 0.996, m(T/2) = 0.998).

export interface LrScheduleOptions {
  /** Base learning rate before the batch scaling (official 0.3). */
  baseLr: number;
  /** Global batch size: max_lr = baseLr * batchSize / 256. */
  batchSize: number;
  /** Linear warm-up length in steps (official: 10 epochs). */
  warmupSteps: number;
  /** Total steps T = epochs * steps per epoch. */
  totalSteps: number;
  /** min_lr = minLrRatio * max_lr (official 1e-3). */
  minLrRatio?: number;
}

/** Peak learning rate after linear batch scaling. */
export function maxLearningRate(o: LrScheduleOptions): number {
  return (o.baseLr * o.batchSize) / 256;
}

/**
 * lr(t): linear from min_lr to max_lr over the warm-up, then
 * min + (max - min) (1 + cos(pi (t - W) / T)) / 2. The cosine denominator is T, not T - W, exactly as
 * the official `adjust_learning_rate` (so the last lr is slightly above min_lr).
 */
export function learningRateAt(step: number, o: LrScheduleOptions): number {
  const maxLr = maxLearningRate(o);
  const minLr = (o.minLrRatio ?? 1e-3) * maxLr;
  if (step < o.warmupSteps) return minLr + ((maxLr - minLr) * step) / o.warmupSteps;
  return minLr + 0.5 * (maxLr - minLr) * (1 + Math.cos((Math.PI * (step - o.warmupSteps)) / o.totalSteps));
}

/** EMA momentum m(t) = 1 - (1 - m0) (cos(pi t / T) + 1) / 2; m(0) = m0, m(T) = 1. */
export function momentumAt(step: number, totalSteps: number, baseMomentum = 0.996): number {
  return 1 - ((1 - baseMomentum) * (Math.cos((Math.PI * step) / totalSteps) + 1)) / 2;
}
