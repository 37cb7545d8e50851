// augment.h: the native augmentation pipeline of MVEB / DINO (mveb-spec.md section 5) and its
// multi-threaded, seeded batch producer. Input: a dataset of uint8 images stored once natively
// (NHWC, [N, H, W, C]); output: float32 NCHW views [B, C, size, size], normalised.
// Test: build mveb_native_tests and run it with the filter "data:" (test/native/test_augment.cpp).
//
// One view of one image, in the order of the official `DataAugmentationDINO`:
//   RandomResizedCrop(size, scale, ratio, bicubic) -> horizontal flip (flipP)
//   -> ColorJitter(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with prob jitterP, the four
//      adjustments in a random order (torchvision's randperm(4))
//   -> grayscale (grayscaleP) -> Gaussian blur, sigma ~ U(0.1, 2.0) (blurP) -> solarize at 128 (solarizeP)
//   -> (x - mean[c]) / std[c]
// Defaults (defaultViews() in lib/data): global 1 {blur 1.0, solarize 0}, global 2 {blur 0.1,
// solarize 0.2}, locals {blur 0.5}; all: flip 0.5, jitter 0.8, grayscale 0.2.
//
// Working representation: float HWC in [0, 1] (uint8 / 255); every op clamps to [0, 1] like PIL's
// uint8 pipeline, but nothing is re-quantised between ops.
// Choices, each the closest float analogue of the official PIL pipeline:
//   - resize: PIL's bicubic resampling (a = -0.5, separable, horizontal pass first, the filter
//     support widened by the scale factor when downscaling = antialiasing), on the crop only
//     (torchvision crops, then resizes); each pass clamped to [0, 1] as PIL's uint8 passes are.
//   - colour ops: torchvision's tensor formulas (functional_tensor.py): brightness = clamp(b x),
//     contrast = blend with the mean of the grayscale image, saturation = blend with the grayscale
//     image, hue = RGB->HSV shift->RGB; grayscale L = 0.2989 R + 0.587 G + 0.114 B.
//   - blur: a true Gaussian (separable, truncated at 3 sigma, edge pixels replicated like PIL's
//     borders) where PIL approximates one with three box blurs.
//   - solarize: x >= 128/255 -> 1 - x (PIL: pixel >= 128 -> 255 - pixel).
// Grayscale datasets (C != 3) skip saturation, hue and grayscale (they are identities or undefined
// on one channel); brightness and contrast apply (contrast blends with the image mean). The random
// numbers for the skipped ops are still drawn, so a stream does not depend on the channel count.
//
// Determinism: the random stream of (image index, view v) in batch step `step` is
// Rng(hash2(hash2(hash2(seed, step), index), v)) (core/random.h), a pure function of those numbers, so
// a batch is bit-identical for any thread count and any order of work. The same index twice in one
// batch gets the same views (the loader's permutations never repeat an index within a batch).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/random.h"
#include "core/threadpool.h"

