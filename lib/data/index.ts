// index.ts: the data pipeline of mveb (see README.md in this folder): datasets and loaders, the
// native multi-crop augmentation, and the prefetching MultiCropLoader.
export { makeDataset, subsetDataset, fromTypedArray, channelStats } from './dataset';
export type { Dataset, DatasetFields, FromTypedArrayOptions } from './dataset';
export { loadIdx, readMaybeGzip } from './idx';
export { loadCifar } from './cifar';
export type { CifarOptions } from './cifar';
export { loadImageFolder, listImageFolder, IMAGE_EXTENSIONS } from './folder';
export type { ImageFolderOptions } from './folder';
export { loadDataset, builtinFashionMnist, builtinDataDir, FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD } from './load';
export type { LoadOptions } from './load';
export {
  NativeDataset,
  nativeDataset,
  augmentBatch,
  evalBatch,
  epochPermutation,
  defaultViews,
  defaultNormalization,
  resolveView,
  IMAGENET_MEAN,
  IMAGENET_STD,
} from './augment';
export type { ViewConfig, DefaultViewsOptions } from './augment';
export { MultiCropLoader } from './loader';
export type { MultiCropLoaderOptions, MultiCropBatch } from './loader';
