// test_augment.cpp: the data pipeline's native tests (native/data). Each augmentation op against a
// naive double-precision formula on odd sizes and against torchvision/PIL fixture numbers
// (augment_fixtures.h, written by augment_fixtures.py), the crop sampler, the batch producer's
// determinism across thread counts, and the sampling statistics.
// Run: cmake --build <dir> --target mveb_native_tests && <dir>/mveb_native_tests "data:"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "augment_fixtures.h"
#include "core/error.h"
#include "data/augment.h"
#include "harness.h"

using namespace mveb;
using namespace mveb::data;

namespace {

std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(hash2(seed, i) & 255);
  return v;
}

Image random_image(int h, int w, int c, uint64_t seed) {
  Image img;
  img.resize(h, w, c);
  for (size_t i = 0; i < img.px.size(); ++i) img.px[i] = static_cast<float>(uniform01(seed, i));
  return img;
}

Image fixture_image() {
  Image img;
  img.resize(fixtures::kH, fixtures::kW, 3);
  for (size_t i = 0; i < img.px.size(); ++i) img.px[i] = fixtures::kImage[i] / 255.f;
  return img;
}

double max_abs_diff(const std::vector<float>& a, const float* b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = std::fabs(static_cast<double>(a[i]) - b[i]);
    if (!std::isfinite(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

// Direct PIL bicubic formula in double: h(i, x) = clamp(sum_j wx(x, j) in(i, j)) (PIL's uint8 intermediate,
// unrounded), out(y, x) = clamp(sum_i wy(y, i) h(i, x)), where w(o, i) = k((i - centre(o) + 0.5) / fs) / sum,
// centre(o) = (o + 0.5) in / out, fs = max(in / out, 1), over the input indices PIL's support window selects.
std::vector<double> pil_weights_1d(int in, int out, int o) {
  const double scale = static_cast<double>(in) / out, fs = std::max(scale, 1.0), support = 2 * fs;
  const double centre = (o + 0.5) * scale;
  const int lo = std::max(0, static_cast<int>(centre - support + 0.5));
  const int hi = std::min(in, static_cast<int>(centre + support + 0.5));
  std::vector<double> w(in, 0.0);
  double sum = 0;
  for (int i = lo; i < hi; ++i) {
    double x = std::fabs((i - centre + 0.5) / fs);
    const double a = -0.5;
    double k = x < 1 ? ((a + 2) * x - (a + 3)) * x * x + 1 : (x < 2 ? (((x - 5) * x + 8) * x - 4) * a : 0);
    w[i] = k;
    sum += k;
  }
  for (double& v : w) v /= sum;
  return w;
}

std::vector<double> naive_resize(const std::vector<double>& in, int ih, int iw, int c, int oh, int ow) {
  std::vector<double> out(static_cast<size_t>(oh) * ow * c);
  for (int y = 0; y < oh; ++y) {
    auto wy = pil_weights_1d(ih, oh, y);
    for (int x = 0; x < ow; ++x) {
      auto wx = pil_weights_1d(iw, ow, x);
      for (int ch = 0; ch < c; ++ch) {
        double acc = 0;
        for (int i = 0; i < ih; ++i) {
          double row = 0;
          for (int j = 0; j < iw; ++j) row += wx[j] * in[(static_cast<size_t>(i) * iw + j) * c + ch];
          acc += wy[i] * std::min(1.0, std::max(0.0, row));
        }
        out[(static_cast<size_t>(y) * ow + x) * c + ch] = std::min(1.0, std::max(0.0, acc));
      }
    }
  }
  return out;
}

ViewConfig plain_view(int size, int channels) {
  ViewConfig v;
  v.size = size;
  v.mean.assign(channels, 0.5f);
  v.std.assign(channels, 0.25f);
  return v;
}

}  // namespace

TEST("data: crop + bicubic resize matches the direct 2-D PIL formula (odd sizes, up and down)") {
  const int H = 13, W = 17;
  for (int c : {1, 3}) {
    auto bytes = random_bytes(static_cast<size_t>(H) * W * c, 11 + c);
    struct Case {
      CropBox box;
      int oh, ow;
    } cases[] = {{{2, 3, 7, 9}, 11, 11}, {{0, 0, 13, 17}, 5, 7}, {{4, 1, 9, 15}, 23, 3}, {{1, 2, 3, 5}, 1, 1},
                 {{0, 0, 13, 17}, 13, 17}, {{5, 6, 1, 1}, 9, 9}};
    for (const auto& cs : cases) {
      std::vector<double> crop(static_cast<size_t>(cs.box.height) * cs.box.width * c);
      for (int y = 0; y < cs.box.height; ++y)
        for (int x = 0; x < cs.box.width; ++x)
          for (int ch = 0; ch < c; ++ch)
            crop[(static_cast<size_t>(y) * cs.box.width + x) * c + ch] =
                bytes[(static_cast<size_t>(cs.box.top + y) * W + cs.box.left + x) * c + ch] / 255.0;
      auto ref = naive_resize(crop, cs.box.height, cs.box.width, c, cs.oh, cs.ow);
      Image out;
      std::vector<float> scratch;
      resized_crop(out, bytes.data(), H, W, c, cs.box, cs.oh, cs.ow, scratch);
      REQUIRE(out.h == cs.oh && out.w == cs.ow && out.c == c);
      EXPECT_REL(mtest::rel_error(out.px.data(), ref.data(), ref.size()), 1e-6,
                 "resize c=" << c << " box " << cs.box.height << "x" << cs.box.width << " -> " << cs.oh << "x" << cs.ow);
    }
  }
}

TEST("data: bicubic resize agrees with PIL (torchvision resized_crop) to uint8 rounding") {
  std::vector<float> scratch;
  Image up, down;
  resized_crop(up, fixtures::kImage, fixtures::kH, fixtures::kW, 3, CropBox{1, 2, 5, 6}, 11, 13, scratch);
  resized_crop(down, fixtures::kImage, fixtures::kH, fixtures::kW, 3, CropBox{0, 0, fixtures::kH, fixtures::kW}, 4, 3,
               scratch);
  auto check = [](const Image& img, const uint8_t* pil, const char* what) {
    double max_diff = 0, sum_diff = 0;
    for (size_t i = 0; i < img.px.size(); ++i) {
      const double d = std::fabs(img.px[i] * 255.0 - pil[i]);
      max_diff = std::max(max_diff, d);
      sum_diff += d;
    }
    // PIL rounds the intermediate (after the horizontal pass) and the result to uint8: at most ~1 level.
    EXPECT_TRUE(max_diff <= 1.5, what << " max |diff| = " << max_diff << " levels");
    EXPECT_TRUE(sum_diff / img.px.size() <= 0.5, what << " mean |diff| = " << sum_diff / img.px.size());
  };
  check(up, fixtures::k_resize_up, "upscale 5x6 -> 11x13");
  check(down, fixtures::k_resize_down, "downscale 7x9 -> 4x3 (antialiased)");
}

TEST("data: horizontal flip mirrors every row (odd width)") {
  Image img = random_image(5, 7, 3, 3), ref = img;
  hflip(img);
  for (int y = 0; y < 5; ++y)
    for (int x = 0; x < 7; ++x)
      for (int c = 0; c < 3; ++c) EXPECT_TRUE(img.at(y, x, c) == ref.at(y, 6 - x, c));
}

TEST("data: colour jitter ops match torchvision's tensor formulas") {
  const size_t n = static_cast<size_t>(fixtures::kH) * fixtures::kW * 3;
  struct Op {
    const char* name;
    std::function<void(Image&)> fn;
    const float* ref;
  } ops[] = {
      {"brightness 1.3", [](Image& i) { adjust_brightness(i, 1.3); }, fixtures::k_brightness_1_3},
      {"contrast 0.7", [](Image& i) { adjust_contrast(i, 0.7); }, fixtures::k_contrast_0_7},
      {"saturation 1.15", [](Image& i) { adjust_saturation(i, 1.15); }, fixtures::k_saturation_1_15},
      {"hue 0.07", [](Image& i) { adjust_hue(i, 0.07); }, fixtures::k_hue_0_07},
      {"hue -0.09", [](Image& i) { adjust_hue(i, -0.09); }, fixtures::k_hue_m0_09},
      {"grayscale", [](Image& i) { to_grayscale(i); }, fixtures::k_grayscale},
  };
  for (const auto& op : ops) {
    Image img = fixture_image();
    op.fn(img);
    EXPECT_REL(mtest::rel_error(img.px.data(), op.ref, n), 1e-6, op.name);
    EXPECT_TRUE(max_abs_diff(img.px, op.ref, n) < 1e-5, op.name << " max diff " << max_abs_diff(img.px, op.ref, n));
  }
  // One channel: contrast blends with the image mean; saturation, hue and grayscale are identities.
  Image gray;
  gray.resize(fixtures::kH, fixtures::kW, 1);
  for (int i = 0; i < fixtures::kH * fixtures::kW; ++i) gray.px[i] = fixtures::kImage[3 * i] / 255.f;
  Image g = gray;
  adjust_contrast(g, 1.25);
  EXPECT_REL(mtest::rel_error(g.px.data(), fixtures::k_gray_contrast_1_25, g.px.size()), 1e-6, "gray contrast 1.25");
  Image s = gray;
  adjust_saturation(s, 1.2);
  adjust_hue(s, 0.1);
  to_grayscale(s);
  EXPECT_TRUE(s.px == gray.px, "saturation/hue/grayscale must leave a 1-channel image unchanged");
}

TEST("data: jitter ops match their formulas on odd-sized random images") {
  Image src = random_image(9, 11, 3, 21);
  const size_t pixels = 99;
  auto lum = [](const float* p) { return 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2]; };
  auto clamp = [](double x) { return std::min(1.0, std::max(0.0, x)); };
  {
    Image img = src;
    adjust_brightness(img, 0.77);
    std::vector<double> ref(src.px.size());
    for (size_t i = 0; i < ref.size(); ++i) ref[i] = clamp(0.77 * src.px[i]);
    EXPECT_REL(mtest::rel_error(img.px.data(), ref.data(), ref.size()), 1e-6, "brightness");
  }
  {
    Image img = src;
    adjust_contrast(img, 1.33);
    double mean = 0;
    for (size_t i = 0; i < pixels; ++i) mean += lum(&src.px[3 * i]);
    mean /= pixels;
    std::vector<double> ref(src.px.size());
    for (size_t i = 0; i < ref.size(); ++i) ref[i] = clamp(1.33 * src.px[i] + (1 - 1.33) * mean);
    EXPECT_REL(mtest::rel_error(img.px.data(), ref.data(), ref.size()), 1e-6, "contrast");
  }
  {
    Image img = src;
    adjust_saturation(img, 0.85);
    std::vector<double> ref(src.px.size());
    for (size_t i = 0; i < ref.size(); ++i) ref[i] = clamp(0.85 * src.px[i] + 0.15 * lum(&src.px[3 * (i / 3)]));
    EXPECT_REL(mtest::rel_error(img.px.data(), ref.data(), ref.size()), 1e-6, "saturation");
  }
  {
    // Hue: a shift by h then by -h is the identity (up to float rounding), and hue keeps the HSV value (max).
    Image img = src;
    adjust_hue(img, 0.08);
    double max_change_of_max = 0;
    for (size_t i = 0; i < pixels; ++i) {
      const float* a = &img.px[3 * i];
      const float* b = &src.px[3 * i];
      max_change_of_max = std::max<double>(max_change_of_max, std::fabs(std::max({a[0], a[1], a[2]}) - std::max({b[0], b[1], b[2]})));
    }
    EXPECT_TRUE(max_change_of_max < 1e-6, "hue changed the HSV value by " << max_change_of_max);
    adjust_hue(img, -0.08);
    EXPECT_REL(mtest::rel_error(img.px.data(), src.px.data(), src.px.size()), 1e-5, "hue round trip");
  }
}

TEST("data: Gaussian blur matches the direct 2-D formula with replicated edges") {
  for (int c : {1, 3}) {
    for (double sigma : {0.1, 0.7, 1.3, 2.0}) {
      Image img = random_image(9, 13, c, 40 + c), src = img;
      std::vector<float> scratch;
      gaussian_blur(img, sigma, scratch);
      const int r = std::max(1, static_cast<int>(std::ceil(3 * sigma)));
      double norm = 0;
      for (int i = -r; i <= r; ++i)
        for (int j = -r; j <= r; ++j) norm += std::exp(-(i * i + j * j) / (2 * sigma * sigma));
      std::vector<double> ref(src.px.size());
      for (int y = 0; y < 9; ++y)
        for (int x = 0; x < 13; ++x)
          for (int ch = 0; ch < c; ++ch) {
            double acc = 0;
            for (int i = -r; i <= r; ++i)
              for (int j = -r; j <= r; ++j) {
                const int yy = std::min(8, std::max(0, y + i)), xx = std::min(12, std::max(0, x + j));
                acc += std::exp(-(i * i + j * j) / (2 * sigma * sigma)) / norm * src.at(yy, xx, ch);
              }
            ref[(static_cast<size_t>(y) * 13 + x) * c + ch] = acc;
          }
      EXPECT_REL(mtest::rel_error(img.px.data(), ref.data(), ref.size()), 1e-6, "blur c=" << c << " sigma " << sigma);
    }
  }
  // A constant image stays constant; a blur of sigma 2 strictly lowers the variance of noise.
  Image flat;
  flat.resize(6, 5, 3);
  std::fill(flat.px.begin(), flat.px.end(), 0.3f);
  std::vector<float> scratch;
  gaussian_blur(flat, 1.7, scratch);
  for (float v : flat.px) EXPECT_TRUE(std::fabs(v - 0.3f) < 1e-6);
}

TEST("data: solarize matches PIL ImageOps.solarize(128); normalise matches (x - mean) / std") {
  Image img = fixture_image();
  solarize(img);
  int mismatches = 0;
  for (size_t i = 0; i < img.px.size(); ++i)
    if (std::lround(img.px[i] * 255.f) != fixtures::k_solarize[i]) ++mismatches;
  EXPECT_TRUE(mismatches == 0, mismatches << " pixels differ from PIL");

  Image src = random_image(7, 5, 3, 9);
  const float mean[3] = {0.485f, 0.456f, 0.406f}, std[3] = {0.229f, 0.224f, 0.225f};
  std::vector<float> out(3 * 35, std::numeric_limits<float>::quiet_NaN());
  normalize_to_chw(out.data(), src, mean, std);
  std::vector<double> ref(out.size());
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 35; ++i) ref[c * 35 + i] = (src.px[i * 3 + c] - static_cast<double>(mean[c])) / std[c];
  EXPECT_REL(mtest::rel_error(out.data(), ref.data(), ref.size()), 1e-6, "normalise");
}