namespace mveb {
namespace data {

struct ViewConfig {
  int size = 224;
  double scale_lo = 0.4, scale_hi = 1.0;
  double ratio_lo = 3.0 / 4.0, ratio_hi = 4.0 / 3.0;
  double flip_p = 0.5;
  double jitter_p = 0.8;
  double brightness = 0.4, contrast = 0.4, saturation = 0.2, hue = 0.1;
  double grayscale_p = 0.2;
  double blur_p = 0.0;
  double blur_sigma_lo = 0.1, blur_sigma_hi = 2.0;
  double solarize_p = 0.0;
  std::vector<float> mean, std;  // one per channel
};
// Throws E_ARG naming the field when a config is out of range (or mean/std do not have `channels` values).
void validate_view(const ViewConfig& v, int channels, const char* what);

// A float HWC image in [0, 1].
struct Image {
  int h = 0, w = 0, c = 0;
  std::vector<float> px;
  float& at(int y, int x, int ch) { return px[(static_cast<size_t>(y) * w + x) * c + ch]; }
  float at(int y, int x, int ch) const { return px[(static_cast<size_t>(y) * w + x) * c + ch]; }
  void resize(int hh, int ww, int cc) { h = hh; w = ww; c = cc; px.assign(static_cast<size_t>(h) * w * c, 0.f); }
};

// The random parameters drawn for one view (returned for tests and statistics).
struct CropBox {
  int top = 0, left = 0, height = 0, width = 0;
};
struct AugmentParams {
  CropBox crop;
  bool flip = false;
  bool jitter = false;
  int order[4] = {0, 1, 2, 3};  // 0 brightness, 1 contrast, 2 saturation, 3 hue
  double brightness = 1, contrast = 1, saturation = 1, hue = 0;
  bool grayscale = false;
  bool blur = false;
  double sigma = 0;
  bool solarize = false;
};

// ---- the individual ops (exposed for the tests) ----
// torchvision RandomResizedCrop.get_params: 10 attempts of (area ~ U(scale) * H W, log-ratio ~
// U(log ratio)), w = round(sqrt(area r)), h = round(sqrt(area / r)); accepted when it fits, then
// top ~ randint(0, H - h + 1), left ~ randint(0, W - w + 1); otherwise the centre-crop fallback.
CropBox sample_crop(Rng& rng, int height, int width, double scale_lo, double scale_hi, double ratio_lo,
                    double ratio_hi);
// PIL-style bicubic resize of the crop box of `src` (uint8 HWC, row stride width*c) into dst (size x size).
void resized_crop(Image& dst, const uint8_t* src, int height, int width, int channels, const CropBox& box,
                  int out_h, int out_w, std::vector<float>& scratch);
// Same on a float image (used by eval for whole-image resizes and by the tests).
void resize_float(Image& dst, const Image& src, int out_h, int out_w, std::vector<float>& scratch);
// 1-D PIL bicubic weights: for each output x, the first input index and its weights (normalised).
struct ResampleTaps {
  std::vector<int> first, count;
  std::vector<float> weights;  // out_size * max_taps
  int max_taps = 0;
};
void resample_taps(ResampleTaps& taps, int in_size, int out_size);
double bicubic_kernel(double x);  // PIL: a = -0.5

void hflip(Image& img);
void adjust_brightness(Image& img, double factor);
void adjust_contrast(Image& img, double factor);
void adjust_saturation(Image& img, double factor);
void adjust_hue(Image& img, double factor);  // factor in [-0.5, 0.5]
void to_grayscale(Image& img);               // C = 3: all channels = L
void gaussian_blur(Image& img, double sigma, std::vector<float>& scratch);
void solarize(Image& img);
// dst NCHW slice [C, h, w] = (img - mean) / std
void normalize_to_chw(float* dst, const Image& img, const float* mean, const float* std);

// Draw all the parameters of one view (in a fixed order) from rng.
AugmentParams sample_params(Rng& rng, const ViewConfig& v, int height, int width);
// Apply them: src uint8 HWC image -> dst CHW slice of one view.
struct Scratch {
  Image img;
  std::vector<float> buffer;
};
void apply_view(float* dst, const uint8_t* src, int height, int width, int channels, const ViewConfig& v,
                const AugmentParams& p, Scratch& scratch);

// ---- the dataset and the batch producer ----
// The dataset bytes live natively once; a dataset owns the worker threads that augment it.
class ImageDataset {
 public:
  // Copies `bytes` (n*h*w*c uint8, HWC). threads <= 0: default_thread_count().
  ImageDataset(const uint8_t* bytes, int64_t n, int h, int w, int c, int threads);
  int64_t size() const { return n_; }
  int height() const { return h_; }
  int width() const { return w_; }
  int channels() const { return c_; }
  const uint8_t* image(int64_t i) const { return pixels_.data() + static_cast<size_t>(i) * h_ * w_ * c_; }
  ThreadPool& pool() { return *pool_; }
  int threads() const { return pool_->size(); }

  // Random views of indices[0..B) into outs[v] ([B, C, size_v, size_v] float32, host memory).
  // Deterministic in (seed, step, index, view) for any thread count. Throws E_ARG on a bad index.
  void augment_batch(const int32_t* indices, int64_t batch, const std::vector<ViewConfig>& views, uint64_t seed,
                     uint64_t step, const std::vector<float*>& outs);
  // No augmentation: bicubic resize to size x size when the images are not that size, then normalise.
  void eval_batch(const int32_t* indices, int64_t batch, int size, const std::vector<float>& mean,
                  const std::vector<float>& std, float* out);

 private:
  void check_indices(const int32_t* indices, int64_t batch) const;
  int64_t n_;
  int h_, w_, c_;
  std::vector<uint8_t> pixels_;
  std::unique_ptr<ThreadPool> pool_;
};

// The random stream of one image-view (see the header comment).
inline uint64_t view_stream(uint64_t seed, uint64_t step, int64_t index, int view) {
  return hash2(hash2(hash2(seed, step), static_cast<uint64_t>(index)), static_cast<uint64_t>(view));
}
// A seeded permutation of [0, n) for `epoch` (Fisher-Yates on Rng(hash2(seed ^ tag, epoch))).
void permutation(int32_t* out, int64_t n, uint64_t seed, uint64_t epoch);

}  // namespace data
}  // namespace mveb
