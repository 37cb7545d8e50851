// index.ts: the public surface of the training area (re-exported by lib/index.ts): pretrain(),
// checkpoint evaluation/export, schedules, checkpoints, the report and device resolution.
export { pretrain, trainStep, makeStepScratch, disposeStepScratch, trainingViews, MAX_LOCAL_CROPS, PRETRAIN_DEFAULTS, VIEW_ACTIVATION_BUDGET } from './pretrain';
export type { PretrainOptions, PretrainSummary, ResolvedConfig, StepResult, StepScratch, Net } from './pretrain';
export { evaluateCheckpoint, exportCheckpoint, loadBackbone } from './evaluate';
export type { EvaluateOptions, EvaluateResult } from './evaluate';
export { learningRateAt, momentumAt, maxLearningRate } from './schedule';
export type { LrScheduleOptions } from './schedule';
export { saveCheckpoint, loadCheckpoint, checksumTensors, CHECKPOINT_FORMAT, CHECKPOINT_VERSION } from './checkpoint';
export type { TrainingState, LoadedCheckpoint } from './checkpoint';
export { renderReport, lineChart } from './report';
export type { StepRecord, EpochRecord, ReportInput } from './report';
export { ProgressReporter, readMetrics } from './progress';
export type { ProgressEvent, ProgressMode } from './progress';
export { resolveDevice } from './device';
export type { DeviceChoice } from './device';
