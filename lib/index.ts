// index.ts: the public API of mveb (see README.md and ../shared/docs/engineering.md section 2).
export { MvebError } from './errors';
export type { MvebErrorCode } from './errors';
export { Tensor, memory } from './tensor';
export type { DType, DeviceName, TypedData, MemoryCounter } from './tensor';
export { backends, doctorReport } from './doctor';
export type { Backends, CpuInfo, CudaInfo } from './doctor';
export { setMatmulPrecision, getMatmulPrecision } from './precision';
export type { MatmulPrecision } from './precision';
export { Model } from './model';
export type { ResnetOptions, ProjectorOptions, OptimizerStepOptions } from './model';
export { MVEBLoss, vmfScore } from './loss';
export type { MVEBLossOptions, MVEBLossResult, VmfScoreOptions, VmfScoreResult } from './loss';
export { saveTensors, loadTensors } from './safetensors';
export type { LoadedTensors } from './safetensors';
export * from './data';
export * from './train';
export * from './eval';