TEST("data: RandomResizedCrop sampler respects scale/ratio and falls back like torchvision") {
  Rng rng(123);
  int fallback = 0;
  for (int t = 0; t < 3000; ++t) {
    const int H = 17 + t % 13, W = 23 + t % 7;
    CropBox b = sample_crop(rng, H, W, 0.08, 1.0, 3.0 / 4, 4.0 / 3);
    REQUIRE(b.top >= 0 && b.left >= 0 && b.height >= 1 && b.width >= 1 && b.top + b.height <= H && b.left + b.width <= W);
    // rounding of w and h to integers moves the area and ratio a little off their ranges
    const double area = static_cast<double>(b.height) * b.width / (H * W), ratio = static_cast<double>(b.width) / b.height;
    EXPECT_TRUE(area > 0.08 * 0.5 && area <= 1.0, "area " << area);
    if (b.height == H && b.width == W) ++fallback;
    else EXPECT_TRUE(ratio > 0.75 * 0.7 && ratio < 4.0 / 3 / 0.7, "ratio " << ratio);
  }
  EXPECT_TRUE(fallback < 300, "too many full-image crops: " << fallback);
  Rng r2(5);
  CropBox f1 = sample_crop(r2, 40, 1, 0.9, 1.0, 3.0 / 4, 4.0 / 3);
  EXPECT_TRUE(f1.top == fixtures::k_fallback_40x1[0] && f1.left == fixtures::k_fallback_40x1[1] &&
              f1.height == fixtures::k_fallback_40x1[2] && f1.width == fixtures::k_fallback_40x1[3]);
  CropBox f2 = sample_crop(r2, 3, 50, 0.9, 1.0, 3.0 / 4, 4.0 / 3);
  EXPECT_TRUE(f2.top == fixtures::k_fallback_3x50[0] && f2.left == fixtures::k_fallback_3x50[1] &&
              f2.height == fixtures::k_fallback_3x50[2] && f2.width == fixtures::k_fallback_3x50[3],
              f2.top << "," << f2.left << "," << f2.height << "," << f2.width);
}

