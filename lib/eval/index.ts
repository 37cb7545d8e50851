// index.ts: the public surface of the evaluation area (re-exported by lib/index.ts).
export { knnScores, knnEvaluate, accuracyFromScores } from './knn';
export type { KnnOptions, KnnResult } from './knn';
export { linearEvaluate } from './linear';
export type { LinearEvalOptions, LinearEvalResult } from './linear';
export { extractFeatures } from './features';
export { subsetIndices } from './subset';
