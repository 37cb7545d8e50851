// augment.cpp: the augmentation ops of one view (see augment.h for the pipeline and the choices made).
// Cost per view is small next to the network: a size^2 image at C channels takes ~ (2 taps-widths x
// size^2 x C) MACs for the resize, ~10 flops/pixel for jitter, (2 x (6 sigma + 1)) MACs/pixel for blur.
// Test: mveb_native_tests "data:" (test/native/test_augment.cpp compares each op with a naive
// double-precision formula and with torchvision/PIL fixtures).
#include "data/augment.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace mveb {
namespace data {

namespace {
inline float clamp01(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
// torchvision's rgb_to_grayscale weights (PIL uses 0.299; the difference is < 0.0001 of a level).
inline float gray_of(float r, float g, float b) { return 0.2989f * r + 0.587f * g + 0.114f * b; }
}  // namespace

void validate_view(const ViewConfig& v, int channels, const char* what) {
  auto bad = [&](const char* field, const char* expected, double found) {
    throw_error("E_ARG", what, ": '", field, "' must be ", expected, ", found ", found);
  };
  if (v.size < 1 || v.size > 8192) bad("size", "an integer in [1, 8192]", v.size);
  if (!(v.scale_lo > 0 && v.scale_lo <= 1)) bad("scale[0]", "in (0, 1]", v.scale_lo);
  if (!(v.scale_hi >= v.scale_lo && v.scale_hi <= 1)) bad("scale[1]", "in [scale[0], 1]", v.scale_hi);
  if (!(v.ratio_lo > 0)) bad("ratio[0]", "> 0", v.ratio_lo);
  if (!(v.ratio_hi >= v.ratio_lo)) bad("ratio[1]", ">= ratio[0]", v.ratio_hi);
  const std::pair<const char*, double> probs[] = {{"flipP", v.flip_p}, {"jitterP", v.jitter_p},
                                                  {"grayscaleP", v.grayscale_p}, {"blurP", v.blur_p},
                                                  {"solarizeP", v.solarize_p}};
  for (const auto& [name, p] : probs)
    if (!(p >= 0 && p <= 1)) bad(name, "a probability in [0, 1]", p);
  if (!(v.brightness >= 0 && v.brightness < 1)) bad("brightness", "in [0, 1)", v.brightness);
  if (!(v.contrast >= 0 && v.contrast < 1)) bad("contrast", "in [0, 1)", v.contrast);
  if (!(v.saturation >= 0 && v.saturation < 1)) bad("saturation", "in [0, 1)", v.saturation);
  if (!(v.hue >= 0 && v.hue <= 0.5)) bad("hue", "in [0, 0.5]", v.hue);
  if (!(v.blur_sigma_lo > 0 && v.blur_sigma_hi >= v.blur_sigma_lo && v.blur_sigma_hi <= 50))
    bad("blurSigma", "0 < lo <= hi <= 50", v.blur_sigma_hi);
  MVEB_CHECK(static_cast<int>(v.mean.size()) == channels && static_cast<int>(v.std.size()) == channels, "E_ARG", what,
             ": mean and std must have one value per channel (", channels, "), found ", v.mean.size(), " and ",
             v.std.size());
  for (float s : v.std)
    if (!(s > 0) || !std::isfinite(s)) bad("std", "positive and finite", s);
  for (float m : v.mean)
    if (!std::isfinite(m)) bad("mean", "finite", m);
}

// ---------------------------------------------------------------------------------------------
// RandomResizedCrop parameters (torchvision 0.14 transforms.RandomResizedCrop.get_params).
CropBox sample_crop(Rng& rng, int height, int width, double scale_lo, double scale_hi, double ratio_lo,
                    double ratio_hi) {
  const double area = static_cast<double>(height) * width;
  const double log_lo = std::log(ratio_lo), log_hi = std::log(ratio_hi);
  CropBox box;
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * rng.uniform(scale_lo, scale_hi);
    const double aspect = std::exp(rng.uniform(log_lo, log_hi));
    // Python's round() is round-half-even: nearbyint under the default rounding mode.
    const int w = static_cast<int>(std::nearbyint(std::sqrt(target_area * aspect)));
    const int h = static_cast<int>(std::nearbyint(std::sqrt(target_area / aspect)));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      box.top = std::min(height - h, static_cast<int>(rng.uniform() * (height - h + 1)));
      box.left = std::min(width - w, static_cast<int>(rng.uniform() * (width - w + 1)));
      box.height = h;
      box.width = w;
      return box;
    }
  }
  // Fallback: centre crop at the nearest allowed aspect ratio.
  const double in_ratio = static_cast<double>(width) / height;
  int w = width, h = height;
  if (in_ratio < ratio_lo) {
    h = static_cast<int>(std::nearbyint(w / ratio_lo));
  } else if (in_ratio > ratio_hi) {
    w = static_cast<int>(std::nearbyint(h * ratio_hi));
  }
  h = std::max(1, std::min(h, height));
  w = std::max(1, std::min(w, width));
  box.top = (height - h) / 2;
  box.left = (width - w) / 2;
  box.height = h;
  box.width = w;
  return box;
}