TEST("data: sampled augmentation rates match the configured probabilities") {
  ViewConfig v = plain_view(8, 3);
  v.blur_p = 0.5;
  v.solarize_p = 0.2;
  const int n = 6000;
  int flips = 0, jitters = 0, grays = 0, blurs = 0, solars = 0;
  double bsum = 0, hmin = 1, hmax = -1, smin = 9, smax = 0, area = 0;
  std::set<std::vector<int>> orders;
  for (int i = 0; i < n; ++i) {
    Rng rng(view_stream(77, 3, i, 0));
    AugmentParams p = sample_params(rng, v, 32, 32);
    flips += p.flip;
    grays += p.grayscale;
    solars += p.solarize;
    area += p.crop.height * p.crop.width / 1024.0;
    if (p.blur) {
      ++blurs;
      smin = std::min(smin, p.sigma);
      smax = std::max(smax, p.sigma);
    }
    if (p.jitter) {
      ++jitters;
      bsum += p.brightness;
      hmin = std::min(hmin, p.hue);
      hmax = std::max(hmax, p.hue);
      orders.insert(std::vector<int>(p.order, p.order + 4));
    }
  }
  auto near = [&](int count, double p) { return std::fabs(count - n * p) <= 4 * std::sqrt(n * p * (1 - p)) + 1; };
  EXPECT_TRUE(near(flips, 0.5), "flips " << flips);
  EXPECT_TRUE(near(jitters, 0.8), "jitters " << jitters);
  EXPECT_TRUE(near(grays, 0.2), "grayscale " << grays);
  EXPECT_TRUE(near(blurs, 0.5), "blurs " << blurs);
  EXPECT_TRUE(near(solars, 0.2), "solarize " << solars);
  EXPECT_TRUE(std::fabs(bsum / jitters - 1.0) < 0.02, "mean brightness factor " << bsum / jitters);
  EXPECT_TRUE(hmin >= -0.1 && hmin < -0.095 && hmax <= 0.1 && hmax > 0.095, "hue range " << hmin << ".." << hmax);
  EXPECT_TRUE(smin >= 0.1 && smin < 0.11 && smax <= 2.0 && smax > 1.99, "sigma range " << smin << ".." << smax);
  EXPECT_TRUE(orders.size() == 24, "jitter orders seen: " << orders.size());
  // Mean crop area fraction on a 32x32 image with scale (0.4, 1): torchvision's get_params gives
  // 0.6519 +- 0.0011 (20000 draws; below 0.7 because large crops at extreme ratios do not fit and are redrawn).
  EXPECT_TRUE(std::fabs(area / n - 0.652) < 0.008, "mean crop area " << area / n);
}

