// batch.cpp: the native dataset (bytes stored once) and the seeded multi-threaded batch producer.
// Work is split into B x V image-view tasks handed out dynamically on the dataset's own ThreadPool
// (not the CPU backend's, so augmentation overlaps the training step instead of queueing behind
// it). Each task draws from its own counter-based stream (view_stream) and writes its own output
// slice, so results do not depend on the thread count or the order of work.
// Test: mveb_native_tests "data:" (determinism across 1 and 3 threads, index checks).
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "data/augment.h"

namespace mveb {
namespace data {

ImageDataset::ImageDataset(const uint8_t* bytes, int64_t n, int h, int w, int c, int threads)
    : n_(n), h_(h), w_(w), c_(c) {
  MVEB_CHECK(n >= 1, "E_ARG", "dataset: expected at least one image, found ", n);
  MVEB_CHECK(h >= 1 && w >= 1 && h <= 65536 && w <= 65536, "E_ARG", "dataset: image size must be in [1, 65536], found ", h,
             "x", w);
  MVEB_CHECK(c >= 1 && c <= 4, "E_ARG", "dataset: channels must be 1..4, found ", c);
  pixels_.assign(bytes, bytes + static_cast<size_t>(n) * h * w * c);
  pool_ = std::make_unique<ThreadPool>(threads <= 0 ? default_thread_count() : threads);
}

void ImageDataset::check_indices(const int32_t* indices, int64_t batch) const {
  MVEB_CHECK(batch >= 1, "E_ARG", "batch: expected at least one index, found ", batch);
  for (int64_t b = 0; b < batch; ++b)
    MVEB_CHECK(indices[b] >= 0 && indices[b] < n_, "E_ARG", "batch: index ", indices[b], " at position ", b,
               " is outside the dataset [0, ", n_, ")");
}

void ImageDataset::augment_batch(const int32_t* indices, int64_t batch, const std::vector<ViewConfig>& views,
                                 uint64_t seed, uint64_t step, const std::vector<float*>& outs) {
  check_indices(indices, batch);
  MVEB_CHECK(!views.empty() && outs.size() == views.size(), "E_ARG", "augment: expected one output per view (",
             views.size(), "), found ", outs.size());
  for (size_t v = 0; v < views.size(); ++v) validate_view(views[v], c_, "view");
  const int nviews = static_cast<int>(views.size());
  std::vector<Scratch> scratch(static_cast<size_t>(pool_->size()));
  pool_->parallel_tasks(batch * nviews, [&](int64_t task, int thread) {
    const int64_t b = task / nviews;
    const int v = static_cast<int>(task % nviews);
    const ViewConfig& cfg = views[v];
    Rng rng(view_stream(seed, step, indices[b], v));
    const AugmentParams p = sample_params(rng, cfg, h_, w_);
    const size_t slice = static_cast<size_t>(c_) * cfg.size * cfg.size;
    apply_view(outs[v] + b * slice, image(indices[b]), h_, w_, c_, cfg, p, scratch[thread]);
  });
}

void ImageDataset::eval_batch(const int32_t* indices, int64_t batch, int size, const std::vector<float>& mean,
                              const std::vector<float>& std, float* out) {
  check_indices(indices, batch);
  MVEB_CHECK(size >= 1 && size <= 8192, "E_ARG", "eval: size must be in [1, 8192], found ", size);
  MVEB_CHECK(static_cast<int>(mean.size()) == c_ && static_cast<int>(std.size()) == c_, "E_ARG",
             "eval: mean and std must have one value per channel (", c_, "), found ", mean.size(), " and ", std.size());
  for (float s : std) MVEB_CHECK(s > 0 && std::isfinite(s), "E_ARG", "eval: std must be positive, found ", s);
  struct EvalScratch {
    Image full, resized;
    std::vector<float> buffer;
  };
  std::vector<EvalScratch> scratch(static_cast<size_t>(pool_->size()));
  const size_t slice = static_cast<size_t>(c_) * size * size;
  pool_->parallel_tasks(batch, [&](int64_t b, int thread) {
    EvalScratch& s = scratch[thread];
    const uint8_t* src = image(indices[b]);
    s.full.resize(h_, w_, c_);
    for (size_t i = 0; i < s.full.px.size(); ++i) s.full.px[i] = src[i] * (1.f / 255.f);
    const Image* img = &s.full;
    if (h_ != size || w_ != size) {
      resize_float(s.resized, s.full, size, size, s.buffer);
      img = &s.resized;
    }
    normalize_to_chw(out + b * slice, *img, mean.data(), std.data());
  });
}

void permutation(int32_t* out, int64_t n, uint64_t seed, uint64_t epoch) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(i);
  Rng rng(hash2(seed ^ 0x7065726d75746531ull /* "permute1" */, epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = std::min<int64_t>(i, static_cast<int64_t>(rng.uniform() * static_cast<double>(i + 1)));
    std::swap(out[i], out[j]);
  }
}

}  // namespace data
}  // namespace mveb