// ---------------------------------------------------------------------------------------------
// PIL bicubic resampling (libImaging/Resample.c, precompute_coeffs): output x samples the input at
// centre (x + 0.5) * scale, with the kernel stretched by max(scale, 1) (antialiasing on downscale).
double bicubic_kernel(double x) {
  const double a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

void resample_taps(ResampleTaps& taps, int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 2.0 * filterscale;
  const int max_taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.max_taps = max_taps;
  taps.first.assign(out_size, 0);
  taps.count.assign(out_size, 0);
  taps.weights.assign(static_cast<size_t>(out_size) * max_taps, 0.f);
  std::vector<double> k(max_taps);
  for (int x = 0; x < out_size; ++x) {
    const double center = (x + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);  // C truncation, as PIL
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double sum = 0;
    for (int i = 0; i < xmax; ++i) {
      k[i] = bicubic_kernel((i + xmin - center + 0.5) * ss);
      sum += k[i];
    }
    taps.first[x] = xmin;
    taps.count[x] = xmax;
    for (int i = 0; i < xmax; ++i) taps.weights[static_cast<size_t>(x) * max_taps + i] = static_cast<float>(sum != 0 ? k[i] / sum : k[i]);
  }
}

namespace {
// Separable resize of an (in_h x in_w x C) region into dst. load_row(y, float* row) writes input row y
// (in_w * C floats) so each source row is converted once.
template <typename LoadRow>
void resize_region(Image& dst, int in_h, int in_w, int channels, int out_h, int out_w, std::vector<float>& scratch,
                   const LoadRow& load_row) {
  dst.resize(out_h, out_w, channels);
  // Horizontal pass into scratch [in_h, out_w, C] (a copy when the width already matches), clamped to
  // [0, 1] like PIL's uint8 intermediate: bicubic overshoot on sharp edges would otherwise reach the
  // vertical pass (up to 16 levels off PIL on noise without this clamp, < 1 level with it).
  const size_t out_row = static_cast<size_t>(out_w) * channels;
  scratch.resize(static_cast<size_t>(in_h) * out_row);
  if (in_w == out_w) {
    for (int y = 0; y < in_h; ++y) load_row(y, &scratch[y * out_row]);
  } else {
    ResampleTaps tx;
    resample_taps(tx, in_w, out_w);
    std::vector<float> in_row(static_cast<size_t>(in_w) * channels);
    for (int y = 0; y < in_h; ++y) {
      load_row(y, in_row.data());
      float* out = &scratch[y * out_row];
      for (int x = 0; x < out_w; ++x) {
        const float* wt = &tx.weights[static_cast<size_t>(x) * tx.max_taps];
        const float* in = &in_row[static_cast<size_t>(tx.first[x]) * channels];
        const int taps = tx.count[x];
        if (channels == 3) {
          float a0 = 0, a1 = 0, a2 = 0;
          for (int i = 0; i < taps; ++i) {
            a0 += wt[i] * in[3 * i];
            a1 += wt[i] * in[3 * i + 1];
            a2 += wt[i] * in[3 * i + 2];
          }
          out[3 * x] = clamp01(a0);
          out[3 * x + 1] = clamp01(a1);
          out[3 * x + 2] = clamp01(a2);
        } else {
          for (int c = 0; c < channels; ++c) {
            float acc = 0;
            for (int i = 0; i < taps; ++i) acc += wt[i] * in[i * channels + c];
            out[static_cast<size_t>(x) * channels + c] = clamp01(acc);
          }
        }
      }
    }
  }
  // Vertical pass into dst, clamped to [0, 1] (PIL clips to the uint8 range).
  const size_t row = out_row;
  if (in_h == out_h) {
    for (size_t i = 0; i < row * out_h; ++i) dst.px[i] = clamp01(scratch[i]);
    return;
  }
  ResampleTaps ty;
  resample_taps(ty, in_h, out_h);
  for (int y = 0; y < out_h; ++y) {
    const float* wt = &ty.weights[static_cast<size_t>(y) * ty.max_taps];
    float* out = &dst.px[y * row];
    for (size_t j = 0; j < row; ++j) out[j] = 0.f;
    for (int i = 0; i < ty.count[y]; ++i) {
      const float* in = &scratch[(ty.first[y] + i) * row];
      const float w = wt[i];
      for (size_t j = 0; j < row; ++j) out[j] += w * in[j];
    }
    for (size_t j = 0; j < row; ++j) out[j] = clamp01(out[j]);
  }
}
}  // namespace

void resized_crop(Image& dst, const uint8_t* src, int height, int width, int channels, const CropBox& box, int out_h,
                  int out_w, std::vector<float>& scratch) {
  (void)height;
  const float inv255 = 1.f / 255.f;
  const size_t stride = static_cast<size_t>(width) * channels, n = static_cast<size_t>(box.width) * channels;
  const uint8_t* base = src + static_cast<size_t>(box.top) * stride + static_cast<size_t>(box.left) * channels;
  resize_region(dst, box.height, box.width, channels, out_h, out_w, scratch, [&](int y, float* row) {
    const uint8_t* in = base + y * stride;
    for (size_t j = 0; j < n; ++j) row[j] = in[j] * inv255;
  });
}

void resize_float(Image& dst, const Image& src, int out_h, int out_w, std::vector<float>& scratch) {
  const size_t n = static_cast<size_t>(src.w) * src.c;
  resize_region(dst, src.h, src.w, src.c, out_h, out_w, scratch,
                [&](int y, float* row) { std::copy(&src.px[y * n], &src.px[y * n] + n, row); });
}

// ---------------------------------------------------------------------------------------------
void hflip(Image& img) {
  for (int y = 0; y < img.h; ++y)
    for (int x = 0; x < img.w / 2; ++x)
      for (int c = 0; c < img.c; ++c) std::swap(img.at(y, x, c), img.at(y, img.w - 1 - x, c));
}

void adjust_brightness(Image& img, double factor) {
  const float f = static_cast<float>(factor);
  for (float& v : img.px) v = clamp01(v * f);
}

void adjust_contrast(Image& img, double factor) {
  // torchvision: blend with the mean of the grayscale image (one value for the whole image).
  double sum = 0;
  const size_t pixels = static_cast<size_t>(img.h) * img.w;
  if (img.c == 3) {
    for (size_t i = 0; i < pixels; ++i) sum += gray_of(img.px[3 * i], img.px[3 * i + 1], img.px[3 * i + 2]);
    sum /= static_cast<double>(pixels);
  } else {
    for (float v : img.px) sum += v;
    sum /= static_cast<double>(img.px.size());
  }
  const float f = static_cast<float>(factor), base = static_cast<float>((1 - factor) * sum);
  for (float& v : img.px) v = clamp01(f * v + base);
}

void adjust_saturation(Image& img, double factor) {
  if (img.c != 3) return;  // one channel: saturation is undefined (identity)
  const float f = static_cast<float>(factor), g = 1.f - f;
  const size_t pixels = static_cast<size_t>(img.h) * img.w;
  for (size_t i = 0; i < pixels; ++i) {
    float* p = &img.px[3 * i];
    const float l = gray_of(p[0], p[1], p[2]);
    for (int c = 0; c < 3; ++c) p[c] = clamp01(f * p[c] + g * l);
  }
}

void adjust_hue(Image& img, double factor) {
  if (img.c != 3) return;
  const float shift = static_cast<float>(factor);
  const size_t pixels = static_cast<size_t>(img.h) * img.w;
  for (size_t i = 0; i < pixels; ++i) {
    float* p = &img.px[3 * i];
    const float r = p[0], g = p[1], b = p[2];
    // torchvision functional_tensor._rgb2hsv
    const float maxc = std::max(r, std::max(g, b)), minc = std::min(r, std::min(g, b));
    const bool eqc = maxc == minc;
    const float cr = maxc - minc;
    const float s = cr / (eqc ? 1.f : maxc);
    const float crd = eqc ? 1.f : cr;
    const float rc = (maxc - r) / crd, gc = (maxc - g) / crd, bc = (maxc - b) / crd;
    float h;
    if (maxc == r) h = bc - gc;
    else if (maxc == g) h = 2.f + rc - bc;
    else h = 4.f + gc - rc;
    // torchvision: h = fmod(h / 6 + 1, 1), then (h + factor) % 1 (Python modulo: result in [0, 1));
    // x - floor(x) is exact and equals both for these arguments, without the cost of fmod
    h = h / 6.f + 1.f;
    h -= std::floor(h);
    h += shift;
    h -= std::floor(h);
    if (h >= 1.f) h = 0.f;  // -tiny + 1 rounds to 1
    // _hsv2rgb
    const float v = maxc;
    const float h6 = h * 6.f;
    const float fi = std::floor(h6);
    const float f = h6 - fi;
    const int sector = static_cast<int>(fi) % 6;
    const float pp = clamp01(v * (1.f - s)), q = clamp01(v * (1.f - s * f)), t = clamp01(v * (1.f - s * (1.f - f)));
    float o0, o1, o2;
    switch (sector) {
      case 0: o0 = v; o1 = t; o2 = pp; break;
      case 1: o0 = q; o1 = v; o2 = pp; break;
      case 2: o0 = pp; o1 = v; o2 = t; break;
      case 3: o0 = pp; o1 = q; o2 = v; break;
      case 4: o0 = t; o1 = pp; o2 = v; break;
      default: o0 = v; o1 = pp; o2 = q; break;
    }
    p[0] = o0;
    p[1] = o1;
    p[2] = o2;
  }
}

void to_grayscale(Image& img) {
  if (img.c != 3) return;  // already one intensity per pixel
  const size_t pixels = static_cast<size_t>(img.h) * img.w;
  for (size_t i = 0; i < pixels; ++i) {
    float* p = &img.px[3 * i];
    const float l = gray_of(p[0], p[1], p[2]);
    p[0] = p[1] = p[2] = l;
  }
}

void gaussian_blur(Image& img, double sigma, std::vector<float>& scratch) {
  const int radius = std::max(1, static_cast<int>(std::ceil(3.0 * sigma)));
  std::vector<float> k(2 * radius + 1);
  double sum = 0;
  for (int i = -radius; i <= radius; ++i) sum += std::exp(-0.5 * (i / sigma) * (i / sigma));
  for (int i = -radius; i <= radius; ++i)
    k[i + radius] = static_cast<float>(std::exp(-0.5 * (i / sigma) * (i / sigma)) / sum);
  const int h = img.h, w = img.w, c = img.c;
  scratch.resize(img.px.size());
  // horizontal: img -> scratch, through a row padded with replicated edge pixels so the tap loop is a
  // contiguous, vectorisable multiply-add over the whole row
  const size_t row = static_cast<size_t>(w) * c;
  std::vector<float> padded(row + 2 * static_cast<size_t>(radius) * c);
  for (int y = 0; y < h; ++y) {
    const float* in = &img.px[y * row];
    for (int i = 0; i < radius; ++i)
      for (int ch = 0; ch < c; ++ch) {
        padded[static_cast<size_t>(i) * c + ch] = in[ch];
        padded[row + static_cast<size_t>(radius + i) * c + ch] = in[row - c + ch];
      }
    std::copy(in, in + row, padded.begin() + static_cast<size_t>(radius) * c);
    float* out = &scratch[y * row];
    for (size_t j = 0; j < row; ++j) out[j] = 0.f;
    for (int i = 0; i <= 2 * radius; ++i) {
      const float* src = &padded[static_cast<size_t>(i) * c];
      const float wt = k[i];
      for (size_t j = 0; j < row; ++j) out[j] += wt * src[j];
    }
  }
  // vertical: scratch -> img
  for (int y = 0; y < h; ++y) {
    float* out = &img.px[y * row];
    for (size_t j = 0; j < row; ++j) out[j] = 0.f;
    for (int i = -radius; i <= radius; ++i) {
      const int yy = std::min(h - 1, std::max(0, y + i));
      const float* in = &scratch[yy * row];
      const float wt = k[i + radius];
      for (size_t j = 0; j < row; ++j) out[j] += wt * in[j];
    }
    for (size_t j = 0; j < row; ++j) out[j] = clamp01(out[j]);
  }
}

void solarize(Image& img) {
  const float threshold = 128.f / 255.f;
  for (float& v : img.px)
    if (v >= threshold) v = 1.f - v;
}

void normalize_to_chw(float* dst, const Image& img, const float* mean, const float* std) {
  const size_t plane = static_cast<size_t>(img.h) * img.w;
  for (int c = 0; c < img.c; ++c) {
    float* out = dst + c * plane;
    const float m = mean[c], s = std[c];
    for (size_t i = 0; i < plane; ++i) out[i] = (img.px[i * img.c + c] - m) / s;
  }
}

// ---------------------------------------------------------------------------------------------
AugmentParams sample_params(Rng& rng, const ViewConfig& v, int height, int width) {
  AugmentParams p;
  p.crop = sample_crop(rng, height, width, v.scale_lo, v.scale_hi, v.ratio_lo, v.ratio_hi);
  p.flip = rng.uniform() < v.flip_p;
  p.jitter = rng.uniform() < v.jitter_p;
  if (p.jitter) {
    // torchvision ColorJitter.get_params: randperm(4), then the four factors.
    for (int i = 3; i > 0; --i) {
      const int j = std::min(i, static_cast<int>(rng.uniform() * (i + 1)));
      std::swap(p.order[i], p.order[j]);
    }
    p.brightness = rng.uniform(std::max(0.0, 1 - v.brightness), 1 + v.brightness);
    p.contrast = rng.uniform(std::max(0.0, 1 - v.contrast), 1 + v.contrast);
    p.saturation = rng.uniform(std::max(0.0, 1 - v.saturation), 1 + v.saturation);
    p.hue = rng.uniform(-v.hue, v.hue);
  }
  p.grayscale = rng.uniform() < v.grayscale_p;
  p.blur = rng.uniform() < v.blur_p;
  if (p.blur) p.sigma = rng.uniform(v.blur_sigma_lo, v.blur_sigma_hi);
  p.solarize = rng.uniform() < v.solarize_p;
  return p;
}

void apply_view(float* dst, const uint8_t* src, int height, int width, int channels, const ViewConfig& v,
                const AugmentParams& p, Scratch& s) {
  Image& img = s.img;
  resized_crop(img, src, height, width, channels, p.crop, v.size, v.size, s.buffer);
  if (p.flip) hflip(img);
  if (p.jitter) {
    for (int op : p.order) {
      switch (op) {
        case 0: if (v.brightness > 0) adjust_brightness(img, p.brightness); break;
        case 1: if (v.contrast > 0) adjust_contrast(img, p.contrast); break;
        case 2: if (v.saturation > 0) adjust_saturation(img, p.saturation); break;
        default: if (v.hue > 0) adjust_hue(img, p.hue); break;
      }
    }
  }
  if (p.grayscale) to_grayscale(img);
  if (p.blur) gaussian_blur(img, p.sigma, s.buffer);
  if (p.solarize) solarize(img);
  normalize_to_chw(dst, img, v.mean.data(), v.std.data());
}

}  // namespace data
}  // namespace mveb