TEST("data: a view applies its sampled ops in order (composition check)") {
  const int H = 11, W = 9, C = 3;
  auto bytes = random_bytes(H * W * C, 99);
  ViewConfig v = plain_view(7, C);
  v.jitter_p = 1;
  v.grayscale_p = 0;
  v.blur_p = 1;
  v.solarize_p = 1;
  v.flip_p = 1;
  Rng rng(4242);
  AugmentParams p = sample_params(rng, v, H, W);
  REQUIRE(p.flip && p.jitter && p.blur && p.solarize);
  Scratch s;
  std::vector<float> out(C * 49, std::numeric_limits<float>::quiet_NaN());
  apply_view(out.data(), bytes.data(), H, W, C, v, p, s);
  // by hand
  Image img;
  std::vector<float> buf;
  resized_crop(img, bytes.data(), H, W, C, p.crop, 7, 7, buf);
  hflip(img);
  for (int op : p.order) {
    if (op == 0) adjust_brightness(img, p.brightness);
    if (op == 1) adjust_contrast(img, p.contrast);
    if (op == 2) adjust_saturation(img, p.saturation);
    if (op == 3) adjust_hue(img, p.hue);
  }
  gaussian_blur(img, p.sigma, buf);
  solarize(img);
  std::vector<float> ref(C * 49);
  normalize_to_chw(ref.data(), img, v.mean.data(), v.std.data());
  EXPECT_TRUE(std::memcmp(out.data(), ref.data(), ref.size() * 4) == 0);
}

TEST("data: batches are bit-identical across thread counts; outputs fully written") {
  const int N = 37, H = 13, W = 11, C = 3;
  auto bytes = random_bytes(static_cast<size_t>(N) * H * W * C, 5);
  ImageDataset one(bytes.data(), N, H, W, C, 1), three(bytes.data(), N, H, W, C, 3);
  std::vector<ViewConfig> views = {plain_view(9, C), plain_view(9, C), plain_view(5, C), plain_view(5, C),
                                   plain_view(5, C)};
  views[0].blur_p = 1.0;
  views[1].blur_p = 0.1;
  views[1].solarize_p = 0.2;
  for (size_t i = 2; i < views.size(); ++i) views[i].scale_lo = 0.05, views[i].scale_hi = 0.4, views[i].blur_p = 0.5;
  std::vector<int32_t> idx = {3, 36, 0, 17, 8, 21, 29};
  const int64_t B = idx.size();
  auto run = [&](ImageDataset& ds, uint64_t step) {
    std::vector<std::vector<float>> outs;
    std::vector<float*> ptrs;
    for (auto& v : views) outs.emplace_back(B * C * v.size * v.size, std::numeric_limits<float>::quiet_NaN());
    for (auto& o : outs) ptrs.push_back(o.data());
    ds.augment_batch(idx.data(), B, views, 1234, step, ptrs);
    return outs;
  };
  auto a = run(one, 7), b = run(three, 7), c = run(three, 8);
  for (size_t v = 0; v < views.size(); ++v) {
    REQUIRE(a[v].size() == b[v].size());
    EXPECT_TRUE(std::memcmp(a[v].data(), b[v].data(), a[v].size() * 4) == 0, "view " << v << " differs across threads");
    for (float x : a[v]) REQUIRE(std::isfinite(x), "unwritten (NaN) output in view " << v);
    EXPECT_TRUE(std::memcmp(a[v].data(), c[v].data(), a[v].size() * 4) != 0, "a different step must give different views");
  }
  // views of one image differ from each other (different streams)
  EXPECT_TRUE(std::memcmp(a[2].data(), a[3].data(), a[2].size() * 4) != 0);
  // the same (seed, step, index) in another batch position gives the same view
  std::vector<int32_t> idx2 = {21, 3};
  std::vector<float> o(2 * C * 81), o1(2 * C * 81);
  std::vector<ViewConfig> first = {views[0]};
  one.augment_batch(idx2.data(), 2, first, 1234, 7, {o.data()});
  EXPECT_TRUE(std::memcmp(o.data(), a[0].data() + 5 * C * 81, C * 81 * 4) == 0, "view depends on batch position");
}

TEST("data: eval batch = bicubic resize + normalise; bad inputs give E_ARG") {
  const int N = 4, H = 7, W = 9, C = 1;
  auto bytes = random_bytes(N * H * W * C, 8);
  ImageDataset ds(bytes.data(), N, H, W, C, 2);
  std::vector<int32_t> idx = {2, 0, 3};
  std::vector<float> mean = {0.3f}, stdv = {0.4f};
  std::vector<float> out(3 * 11 * 11, std::numeric_limits<float>::quiet_NaN());
  ds.eval_batch(idx.data(), 3, 11, mean, stdv, out.data());
  for (int b = 0; b < 3; ++b) {
    std::vector<double> img(H * W);
    for (int i = 0; i < H * W; ++i) img[i] = bytes[idx[b] * H * W + i] / 255.0;
    auto ref = naive_resize(img, H, W, 1, 11, 11);
    for (double& r : ref) r = (r - 0.3f) / 0.4f;
    EXPECT_REL(mtest::rel_error(out.data() + b * 121, ref.data(), 121), 1e-6, "eval image " << b);
  }
  // no resize when the size matches: exact normalisation of x / 255
  ImageDataset sq(bytes.data(), 3, 7, 7, 1, 1);
  std::vector<float> o2(49, NAN);
  int32_t i1 = 1;
  sq.eval_batch(&i1, 1, 7, mean, stdv, o2.data());
  for (int i = 0; i < 49; ++i) EXPECT_TRUE(std::fabs(o2[i] - (bytes[49 + i] / 255.f - 0.3f) / 0.4f) < 1e-6);

  int32_t bad = 4;
  EXPECT_THROWS_CODE(ds.eval_batch(&bad, 1, 11, mean, stdv, out.data()), "E_ARG");
  std::vector<float> three = {0.1f, 0.2f, 0.3f};
  EXPECT_THROWS_CODE(ds.eval_batch(idx.data(), 1, 11, three, three, out.data()), "E_ARG");
  ViewConfig v = plain_view(5, 1);
  v.scale_lo = 0;
  std::vector<float*> outs = {out.data()};
  EXPECT_THROWS_CODE(ds.augment_batch(idx.data(), 1, {v}, 1, 1, outs), "E_ARG");
  v = plain_view(5, 3);
  EXPECT_THROWS_CODE(ds.augment_batch(idx.data(), 1, {v}, 1, 1, outs), "E_ARG");
  int32_t neg = -1;
  EXPECT_THROWS_CODE(ds.augment_batch(&neg, 1, {plain_view(5, 1)}, 1, 1, outs), "E_ARG");
  EXPECT_THROWS_CODE(ImageDataset(bytes.data(), 0, 7, 9, 1, 1), "E_ARG");
}

TEST("data: seeded epoch permutations are permutations, reproducible, different per epoch") {
  std::vector<int32_t> a(1001), b(1001), c(1001);
  permutation(a.data(), 1001, 9, 0);
  permutation(b.data(), 1001, 9, 0);
  permutation(c.data(), 1001, 9, 1);
  EXPECT_TRUE(a == b);
  EXPECT_TRUE(a != c);
  std::vector<int32_t> s = a;
  std::sort(s.begin(), s.end());
  for (int i = 0; i < 1001; ++i) EXPECT_TRUE(s[i] == i);
  int fixed = 0;
  for (int i = 0; i < 1001; ++i) fixed += a[i] == i;
  EXPECT_TRUE(fixed < 8, "fixed points " << fixed);
}
