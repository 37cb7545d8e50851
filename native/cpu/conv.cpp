// conv.cpp: 2-D convolution on NHWC (groups 1, no bias; weights KRSC, output [N,P,Q,K]) through the
// CPU SGEMM. A 1x1 stride-1 unpadded convolution is a plain GEMM on the NHWC rows (no copy). Other
// shapes work on chunks of output rows (row = (n * P + p) * Q + q) small enough to stay in the L2
// cache (kChunkFloats per thread): each pool thread gathers its chunk's patches (im2col) into its own
// workspace and runs a single-threaded GEMM on it, so the patch matrix is never written to memory
// in full (with a filter of 4 MB or more, chunks of at least 128 rows: kBigFilterFloats). Few channels
// (C, K <= 16; and the stems, C <= 4 with K <= 64, on AVX-512) take the direct kernels of
// direct_conv.h in the forward and weight gradient instead. Per-thread buffers of these task-based
// paths live in CpuBackend::conv_task_workspace (kept between calls: no page faults per call):
//   forward          3x3 stride 1 with C, K >= 8: Winograd F(2x2, 3x3) (winograd_conv: input, filter
//                    and output transforms around 16 GEMMs per chunk of 2x2 output tiles); with
//                    32 <= C, K <= 512 and enough tiles F(4x4, 3x3) (winograd_conv m = 4: 36 GEMMs per
//                    chunk of 4x4 output tiles). Otherwise
//                    y[rows, K]      = col[rows, RSC] * w[K, RSC]^T
//   backward weight  1x1 stride 1: dw += dy^T x on the GEMM (C <= 64 < K: dw^T = x^T dy, added
//                    transposed). 3x3 stride 1 with C, K >= 16: Winograd F(2x2, 3x3) (winograd_weight: 16
//                    GEMMs over the transformed input and output-gradient tiles; on fp32 products only
//                    where it halves the multiplications), F(4x4, 3x3) where the forward uses it and it
//                    pays (use_winograd4_weight; m = 4, 36 GEMMs). Otherwise
//                    dw[K, RSC]     += dy[rows, K]^T * col[rows, RSC] (K > 128: dw^T += col^T * dy)
//                                      on the micro-kernel, the patches gathered straight into
//                                      packed panels (per-thread
//                                      partials, summed; ACCUMULATES into dw as backend.h says)
//   backward data    stride 1 (square filter, pad < R): the forward convolution of dy with the
//                    flipped, channel-transposed filter (pad R - 1 - pad); the adding variant
//                    (conv2d_backward_data_add) adds in Winograd's output transform, other paths
//                    through a kept temporary. Otherwise
//                    dcol[rows, RSC] = dy[rows, K] * w[K, RSC], scattered (col2im) into the thread's
//                    own images of dx (one image per task, so no two threads write the same pixel)
// With too few rows (or fewer images than threads) the GEMM itself is threaded instead, over one
// bounded workspace (kWorkspaceFloats, 16 MB).
// Tested by test/native/test_kernels.cpp ("kernels: conv ...") against the float64 reference, whose
// backward passes are checked by finite differences.
// -O2 (the project's flag) vectorises only loops with no run-time checks; these loops over channels
// need them, so this file asks for the dynamic cost model.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/batchnorm_fusion.h"
#include "cpu/cpu_backend.h"
#include "cpu/gemm.h"
#include "cpu/kernel_util.h"
#include "cpu/direct_conv.h"
#include "cpu/winograd_transforms.h"

namespace mveb {

MVEB_DEFINE_WINOGRAD_TRANSFORMS(winograd_transforms_scalar)
MVEB_DEFINE_DIRECT_CONV(direct_conv_scalar)

namespace {
WinogradTransforms winograd_transforms(Isa isa) {
  return isa == Isa::Avx512 ? winograd_transforms_avx512()
         : isa == Isa::Avx2 ? winograd_transforms_avx2()
                            : winograd_transforms_scalar();
}

constexpr int64_t kWorkspaceFloats = int64_t(4) << 20;
constexpr int64_t kChunkFloats = int64_t(192) << 10;  // 768 KB of patches per thread
// A filter of at least kBigFilterFloats (4 MB, twice L2) is streamed from L3 by every chunk's GEMM:
// the im2col forward and the scatter backward data give such filters at least kBigFilterMinRows rows
// per GEMM (see there).
constexpr int64_t kBigFilterFloats = int64_t(1) << 20;
constexpr int64_t kBigFilterMinRows = 128;
constexpr int64_t kWinogradSkew = 48;  // floats between Winograd's 16 matrices (3 cache lines)
constexpr int kWinogradMinChannels = 8;  // 3x3 stride 1 with C, K >= this: Winograd
// The weight gradient by Winograd only from this many channels: below, its two tile transforms per
// tile and 8 x 8 products cost more than the direct path saves (N512 C8 K8 28x28, the default
// pretrain's layer1: 13.0 -> 8.3 ms direct; C16 14x14 4.1 vs 4.3: even).
constexpr int kWinogradWeightMinChannels = 16;
// Winograd F(4x4, 3x3) instead of F(2x2, 3x3) for 32 <= C, K <= 512 with at least min(max(C, K),
// 128) 4x4 output tiles (its 36 filter transforms and packings cost more than F(2x2, 3x3)'s 16, which
// pays off only with enough tiles; one-thread N=128 forward: C64 32x32 36.8 -> 29 ms, C128 16x16 31.8
// -> 25, C256 8x8 30.5 -> 22). Since the filter is packed as it is transformed (winograd_filter),
// 128 tiles are enough at 256 and 512 channels too (two threads, forward / backward data ms, F(2x2)
// -> F(4x4): C512 4x4 N128 16.5-20 / 16.5-17 -> 14.2-14.9 / 13.6-14.3, N256 31 -> 21-23; C256 8x8
// N32 4.2-4.4 -> 3.5; with 64 tiles F(2x2) stays as fast or faster: C512 4x4 N64 8.6-8.8 vs 9.2, C512
// 7x7 N16 even, C256 14x14 N4 1.8 vs 2.3). Its relative error vs float64 is about 6x F(2x2, 3x3)'s
// and grows with C (1.5e-6 at C64, 3e-6 at C256, 3.2e-6 to 4.9e-6 at C512 against F(2x2)'s 5.5e-7 to
// 7.6e-7: the sampled test at 512 channels; backward weight 2e-6 against 3e-7): hence the upper
// bound on C and K. Backward weight, one-thread N=128: C64 32x32 44 -> 33 ms, C128 16x16 36 -> 25,
// C256 8x8 30 -> 23 (C512 4x4 N128, two threads: 21-23 by F(2x2), 27-29 by F(4x4): see
// use_winograd4_weight). From 32 channels (was 64) since the filter packing: the default pretrain
// encoder's layer3, C32 K32 7x7 N512, two threads, forward / backward data / weight 1.5-1.6 / 1.5-1.6
// / 2.9 -> 1.1 / 1.1 / 1.4 ms (its b512 step 0.164-0.175 -> 0.155-0.168 s); C32 32x32 N64 3.1-4.0 /
// 3.2 / 4.3-4.6 -> 2.2 / 2.2-2.4 / 2.8-2.9. At 16 and 8 channels the direct kernels stay ahead (N512
// C16 14x14 forward 2.2 ms direct, 2.5 F(4x4), 2.9 F(2x2); C8 28x28 3.0 / 5.5-6.0 / 8.6-9.2).
constexpr int kWinograd4MinChannels = 32;
constexpr int kWinograd4MaxChannels = 512;
constexpr int64_t kWinograd4MinTiles = 128;
// At matmul precision "high" on AMX, F(4x4)'s products stay fp32 (winograd_kernel) while F(2x2)'s run
// on AMX: F(2x2) wins from 256 channels (N16 C256 14x14 fwd + bwd data + bwd weight, 2 threads:
// 20.4 ms F(4x4) -> 12.6 ms F(2x2) on AMX; C128 28x28 15.4 vs 14.9, C64 56x56 15.1 vs 19.1 ms).
constexpr int kWinograd4MaxChannelsAmx = 128;
constexpr int64_t kWinograd4MinChunk = 64;  // tiles per F(4x4, 3x3) task, at least
constexpr int64_t kWinograd4WeightChunk = 128;  // tiles per F(4x4, 3x3) backward-weight task, at least (GEMM depth)
constexpr int64_t kWinograd4ChunkFloats = (int64_t(16) << 10) * 16 / 36;  // / (C + K): tiles per task
constexpr int64_t kWeightDepth = 256;    // patch rows per backward-weight task (GEMM depth)
// Backward weight's packed panels lie this many floats (one cache line) further apart than their
// size, so that one patch row's pieces, one per panel, do not all fall into the same L1 sets.
constexpr int kPanelSkew = 16;
constexpr int kWeightNarrowK = 128;  // backward weight: dy^T * col up to this K, else col^T * dy
constexpr int kWeightAmxMinK = 256;  // backward weight on AMX through the GEMM from this K (see there)
constexpr int kPointwiseNarrowC = 64;
// Rows per task of a pointwise forward that also computes the batch-norm statistics: input and output
// rows of about 1 MB together, so the chunk is still in L2 when its statistics are taken.
constexpr int64_t kStatsChunkFloats = int64_t(256) << 10;
// conv2d_backward's fused pointwise path: thread partials of the weight gradient up to this size (1 MB)
constexpr int64_t kFusedPartialFloats = int64_t(1) << 18;  // pointwise backward weight: as dw^T = x^T dy up to this C (< K)


// Whether a 3x3 stride-1 convolution takes F(4x4, 3x3) rather than F(2x2, 3x3) (see the constants).
bool use_winograd4(bool amx, int cmin, int cmax, int64_t tiles4) {
  return cmin >= kWinograd4MinChannels && cmax <= (amx ? kWinograd4MaxChannelsAmx : kWinograd4MaxChannels) &&
         tiles4 >= std::min<int64_t>(cmax, kWinograd4MinTiles);
}
// The weight gradient by F(4x4, 3x3) (its 36 [C, K] partial sums per thread, 2.25x F(2x2)'s 16, are
// read and written once per chunk of tiles and transformed back in double) only where it saves enough
// multiplications over enough tiles: with P and Q multiples of 4 (F(4x4) does 0.56x F(2x2)'s
// multiplications) from kWinograd4WeightMinTiles tiles, otherwise (14x14: 16 tiles of 16 for 49 of 4,
// 0.73x) from 4 tiles per channel of max(C, K). Two threads, F(4x4) vs F(2x2) ms: C256 8x8 N64 (256
// tiles) 5.3-5.7 vs 7.3-7.5, N128 9.4-11.5 vs 14.2-15.9; C128 28x28 N4 (196) 2.5 vs 2.0-2.2, N8 (392)
// 3.2-3.3 vs 3.4-3.5, N16 5.0 vs 6.6; C64 4x4 N64 (64, one thread) 0.63 vs 0.47-0.49, N512 2.0 vs 2.3;
// C256 14x14 N16 (1 tile per channel) 11.3-12.3 vs 7.5-8.1, N32 (2) 15.5-16.9 vs 13.6-13.8, N64 (4)
// 23.0-23.3 vs 23.7-23.8. (Forward and backward data keep F(4x4): C256 14x14 N16 one thread 9.1-9.5 /
// 8.9-9.4 ms vs F(2x2) 10.6-11.3 / 10.7-10.8.) With P and Q multiples of 4, 128 tiles are enough up to
// 256 channels (one thread, thread CPU time, F(2x2) -> F(4x4): C256 8x8 N32 8.2-8.7 -> 5.6-6.2 ms,
// C128 16x16 N8 2.2 -> 1.5-1.6, C64 32x32 N2 0.59 -> 0.44, C32 16x16 N8 0.23 -> 0.15; 64 tiles, C128
// 8x8 N16: even). (At 512 channels, with per-thread partials, F(2x2) had been faster: C512 4x4 N128
// 21-23 ms vs 27-29; those sizes now take the sums one matrix per task, below.)
constexpr int64_t kWinograd4WeightMinTiles = 128;
constexpr int kWinograd4WeightTilesPerChannel = 4;
// From C K = 2^18 (512 x 512) the weight gradient's tile sums are taken one matrix per task over all
// tiles at once, instead of per-thread partials over chunks of tiles (winograd_weight_partials): the
// partials were 16 or 36 MB per thread, read and written by every chunk and added up at the end. Two
// threads, backward weight ms, chunked -> one matrix per task: C512 4x4 N128 F(2x2) 18.5-23.7 ->
// 17.4-20.1, and by F(4x4) (which then pays from 128 tiles, edge tiles or not) 15.4-16.2; N256 F(4x4)
// 33-36 -> 26-27; C512 7x7 N32 22 (direct) -> 15.3-15.5 by F(4x4). Below, no gain (C256 14x14 N16,
// C256 8x8 N128: even) or a loss (C128 16x16 N128: 12.2 -> 15-16). The price: the transformed tiles
// and the sums of all tiles in the kept workspace (C512 4x4 N128 F(4x4): 2 x 9.4 + 38 MB), so more
// tiles than kWinogradWeightWholeMaxFloats of transforms (64 MB: C512 F(4x4) up to 455 tiles) keep the
// chunked partials.
constexpr int64_t kWinogradWeightWholeCK = int64_t(1) << 18;
constexpr int64_t kWinogradWeightWholeMaxFloats = int64_t(16) << 20;
bool use_winograd4_weight(bool amx, const ConvShape& s) {
  const int64_t tiles4 = static_cast<int64_t>(s.N) * ((s.P() + 3) / 4) * ((s.Q() + 3) / 4);
  const int cmin = std::min(s.C, s.K), cmax = std::max(s.C, s.K);
  const bool exact = s.P() % 4 == 0 && s.Q() % 4 == 0;
  if (!use_winograd4(amx, cmin, cmax, tiles4)) return false;
  if (static_cast<int64_t>(s.C) * s.K >= kWinogradWeightWholeCK) return true;  // tiles >= 128 (use_winograd4)
  return (exact && tiles4 >= kWinograd4WeightMinTiles) || tiles4 >= int64_t(kWinograd4WeightTilesPerChannel) * cmax;
}

bool is_pointwise(const ConvShape& s) { return s.R == 1 && s.S == 1 && s.stride == 1 && s.pad == 0; }

// Rows per task of the pointwise passes that work in chunks (forward with statistics, the fused
// backward): input and output rows of about kStatsChunkFloats together, at least 128.
int64_t pointwise_chunk_rows(const ConvShape& s) { return std::max<int64_t>(128, kStatsChunkFloats / (s.C + s.K)); }

// Where output row `row` = (n * P + p) * Q + q reads x: image n, first input column w0, and the
// filter taps [s_lo, s_hi) that fall inside the image (the others read the zero padding).
struct PatchRow {
  int64_t n;
  int p, w0, s_lo, s_hi;
};
inline PatchRow patch_row(const ConvShape& s, int64_t row) {
  const int P = s.P(), Q = s.Q();
  const int q = static_cast<int>(row % Q), p = static_cast<int>((row / Q) % P);
  const int w0 = q * s.stride - s.pad;
  return {row / (static_cast<int64_t>(P) * Q), p, w0, std::max(0, -w0), std::min(s.S, s.W - w0)};
}

// One patch row col[(r_, s_, c)] (R * S * C floats at d) of output row `row`: for each filter row the
// S taps read S * C contiguous floats of x (the part inside the image); taps in the padding are zeros.
void im2col_row(float* d, const float* x, const ConvShape& s, int64_t row) {
  const PatchRow pr = patch_row(s, row);
  const int C = s.C;
  const size_t row_floats = static_cast<size_t>(s.S) * C;
  for (int r = 0; r < s.R; ++r, d += row_floats) {
    const int h = pr.p * s.stride - s.pad + r;
    if (h < 0 || h >= s.H || pr.s_lo >= pr.s_hi) {
      std::memset(d, 0, sizeof(float) * row_floats);
      continue;
    }
    if (pr.s_lo > 0) std::memset(d, 0, sizeof(float) * static_cast<size_t>(pr.s_lo) * C);
    std::memcpy(d + static_cast<int64_t>(pr.s_lo) * C, x + ((pr.n * s.H + h) * s.W + pr.w0 + pr.s_lo) * C,
                sizeof(float) * static_cast<size_t>(pr.s_hi - pr.s_lo) * C);
    if (pr.s_hi < s.S)
      std::memset(d + static_cast<int64_t>(pr.s_hi) * C, 0, sizeof(float) * static_cast<size_t>(s.S - pr.s_hi) * C);
  }
}

// col[r - row0, (r_, s_, c)] for output rows [row0, row1).
void im2col(ThreadPool& pool, float* col, const float* x, const ConvShape& s, int64_t row0, int64_t row1) {
  const int64_t rsc = static_cast<int64_t>(s.R) * s.S * s.C;
  pool.parallel_for(row1 - row0, 16, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) im2col_row(col + i * rsc, x, s, row0 + i);
  });
}

// dx for images [n0, n1) from dcol holding the rows of those images: each input pixel gathers the
// patch entries that read it.
void col2im(ThreadPool& pool, float* dx, const float* dcol, const ConvShape& s, int n0, int n1) {
  const int P = s.P(), Q = s.Q(), C = s.C;
  const int64_t rsc = static_cast<int64_t>(s.R) * s.S * C;
  pool.parallel_for(static_cast<int64_t>(n1 - n0) * s.H, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t nh = b; nh < e; ++nh) {
      const int64_t nl = nh / s.H;  // image within the chunk
      const int h = static_cast<int>(nh % s.H);
      for (int w = 0; w < s.W; ++w) {
        float* d = dx + (((n0 + nl) * s.H + h) * s.W + w) * C;
        std::memset(d, 0, sizeof(float) * static_cast<size_t>(C));
        for (int r = 0; r < s.R; ++r) {
          const int hp = h + s.pad - r;
          if (hp < 0 || hp % s.stride) continue;
          const int p = hp / s.stride;
          if (p >= P) continue;
          for (int ss = 0; ss < s.S; ++ss) {
            const int wq = w + s.pad - ss;
            if (wq < 0 || wq % s.stride) continue;
            const int q = wq / s.stride;
            if (q >= Q) continue;
            const float* src = dcol + ((nl * P + p) * Q + q) * rsc + (static_cast<int64_t>(r) * s.S + ss) * C;
            for (int c = 0; c < C; ++c) d[c] += src[c];
          }
        }
      }
    }
  });
}
}  // namespace

namespace {
// Dynamic tasks over `rows` split into chunks of at most max_rows, the count a multiple of the
// thread count so the threads end together. Returns the chunk size (0: too little work to split).
int64_t balanced_chunk(int64_t rows, int64_t max_rows, int threads) {
  if (rows < 64 * static_cast<int64_t>(threads)) return 0;
  int64_t chunks = (rows + max_rows - 1) / max_rows;
  chunks = (chunks + threads - 1) / threads * threads;
  return (rows + chunks - 1) / chunks;
}

// Winograd's forward tasks over `tiles` output tiles (the M of their GEMMs): about `chunk` tiles each
// (0: one task), cut at whole MR-row panels of the micro-kernel (a partial panel goes through packing
// and a bounce tile; only the last task has one), the task count a multiple of the thread count and
// the panels spread evenly over the tasks, so that the threads (task i on thread i % threads) get
// equal work. (Equal chunks rounded to whole panels had left C256 14x14 N16, 256 tiles of F(4x4),
// as 70 + 70 | 70 + 46 tiles per thread.)
struct TileTasks {
  int64_t tiles, panels, tasks;
  int mr;
  int64_t begin(int64_t task) const { return std::min(tiles, task * panels / tasks * mr); }
  int64_t end(int64_t task) const { return begin(task + 1); }
  int64_t max_tiles() const { return (panels + tasks - 1) / tasks * mr; }
};
TileTasks tile_tasks(int64_t tiles, int64_t chunk, int mr, int threads) {
  const int64_t panels = (tiles + mr - 1) / mr;
  if (chunk == 0 || chunk >= tiles) return {tiles, panels, 1, mr};
  int64_t tasks = std::min(panels, (tiles + chunk - 1) / chunk);
  if (tasks >= threads) tasks = std::min(panels, (tasks + threads - 1) / threads * threads);
  return {tiles, panels, tasks, mr};
}

// dx_img (one image, zeroed by the caller) += the patch gradients dcol of output rows [p0, p1).
void col2im_scatter(float* dx_img, const float* dcol, const ConvShape& s, int p0, int p1) {
  const int Q = s.Q(), C = s.C;
  const int64_t rsc = static_cast<int64_t>(s.R) * s.S * C;
  for (int p = p0; p < p1; ++p)
    for (int q = 0; q < Q; ++q) {
      const float* src = dcol + (static_cast<int64_t>(p - p0) * Q + q) * rsc;
      // The taps of one filter row inside the image are one contiguous span in both dcol and dx.
      const int w0 = q * s.stride - s.pad;
      const int s_lo = std::max(0, -w0), s_hi = std::min(s.S, s.W - w0);
      if (s_lo >= s_hi) continue;
      const int64_t span = static_cast<int64_t>(s_hi - s_lo) * C;
      for (int r = 0; r < s.R; ++r) {
        const int h = p * s.stride - s.pad + r;
        if (h < 0 || h >= s.H) continue;
        float* d = dx_img + (static_cast<int64_t>(h) * s.W + w0 + s_lo) * C;
        const float* g = src + (static_cast<int64_t>(r) * s.S + s_lo) * C;
        for (int64_t i = 0; i < span; ++i) d[i] += g[i];
      }
    }
}

// The patch rows [row0, row0 + kc) packed as a micro-kernel operand: col [kc, RSC] in MR-wide
// panels (MR = the micro-kernel's MR or NR), element (k, i) = col[row0 + k, i] at
// Ap[(i / MR) * (kc * MR + kPanelSkew) + k * MR + i % MR]; the columns i in [RSC, m_panels * MR) are
// zeros. Runs on the calling thread. With C < MR (the stems: C = 3) each patch row is gathered into
// a contiguous buffer first and copied panel by panel in fixed-size pieces (the pieces of S * C
// floats cut across panels: one-thread CIFAR stem backward weight 13.1 -> 8.6 ms, resnet50's
// 7x7/2 42.9 -> 35.6 ms); wider C emits whole panels straight from x.
template <int MR>
void im2col_packed(float* Ap, const float* x, const ConvShape& s, int64_t row0, int kc, int m_panels) {
  const int C = s.C;
  const int rsc = s.R * s.S * C;
  const int64_t panel = static_cast<int64_t>(kc) * MR + kPanelSkew;
  if (C < MR) {
    std::vector<float> patch(static_cast<size_t>(m_panels) * MR, 0.f);  // the columns past RSC stay zero
    float* const pr = patch.data();
    for (int k = 0; k < kc; ++k) {
      im2col_row(pr, x, s, row0 + k);
      float* dst = Ap + static_cast<int64_t>(k) * MR;
      for (int ip = 0; ip < m_panels; ++ip, dst += panel) std::memcpy(dst, pr + ip * MR, sizeof(float) * MR);
    }
    return;
  }
  // Writes len values (src, or zeros when src is null) at patch offsets [off, off + len) of row k:
  // whole MR pieces are fixed-size copies.
  auto emit = [&](int k, int off, const float* src, int len) {
    float* const row = Ap + static_cast<int64_t>(k) * MR;
    while (len > 0) {
      const int pi = off / MR, i = off - pi * MR;
      float* d = row + pi * panel + i;
      if (i == 0 && len >= MR) {
        if (src) {
          std::memcpy(d, src, sizeof(float) * MR);
          src += MR;
        } else {
          std::memset(d, 0, sizeof(float) * MR);
        }
        off += MR;
        len -= MR;
        continue;
      }
      const int n = std::min(len, MR - i);
      if (src) {
        for (int j = 0; j < n; ++j) d[j] = src[j];
        src += n;
      } else {
        for (int j = 0; j < n; ++j) d[j] = 0.f;
      }
      off += n;
      len -= n;
    }
  };
  const int row_floats = s.S * C;
  for (int k = 0; k < kc; ++k) {
    const PatchRow pt = patch_row(s, row0 + k);
    const int64_t n = pt.n;
    const int w0 = pt.w0, s_lo = pt.s_lo, s_hi = pt.s_hi;
    for (int r = 0; r < s.R; ++r) {
      const int h = pt.p * s.stride - s.pad + r;
      const int base = r * row_floats;
      if (h < 0 || h >= s.H || s_lo >= s_hi) {
        emit(k, base, nullptr, row_floats);
        continue;
      }
      if (s_lo > 0) emit(k, base, nullptr, s_lo * C);
      emit(k, base + s_lo * C, x + ((n * s.H + h) * s.W + w0 + s_lo) * C, (s_hi - s_lo) * C);
      if (s_hi < s.S) emit(k, base + s_hi * C, nullptr, (s.S - s_hi) * C);
    }
    emit(k, rsc, nullptr, m_panels * MR - rsc);
  }
}

// fn(std::integral_constant<int, P>) for the micro-kernels' panel sizes P (their MR or NR), as
// compile-time constants; another P is an internal error named by `what`.
template <typename Fn>
void with_panel_size(int P, const char* what, const Fn& fn) {
  MVEB_CHECK((with_constant<32, 16, 14, 8, 6, 4>(P, fn)), "E_INTERNAL", what, " for panel size ", P);
}

// The same with the panel size P known at run time (the micro-kernel's MR or NR).
void im2col_packed(int P, float* Ap, const float* x, const ConvShape& s, int64_t row0, int kc, int panels) {
  with_panel_size(P, "conv2d_backward_weight: no patch packing", [&](auto p) {
    im2col_packed<decltype(p)::value>(Ap, x, s, row0, kc, panels);
  });
}

// rows rows of n floats (row k at src + k * ld) packed into W-wide panels (panel p at dst + p * pst,
// row k at + k * W), the last panel padded with zeros: the micro-kernel operand of dy's rows.
template <int W>
void pack_rows(float* dst, int64_t pst, const float* src, int64_t ld, int rows, int n) {
  for (int j0 = 0; j0 < n; j0 += W, dst += pst) {
    const int cols = std::min(W, n - j0);
    for (int k = 0; k < rows; ++k) {
      const float* sk = src + k * ld + j0;
      float* dk = dst + static_cast<int64_t>(k) * W;
      if (cols == W) {
        std::memcpy(dk, sk, sizeof(float) * W);
        continue;
      }
      int j = 0;
      for (; j < cols; ++j) dk[j] = sk[j];
      for (; j < W; ++j) dk[j] = 0.f;
    }
  }
}
void pack_rows(int W, float* dst, int64_t pst, const float* src, int64_t ld, int rows, int n) {
  with_panel_size(W, "conv2d_backward_weight: no packing", [&](auto p) {
    pack_rows<decltype(p)::value>(dst, pst, src, ld, rows, n);
  });
}

// The flipped filter as a row-major [RSC, C] GEMM operand: row (tap, k) = w[k, flipped tap, :] with
// flipped tap (R-1-r, S-1-s) for tap (r, s); one contiguous copy of C floats per row.
void flip_filter(ThreadPool& pool, float* wf, const float* w, const ConvShape& s) {
  const int RS = s.R * s.S, C = s.C, K = s.K;
  pool.parallel_for(static_cast<int64_t>(RS) * K, 16, [&](int64_t b, int64_t e, int) {
    for (int64_t row = b; row < e; ++row) {
      const int64_t tap = row / K, k = row % K;
      std::memcpy(wf + row * C, w + (k * RS + (RS - 1 - tap)) * C, sizeof(float) * static_cast<size_t>(C));
    }
  });
}
}  // namespace

namespace {
// dw += G^T dU G from the threads' partial sums dU (null entries: threads without a task), in blocks
// of kFinishC x kFinishK (c, k) on the pool, by this ISA's finish (finish2 or finish4); consecutive
// blocks continue along the same rows of dw.
void add_weight_blocks(ThreadPool& pool, float* dw, int C, int K, const std::vector<const float*>& parts,
                       int64_t pst, decltype(WinogradTransforms::finish2) finish) {
  constexpr int BC = wt::kFinishC, BK = wt::kFinishK;
  const int cb = (C + BC - 1) / BC, kb = (K + BK - 1) / BK;
  pool.parallel_for(static_cast<int64_t>(cb) * kb, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      const int k0 = static_cast<int>(i / cb) * BK, c0 = static_cast<int>(i % cb) * BC;
      finish(dw, C, K, parts.data(), static_cast<int>(parts.size()), pst, c0, std::min(BC, C - c0), k0,
             std::min(BK, K - k0));
    }
  });
}

// One Winograd F(m x m, 3x3) variant (m = 2 or 4): m + 2 input points per side, so (m + 2)^2
// transformed matrices; this ISA's tile, filter and weight-gradient transforms; tiles per task: at
// least min_chunk (forward) or weight_chunk (backward weight, the GEMM depth), else about
// chunk_floats / (C + K).
struct WinogradVariant {
  int m, matrices;
  decltype(WinogradTransforms::input2) input;
  decltype(WinogradTransforms::zt2) zt;
  decltype(WinogradTransforms::out2) out;
  decltype(WinogradTransforms::filter2) filter;
  decltype(WinogradTransforms::finish2) finish;
  int64_t min_chunk, weight_chunk, chunk_floats;
};
WinogradVariant winograd_variant(Isa isa, int m) {
  const WinogradTransforms tf = winograd_transforms(isa);
  if (m == 2) return {2, 16, tf.input2, tf.zt2, tf.out2, tf.filter2, tf.finish2, 128, 128, int64_t(16) << 10};
  return {4, 36, tf.input4, tf.zt4, tf.out4, tf.filter4, tf.finish4, kWinograd4MinChunk, kWinograd4WeightChunk,
          kWinograd4ChunkFloats};
}

// The GEMM kernel of a Winograd variant's products: F(4x4, 3x3) keeps the fp32 products at matmul
// precision "high" too: its output transform (coefficients up to 8) amplifies the bf16x3 products'
// error to ~5e-5 relative (C = K = 64), against ~1e-5 with F(2x2, 3x3).
gemm_detail::KernelInfo winograd_kernel(const CpuBackend& be, const WinogradVariant& v) {
  gemm_detail::KernelInfo kern = be.gemm_kernel();
  if (v.m == 4) kern.amx = false;
  return kern;
}

using PackedFilter = std::vector<std::unique_ptr<gemm_detail::PackedB>>;

// The transformed filter U_e = (G g G^T)_e, e < v.matrices, packed as the B operands of the products
// (op(B) = U_e [C, K]; matrix e in slot e of `filters`). The ISA's filter transform computes rows of
// the dimension not contiguous in w: [K, C] rows for the forward filter w[k, tap, c], [C, K] rows for
// backward data's flipped one, w[c, 8 - tap, k]. For the fp32 kernels, tasks of kern.nr such rows
// transform them into a per-thread scratch (ws.child(t), slot 2; one panel of output channels in the
// forward) and pack them from there while they are in cache: the whole transformed filter is never
// written out and read back (C256 K256 F(4x4): 9.4 MB each way per call; resnet50 b16 step, the 13
// Winograd convolutions' forward and backward data: filter transform + packing 30.7 -> 20.1 ms). AMX
// panels are packed from the whole transformed filter (ws slot 0).
PackedFilter winograd_filter(CpuBackend& be, const WinogradVariant& v, const gemm_detail::KernelInfo& kern,
                             const float* w, bool flipped, int C, int K, gemm_detail::Workspace& ws,
                             gemm_detail::Workspace& filters) {
  ThreadPool& pool = be.pool();
  const int outer = flipped ? C : K, inner = flipped ? K : C;
  PackedFilter packed(static_cast<size_t>(v.matrices));
  if (kern.amx) {
    // The matrices lie kWinogradSkew floats further apart than their size (C * K is often a multiple
    // of 4 KB: the transform's 16 or 36 store streams would share L1 sets).
    const int64_t ust = static_cast<int64_t>(C) * K + kWinogradSkew;
    ws.reserve(1);
    float* u = ws.get(0, static_cast<size_t>(v.matrices * ust));
    pool.parallel_for(outer, 1, [&](int64_t b, int64_t e, int) { v.filter(u, ust, w, flipped, C, K, b, e); });
    for (int e = 0; e < v.matrices; ++e)
      packed[static_cast<size_t>(e)].reset(
          new gemm_detail::PackedB(pool, kern, !flipped, K, C, u + e * ust, inner, &filters, e));
    return packed;
  }
  for (int e = 0; e < v.matrices; ++e)
    packed[static_cast<size_t>(e)].reset(new gemm_detail::PackedB(kern, K, C, &filters, e));
  const int rows = kern.nr;  // per task: forward, one panel of output channels
  const int64_t sst = static_cast<int64_t>(rows) * inner + kWinogradSkew;
  ws.children(pool.size());
  pool.parallel_for((outer + rows - 1) / rows, 1, [&](int64_t b, int64_t e, int t) {
    gemm_detail::Workspace& tw = *ws.child(t);
    tw.reserve(3);
    float* u = tw.get(2, static_cast<size_t>(v.matrices * sst));
    for (int64_t task = b; task < e; ++task) {
      const int r0 = static_cast<int>(task * rows), r1 = std::min(outer, r0 + rows);
      v.filter(u, sst, w + static_cast<int64_t>(r0) * 9 * inner, flipped, C, K, 0, r1 - r0);  // rows [r0, r1)
      for (int m = 0; m < v.matrices; ++m) {
        if (flipped) packed[static_cast<size_t>(m)]->pack_part(kern, u + m * sst, inner, false, r0, r1, 0, K);
        else packed[static_cast<size_t>(m)]->pack_part(kern, u + m * sst, inner, true, 0, C, r0, r1);
      }
    }
  });
  return packed;
}

// y by the packed transformed filter (winograd_filter), over chunks of output tiles: input
// transform, v.matrices GEMMs, output transform. Each pool thread's tile buffers are
// ws.child(thread)'s (CpuBackend::conv_task_workspace).
void winograd_forward_tiles(CpuBackend& be, const WinogradVariant& v, const gemm_detail::KernelInfo& kern, float* y,
                            const float* x, const ConvShape& s, const PackedFilter& packed, gemm_detail::Workspace& ws,
                            bool add) {
  ThreadPool& pool = be.pool();
  const int C = s.C, K = s.K, P = s.P(), Q = s.Q();
  const int TP = (P + v.m - 1) / v.m, TQ = (Q + v.m - 1) / v.m;
  const int64_t tiles = static_cast<int64_t>(s.N) * TP * TQ;
  const int T = pool.size();
  const gemm_detail::KernelInfo cached = gemm_detail::with_cached_a(kern);  // A: the task's V
  const TileTasks split =
      tile_tasks(tiles, balanced_chunk(tiles, std::max<int64_t>(v.min_chunk, v.chunk_floats / (C + K)), T), kern.mr, T);
  const int64_t chunk = split.max_tiles();
  std::vector<float> zeros(static_cast<size_t>(C), 0.f);
  // A large y is streamed past the caches (the AVX-512 output transforms; see CpuBackend::stream_bytes).
  const bool stream = be.streams(static_cast<int64_t>(s.N) * P * Q, K);  // (never when adding: out2 / out4)
  ws.children(T);
  pool.parallel_tasks(split.tasks, [&](int64_t task, int t) {
    gemm_detail::Workspace& tw = *ws.child(t);
    tw.reserve(2);
    float* V = tw.get(0, static_cast<size_t>(v.matrices * (chunk * C + kWinogradSkew)));
    float* M = tw.get(1, static_cast<size_t>(v.matrices * (chunk * K + kWinogradSkew) + K));  // + a spare row
    const int64_t t0 = split.begin(task);
    const int nt = static_cast<int>(split.end(task) - t0);
    // The matrices of a chunk lie kWinogradSkew floats further apart than their size, so the
    // transforms' store streams do not all map to the same L1 sets (sizes are often multiples of 4 KB).
    const int64_t vst = static_cast<int64_t>(nt) * C + kWinogradSkew;
    const int64_t mst = static_cast<int64_t>(nt) * K + kWinogradSkew;
    v.input(V, vst, x, s, TP, TQ, t0, nt, zeros.data());
    for (int e = 0; e < v.matrices; ++e)
      gemm_detail::gemm_run(pool, cached, false, false, nt, K, C, 1.f, V + e * vst, C, nullptr, 0, 0.f, M + e * mst, K,
                            packed[static_cast<size_t>(e)].get(), be.task_workspace(t));
    v.out(y, M, mst, P, Q, K, TP, TQ, t0, nt, M + v.matrices * mst, stream, add);  // edge outputs to the spare row
  });
}

// Backward weight's tile sums: per thread t, dU_e[C, K] = sum over its tiles of V_e^T Z_e (matrix e
// at e * (C * K + kWinogradSkew)), V the input transform and Z = A dY A^T the output-gradient
// transform, in ws.child(t) (with its tile buffers; kept between calls); threads that got no task
// have no entry. From C K = kWinogradWeightWholeCK (up to kWinogradWeightWholeMaxFloats of
// transforms) one part holds the sums over all tiles (one task per matrix, in ws itself). The caller
// adds the parts up and applies G^T . G.
std::vector<const float*> winograd_weight_partials(CpuBackend& be, const WinogradVariant& v, const float* dy,
                                                   const float* x, const ConvShape& s, gemm_detail::Workspace& ws) {
  ThreadPool& pool = be.pool();
  const gemm_detail::KernelInfo kern = winograd_kernel(be, v);
  const int C = s.C, K = s.K, P = s.P(), Q = s.Q();
  const int TP = (P + v.m - 1) / v.m, TQ = (Q + v.m - 1) / v.m;
  const int64_t tiles = static_cast<int64_t>(s.N) * TP * TQ;
  const int T = pool.size();
  int64_t chunk = balanced_chunk(tiles, std::max<int64_t>(v.weight_chunk, v.chunk_floats / (C + K)), T);
  if (chunk == 0) chunk = tiles;
  const int64_t est = static_cast<int64_t>(C) * K;
  std::vector<float> zeros(static_cast<size_t>(std::max(C, K)), 0.f);  // padding of x and of dy
  if (est >= kWinogradWeightWholeCK && v.matrices * tiles * (C + K) <= kWinogradWeightWholeMaxFloats) {
    // V and Z of all tiles (tasks of tile chunks, into ws slots 0 and 1), then one task per matrix:
    // S_e = V_e^T Z_e over all tiles, written once (slot 2): a single part, no partials to add up.
    const int64_t vst = tiles * C + kWinogradSkew, zst = tiles * K + kWinogradSkew, sst = est + kWinogradSkew;
    ws.reserve(3);
    float* V = ws.get(0, static_cast<size_t>(v.matrices * vst));
    float* Z = ws.get(1, static_cast<size_t>(v.matrices * zst));
    float* S = ws.get(2, static_cast<size_t>(v.matrices * sst));
    const int64_t tchunk = std::max<int64_t>(1, balanced_chunk(tiles, v.weight_chunk, T));
    pool.parallel_tasks((tiles + tchunk - 1) / tchunk, [&](int64_t task, int) {
      const int64_t t0 = task * tchunk;
      const int nt = static_cast<int>(std::min(tiles, t0 + tchunk) - t0);
      v.input(V + t0 * C, vst, x, s, TP, TQ, t0, nt, zeros.data());  // tile rows t0.. of every matrix
      v.zt(Z + t0 * K, zst, dy, P, Q, K, TP, TQ, t0, nt, zeros.data());
    });
    pool.parallel_tasks(v.matrices, [&](int64_t e, int t) {
      gemm_detail::gemm_run(pool, kern, true, false, C, K, static_cast<int>(tiles), 1.f, V + e * vst, C, Z + e * zst, K,
                            0.f, S + e * sst, K, nullptr, be.task_workspace(t));
    });
    return {S};
  }
  std::vector<float*> partial(static_cast<size_t>(T), nullptr);
  ws.children(T);
  pool.parallel_tasks((tiles + chunk - 1) / chunk, [&](int64_t task, int t) {
    gemm_detail::Workspace& tw = *ws.child(t);
    tw.reserve(3);
    float* V = tw.get(0, static_cast<size_t>(v.matrices * (chunk * C + kWinogradSkew)));
    float* Z = tw.get(1, static_cast<size_t>(v.matrices * (chunk * K + kWinogradSkew)));
    float*& acc = partial[static_cast<size_t>(t)];
    const bool first = !acc;
    if (first) acc = tw.get(2, static_cast<size_t>(v.matrices * (est + kWinogradSkew)));
    const int64_t t0 = task * chunk;
    const int nt = static_cast<int>(std::min(tiles, t0 + chunk) - t0);
    const int64_t vst = static_cast<int64_t>(nt) * C + kWinogradSkew;
    const int64_t zst = static_cast<int64_t>(nt) * K + kWinogradSkew;
    v.input(V, vst, x, s, TP, TQ, t0, nt, zeros.data());
    v.zt(Z, zst, dy, P, Q, K, TP, TQ, t0, nt, zeros.data());
    float* S = acc;
    for (int e = 0; e < v.matrices; ++e)  // S_e[C, K] (+)= V_e^T Z_e
      gemm_detail::gemm_run(pool, kern, true, false, C, K, nt, 1.f, V + e * vst, C, Z + e * zst, K, first ? 0.f : 1.f,
                            S + e * (est + kWinogradSkew), K, nullptr, be.task_workspace(t));
  });
  std::vector<const float*> parts;
  for (float* p : partial)
    if (p) parts.push_back(p);
  return parts;
}

// Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2015): each 2x2 output tile is
// A^T [ (G g G^T) .* (B^T d B) ] A over its 4x4 input tile d, so the products become 16 GEMMs
// (one per element e of the 4x4 transformed tile) M_e[tiles, K] = V_e[tiles, C] * U_e[C, K] with
// 2.25x fewer multiplications than im2col. filt(k, tap, c) is the filter value for output channel
// k, tap r * 3 + s, input channel c. The data transforms (tf: input, output, output gradient) are in
// winograd_transforms.h, compiled once per ISA.
//
// Winograd F(4x4, 3x3) (points 0, +-1, +-2, inf) for the deep 3x3 stride-1 convolutions (C, K >=
// kWinograd4MinChannels): 6x6 input tiles, 36 GEMMs per chunk of 4x4 output tiles, 4x fewer
// multiplications than im2col. Same layout and roles of filt / flipped. B^T = [4 0 -5 0 1 0;
// 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1], G = [1/4 0 0;
// -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1], A^T = [1 1 1 1 1 0;
// 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
//
// dw += the weight gradient of a 3x3 stride-1 convolution by the same F(m x m, 3x3) algorithm: with
// Y = A^T [U .* V] A per tile and U = G g G^T, dU_e = sum over tiles of V_e[t, :]^T Z_e[t, :] where
// Z = A dY A^T (dY the tile's m x m output gradient, zero outside P x Q), and dg = G^T dU G (in
// double for F(4x4)): (m + 2)^2 GEMMs of depth = tiles, accumulated per thread, then summed and
// transformed back.
void winograd_weight(CpuBackend& be, int m, float* dw, const float* dy, const float* x, const ConvShape& s) {
  const WinogradVariant v = winograd_variant(be.isa(), m);
  const int64_t est = static_cast<int64_t>(s.C) * s.K;
  gemm_detail::WorkspaceLease lease(be.conv_task_workspace());  // (a call that finds it busy: its own)
  const std::vector<const float*> partial = winograd_weight_partials(be, v, dy, x, s, lease.get());
  // dw[k, r, s, c] += (G^T S G)[r, s] for S[u][v] = sum over threads of S_(u*(m+2)+v)[c, k] (F(4x4): in double).
  add_weight_blocks(be.pool(), dw, s.C, s.K, partial, est + kWinogradSkew, v.finish);
}

// y (add: y +=) by F(m x m, 3x3), m = 2 or 4 (filt / flipped as described above).
void winograd_conv(CpuBackend& be, int m, float* y, const float* x, const ConvShape& s, const float* w, bool flipped,
                   bool add = false) {
  const WinogradVariant v = winograd_variant(be.isa(), m);
  const gemm_detail::KernelInfo kern = winograd_kernel(be, v);
  gemm_detail::WorkspaceLease lease(be.conv_task_workspace());  // (a call that finds it busy: its own)
  gemm_detail::WorkspaceLease filters(be.filter_workspace());
  const PackedFilter packed = winograd_filter(be, v, kern, w, flipped, s.C, s.K, lease.get(), filters.get());
  winograd_forward_tiles(be, v, kern, y, x, s, packed, lease.get(), add);
}

}  // namespace

namespace {
// conv_forward_impl for C, K <= kDirectMaxChannels (direct_conv.h): the filter rearranged into
// [tap, c][KP] rows (flipped as described below), output rows in tasks of kDirectRows, each task
// also taking its chunk's channel moments when stats is wanted. Always computes stats when asked.
constexpr int64_t kDirectRows = 512;
DirectConv direct_conv(Isa isa) {
  return isa == Isa::Avx512 ? direct_conv_avx512() : isa == Isa::Avx2 ? direct_conv_avx2() : direct_conv_scalar();
}
// Whether a convolution takes the direct kernels (all three passes): few channels. N512 3x3 stride
// 1, one thread: 16x16 channels at 14x14 Winograd 5.1 ms forward / 5.0 backward data, direct 3.5 /
// 3.5 (3.4 ms at two threads before the kernel read padded lines: Winograd was kept for it then);
// 8x8 at 28x28: Winograd 8.3, direct 4.6, the pair kernel 5.5 at one thread; the 1-channel stem 5.0 -> 1.9.
bool use_direct(const ConvShape& s) { return s.C <= kDirectMaxChannels && s.K <= kDirectMaxChannels; }
// The forward and weight gradient of a stem (few input channels, 16 < K <= 64) by the wide direct
// kernels, where the ISA has them (AVX-512). One thread, forward / weight gradient: N16 7x7/2 C3 K64
// 224x224 35-36 / 37-38 -> 24 / 27-29 ms (im2col of 147-float patch rows + GEMM before), N128 3x3 C3
// K64 32x32 6.5 / 7.5-7.9 -> 3.7 / 3.8-4.0, N512 3x3 C1 K32 28x28 11.8 / 18-20 -> 4.3 / 3.9.
bool use_direct_wide(Isa isa, const ConvShape& s) {
  return s.C <= kDirectWideMaxC && s.K > kDirectMaxChannels && s.K <= kDirectWideMaxK && direct_conv(isa).wide_rows;
}
// Floats per filter (and weight-gradient) row of the direct kernels for K output channels: 8, 16, or
// whole vectors of 16 for the wide kernels.
int direct_row_floats(int K) { return K <= 8 ? 8 : (K + 15) / 16 * 16; }

// dw += the weight gradient by the direct kernel: per-thread [RS C][KP] partials over tasks of
// kDirectRows output rows, added into dw (KRSC) at the end.
void direct_weight(CpuBackend& be, float* dw, const float* dy, const float* x, const ConvShape& s) {
  const int RS = s.R * s.S, C = s.C, K = s.K, KP = direct_row_floats(K), T = be.pool().size();
  const DirectConv dc = direct_conv(be.isa());
  const DirectWeightRows fn = KP == 8 ? dc.weight8 : KP == 16 ? dc.weight16 : dc.wide_weight;
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  std::vector<std::vector<float>> partial(static_cast<size_t>(T));
  be.pool().parallel_tasks((rows + kDirectRows - 1) / kDirectRows, [&](int64_t task, int t) {
    auto& acc = partial[static_cast<size_t>(t)];
    if (acc.empty()) acc.assign(static_cast<size_t>(RS) * C * KP, 0.f);
    fn(acc.data(), dy, x, s, task * kDirectRows, std::min(rows, (task + 1) * kDirectRows));
  });
  for (const auto& acc : partial) {
    if (acc.empty()) continue;
    for (int k = 0; k < K; ++k)
      for (int i = 0; i < RS * C; ++i) dw[static_cast<int64_t>(k) * RS * C + i] += acc[static_cast<size_t>(i) * KP + k];
  }
}

// Tasks over the output rows in chunks of `chunk`: fn(r0, r1, t, out) writes y's rows [r0, r1) on
// pool thread t to out (row r0 first; y + r0 K unless staged); with stats each task then takes its
// chunk's channel moments while the chunk is in cache, and stats receives y's per-channel mean and
// biased variance. Returns whether it did (stats given).
// A large y with stats (may_stage; at least stream_bytes, AVX-512, whole aligned vectors) is staged:
// fn writes the chunk to a buffer of its thread that stays in L2, and the moments pass copies it to y
// with non-temporal stores, which saves the read for ownership of every line of y (written in place,
// y left L2 at once and came back for the moments). resnet50 b16 step, 2 threads: the four C64 ->
// K256 56x56 forwards 34 -> 28-30 ms; C256 K1024 14x14 (12.8 MB, under the threshold) measured 5 %
// slower staged (one thread).
template <typename RowsFn>
bool output_chunks(CpuBackend& be, float* y, int K, int64_t rows, int64_t chunk, double* stats, bool may_stage,
                   const RowsFn& fn) {
  const int64_t tasks = (rows + chunk - 1) / chunk;
  std::vector<ChannelMoments> moments(stats ? static_cast<size_t>(tasks) : 0);
  const bool stage = may_stage && stats && be.isa() == Isa::Avx512 && K % 16 == 0 &&
                     (reinterpret_cast<uintptr_t>(y) & 63) == 0 && be.streams(rows, K);
  gemm_detail::WorkspaceLease lease(stage ? be.stage_workspace() : nullptr);
  if (stage) lease.get().reserve(be.pool().size());
  be.pool().parallel_tasks(tasks, [&](int64_t task, int t) {
    const int64_t r0 = task * chunk, r1 = std::min(rows, r0 + chunk);
    float* out = stage ? lease.get().get(t, static_cast<size_t>(chunk) * K) : y + r0 * K;
    fn(r0, r1, t, out);
    if (stats)
      block_moments(be.isa(), out, r1 - r0, K, moments[static_cast<size_t>(task)], stage ? y + r0 * K : nullptr);
  });
  if (stats) finish_moments(moments, K, stats);
  return stats != nullptr;
}

bool direct_forward(CpuBackend& be, float* y, const float* x, const float* w, bool flipped, const ConvShape& s,
                    double* stats) {
  const int RS = s.R * s.S, C = s.C, K = s.K, KP = direct_row_floats(K);
  std::vector<float> wt(static_cast<size_t>(RS) * C * KP, 0.f);
  for (int tap = 0; tap < RS; ++tap)
    for (int c = 0; c < C; ++c)
      for (int k = 0; k < K; ++k)  // flipped: w is the original [C][RS][K] filter of backward data
        wt[(static_cast<size_t>(tap) * C + c) * KP + k] =
            flipped ? w[(static_cast<int64_t>(c) * RS + (RS - 1 - tap)) * K + k] : w[(static_cast<int64_t>(k) * RS + tap) * C + c];
  const DirectConv dc = direct_conv(be.isa());
  const DirectConvRows fn = KP == 8 ? dc.rows8 : KP == 16 ? dc.rows16 : dc.wide_rows;
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  // (the kernels index y by absolute row: written in place, never staged)
  return output_chunks(be, y, K, rows, kDirectRows, stats, false,
                       [&](int64_t r0, int64_t r1, int, float*) { fn(y, x, wt.data(), s, r0, r1); });
}

// Output rows per im2col task of a convolution's forward (0: too few rows for tasks): chunks of
// patches in L2, except with a big filter (3x3/2 C512 K512 14x14 N16, one thread: 42-row chunks
// 20.2-20.7 ms, 128 rows 19.0). Pointwise convolutions take no patches (0).
int64_t patch_chunk(const ConvShape& s, int threads) {
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  const int64_t rsc = static_cast<int64_t>(s.R) * s.S * s.C;
  const int64_t min_rows = rsc * s.K >= kBigFilterFloats ? kBigFilterMinRows : 16;
  return is_pointwise(s) ? 0 : balanced_chunk(rows, std::max<int64_t>(min_rows, kChunkFloats / rsc), threads);
}

// The Winograd tile size (2 or 4) conv_forward_impl computes s's forward with, or 0 when it takes
// another path (direct kernels for few channels, im2col, or a plain GEMM): 3x3 stride 1 with C, K >=
// kWinogradMinChannels and enough rows for tasks.
int winograd_tile(CpuBackend& be, const ConvShape& s) {
  if (use_direct(s) || use_direct_wide(be.isa(), s)) return 0;
  if (!(s.R == 3 && s.S == 3 && s.stride == 1 && s.C >= kWinogradMinChannels && s.K >= kWinogradMinChannels) ||
      patch_chunk(s, be.pool().size()) == 0)
    return 0;
  const int64_t tiles4 = static_cast<int64_t>(s.N) * ((s.P() + 3) / 4) * ((s.Q() + 3) / 4);
  return use_winograd4(be.gemm_kernel().amx, std::min(s.C, s.K), std::max(s.C, s.K), tiles4) ? 4 : 2;
}

// y = conv(x, filter). flipped = false: the filter is w in KRSC (the forward pass). flipped = true:
// backward data's filter, op(B)[(tap, k), c] = w[c, RS - 1 - tap, k] of the original KRSC w (here
// s.C is the original K and s.K the original C), packed straight from w or materialised by
// flip_filter for the plain-GEMM paths. stats (may be null): where the path works on chunks of output
// rows (im2col chunks, and pointwise forwards with stats), each task also takes its chunk's channel
// moments while the chunk is in cache, and stats receives y's per-channel mean and biased variance
// (conv2d_forward_stats); returns whether it did.
bool conv_forward_impl(CpuBackend& be, float* y, const float* x, const float* w, bool flipped, const ConvShape& s,
                       double* stats) {
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  const int rsc = s.R * s.S * s.C;
  if (rows == 0) return false;
  ThreadPool& pool = be.pool();
  const gemm_detail::KernelInfo kern = be.gemm_kernel();
  const int T = pool.size();
  if (stats && !flipped && is_pointwise(s)) {
    const int64_t pchunk = balanced_chunk(rows, pointwise_chunk_rows(s), T);
    if (pchunk > 0) {
      gemm_detail::WorkspaceLease filter(be.filter_workspace());
      const gemm_detail::PackedB wt(pool, kern, true, s.K, s.C, w, s.C, &filter.get());
      return output_chunks(be, y, s.K, rows, pchunk, stats, true, [&](int64_t r0, int64_t r1, int t, float* out) {
        gemm_detail::gemm_run(pool, kern, false, true, static_cast<int>(r1 - r0), s.K, s.C, 1.f, x + r0 * s.C, s.C,
                              nullptr, 0, 0.f, out, s.K, &wt, be.task_workspace(t));
      });
    }
  }
  if (use_direct(s) || use_direct_wide(be.isa(), s)) return direct_forward(be, y, x, w, flipped, s, stats);
  if (const int m = winograd_tile(be, s)) {
    winograd_conv(be, m, y, x, s, w, flipped);
    return false;
  }
  const int64_t chunk = patch_chunk(s, T);
  if (chunk > 0) {
    const int RS = s.R * s.S;
    gemm_detail::WorkspaceLease filter(be.filter_workspace());
    const gemm_detail::PackedB wt =
        flipped ? gemm_detail::PackedB(pool, kern, s.K, rsc,
                                       [&](int k) {
                                         const int tap = k / s.C, ko = k % s.C;
                                         return w + (static_cast<int64_t>(ko) * RS + (RS - 1 - tap)) * s.K;
                                       },
                                       &filter.get())
                : gemm_detail::PackedB(pool, kern, true, s.K, rsc, w, rsc, &filter.get());
    gemm_detail::WorkspaceLease lease(be.conv_task_workspace());  // each thread's patch chunk: child(t)
    gemm_detail::Workspace& ws = lease.get();
    ws.children(T);
    return output_chunks(be, y, s.K, rows, chunk, stats, true, [&](int64_t r0, int64_t r1, int t, float* out) {
      gemm_detail::Workspace& tw = *ws.child(t);
      tw.reserve(1);
      float* col = tw.get(0, static_cast<size_t>(chunk * rsc));
      im2col(pool, col, x, s, r0, r1);
      gemm_detail::gemm_run(pool, gemm_detail::with_cached_a(kern), false, true, static_cast<int>(r1 - r0), s.K, rsc, 1.f, col, rsc,
                            nullptr, 0, 0.f, out, s.K, &wt, be.task_workspace(t));
    });
  }
  // Plain GEMMs: op(B) = w^T, or the flipped filter materialised as a row-major [RSC, K] matrix.
  std::unique_ptr<ScratchBuffer> wf;
  if (flipped) {
    wf.reset(new ScratchBuffer(static_cast<size_t>(rsc) * s.K));
    const ConvShape orig{s.N, s.P(), s.Q(), s.K, s.C, s.R, s.S, 1, s.R - 1 - s.pad};
    flip_filter(pool, wf->get(), w, orig);
  }
  const float* B = flipped ? wf->get() : w;
  const bool transB = !flipped;
  const int ldb = transB ? rsc : s.K;
  if (is_pointwise(s)) {
    be.gemm(false, transB, static_cast<int>(rows), s.K, s.C, 1.f, x, s.C, B, ldb, 0.f, y, s.K);
    return false;
  }
  const int64_t big = std::max<int64_t>(1, std::min<int64_t>(rows, kWorkspaceFloats / rsc));
  ScratchBuffer col(static_cast<size_t>(big * rsc));
  for (int64_t r0 = 0; r0 < rows; r0 += big) {
    const int64_t r1 = std::min(rows, r0 + big);
    im2col(pool, col.get(), x, s, r0, r1);
    be.gemm(false, transB, static_cast<int>(r1 - r0), s.K, rsc, 1.f, col.get(), rsc, B, ldb, 0.f, y + r0 * s.K, s.K);
  }
  return false;
}
}  // namespace

void CpuBackend::conv2d_forward(float* y, const float* x, const float* w, const ConvShape& s) {
  check_conv_shape("conv2d_forward", s);
  conv_forward_impl(*this, y, x, w, false, s, nullptr);
}

bool CpuBackend::conv2d_forward_stats(float* y, double* stats, const float* x, const float* w, const ConvShape& s) {
  check_conv_shape("conv2d_forward_stats", s);
  return conv_forward_impl(*this, y, x, w, false, s, stats);
}

void CpuBackend::conv2d_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s) {
  check_conv_shape("conv2d_backward_data", s);
  conv_backward_data(dx, dy, w, s, false);
}

void CpuBackend::conv2d_backward_data_add(float* dx, const float* dy, const float* w, const ConvShape& s) {
  check_conv_shape("conv2d_backward_data_add", s);
  conv_backward_data(dx, dy, w, s, true);
}

void CpuBackend::conv_backward_data(float* dx, const float* dy, const float* w, const ConvShape& s, bool add) {
  if (s.N == 0) return;
  const int rsc = s.R * s.S * s.C;
  const int P = s.P(), Q = s.Q();
  const int64_t pq = static_cast<int64_t>(P) * Q;
  const int T = pool().size();
  if (is_pointwise(s)) {
    gemm(false, false, static_cast<int>(s.N * pq), s.C, s.K, 1.f, dy, s.K, w, s.C, add ? 1.f : 0.f, dx, s.C);
    return;
  }
  const bool as_forward = s.stride == 1 && s.R == s.S && s.pad <= s.R - 1;  // see below
  const bool scatter = !as_forward && s.N >= T;
  // the forward convolution of dy that gives dx (as_forward, below)
  const ConvShape t{s.N, P, Q, s.K, s.C, s.R, s.S, 1, s.R - 1 - s.pad};
  if (add && as_forward) {
    // Winograd adds in its output transform (a residual block's first convolution: resnet18-cifar's
    // identity blocks). The other forward paths assign, so they go through the temporary below.
    if (const int m = winograd_tile(*this, t)) {
      winograd_conv(*this, m, dx, dy, t, w, true, true);
      return;
    }
  }
  if (add && !scatter) {  // the paths that assign: into a kept temporary, then dx += it
    const size_t n = static_cast<size_t>(s.N) * s.H * s.W * s.C;
    gemm_detail::WorkspaceLease lease(conv_workspace());
    gemm_detail::Workspace& ws = lease.get();
    ws.reserve(2);
    float* tmp = ws.get(1, n);
    conv_backward_data(tmp, dy, w, s, false);
    axpy(dx, 1.f, tmp, n);
    return;
  }
  if (as_forward) {
    // Stride 1: dx is the forward convolution of dy (zero-padded by R - 1 - pad) with the filter
    // flipped in space and transposed in channels, w'[c, r, s, k] = w[k, R-1-r, S-1-s, c]: an
    // im2col + deep GEMM with no scatter.
    conv_forward_impl(*this, dx, dy, w, true, t, nullptr);
    return;
  }
  const int64_t image = static_cast<int64_t>(s.H) * s.W * s.C;
  if (scatter) {
    // Tasks of whole images; bands of output rows small enough for the cache. Small outputs put
    // several images into one GEMM (with one image of 4x4 outputs per task, C256 K512 8x8 streamed
    // the whole packed filter for 16 rows at a time).
    const gemm_detail::KernelInfo kern = gemm_kernel();
    gemm_detail::WorkspaceLease filter(filter_workspace());
    const gemm_detail::PackedB wt(pool(), kern, false, rsc, s.K, w, rsc, &filter.get());
    // output rows p per band: dcol in L2, except that a filter too big for L2 (streamed from L3 by every
    // GEMM) gets at least kBigFilterMinRows rows per GEMM (3x3/2 C512 K512 14x14, N16, one thread: GEMMs
    // of 42 and 7 rows per image, 27-29 ms; several whole images per GEMM, 22-24 ms)
    const bool big_filter = static_cast<int64_t>(rsc) * s.K >= kBigFilterFloats;
    const int64_t fit = std::max<int64_t>(kChunkFloats, big_filter ? kBigFilterMinRows * rsc : 0) / (Q * static_cast<int64_t>(rsc));
    const int band = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(P, fit)));
    const int group = static_cast<int>(std::max<int64_t>(
        1, std::min<int64_t>(fit / P, (s.N + T - 1) / T)));  // images per task (when whole images fit)
    const int64_t dcol_rows = std::max<int64_t>(static_cast<int64_t>(band) * Q, group * pq);
    gemm_detail::WorkspaceLease lease(conv_task_workspace());  // each thread's dcol: child(t)
    gemm_detail::Workspace& ws = lease.get();
    ws.children(T);
    pool().parallel_tasks((s.N + group - 1) / group, [&](int64_t task, int t) {
      gemm_detail::Workspace& tw = *ws.child(t);
      tw.reserve(1);
      float* const dcol = tw.get(0, static_cast<size_t>(dcol_rows * rsc));
      const int64_t n0 = task * group, n1 = std::min<int64_t>(s.N, n0 + group);
      if (!add) std::memset(dx + n0 * image, 0, sizeof(float) * static_cast<size_t>((n1 - n0) * image));
      if (group > 1) {
        gemm_detail::gemm_run(pool(), kern, false, false, static_cast<int>((n1 - n0) * pq), rsc, s.K, 1.f,
                              dy + n0 * pq * s.K, s.K, nullptr, 0, 0.f, dcol, rsc, &wt,
                              task_workspace(t));
        for (int64_t n = n0; n < n1; ++n) col2im_scatter(dx + n * image, dcol + (n - n0) * pq * rsc, s, 0, P);
        return;
      }
      float* dx_img = dx + n0 * image;
      for (int p0 = 0; p0 < P; p0 += band) {
        const int p1 = std::min(P, p0 + band);
        gemm_detail::gemm_run(pool(), kern, false, false, (p1 - p0) * Q, rsc, s.K, 1.f,
                              dy + (n0 * pq + static_cast<int64_t>(p0) * Q) * s.K, s.K, nullptr, 0, 0.f, dcol,
                              rsc, &wt, task_workspace(t));
        col2im_scatter(dx_img, dcol, s, p0, p1);
      }
    });
    return;
  }
  const int images = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(s.N, kWorkspaceFloats / (pq * rsc))));
  ScratchBuffer dcol(static_cast<size_t>(images * pq * rsc));
  for (int n0 = 0; n0 < s.N; n0 += images) {
    const int n1 = std::min(s.N, n0 + images);
    gemm(false, false, static_cast<int>((n1 - n0) * pq), rsc, s.K, 1.f, dy + n0 * pq * s.K, s.K, w, rsc, 0.f,
         dcol.get(), rsc);
    col2im(pool(), dx, dcol.get(), s, n0, n1);
  }
}

namespace {
// How a pointwise convolution's weight gradient is computed (conv2d_backward_weight and the fused
// pass below): with a narrow side (min(C, K) <= 64) on fp32 at matmul precision high too (the AMX
// path's split packing of the deep, DRAM-resident operands costs more than it saves: resnet50 b16
// step at high, C64 K256 56x56 33 -> 27 ms, C256 K64 16 -> 14), and with C <= 64 < K as dw^T = x^T dy
// into a [C, K] temporary added transposed (the wide dy is then the B operand, read in place, instead
// of the A operand packed from its columns: N16 C64 K256 56x56, 2 threads, 234-282 -> 292-334
// GFLOP/s); otherwise dw [K, C] += dy^T x directly.
struct PointwiseWeight {
  gemm_detail::KernelInfo kern;
  bool transposed;
};
PointwiseWeight pointwise_weight(const CpuBackend& be, const ConvShape& s) {
  const bool narrow = std::min(s.C, s.K) <= kPointwiseNarrowC;
  return {narrow ? gemm_detail::kernel_for(be.isa()) : be.gemm_kernel(), s.C <= kPointwiseNarrowC && s.C < s.K};
}
// dw [K, C] += the weight-gradient partials ([K, C], or [C, K] when transposed), on the pool.
void add_pointwise_partials(ThreadPool& pool, float* dw, const std::vector<const float*>& parts, int C, int K,
                            bool transposed) {
  pool.parallel_for(K, 16, [&](int64_t b, int64_t e, int) {
    for (const float* pp : parts)
      for (int64_t k = b; k < e; ++k)
        for (int c = 0; c < C; ++c) dw[k * C + c] += transposed ? pp[static_cast<int64_t>(c) * K + k] : pp[k * C + c];
  });
}

// conv2d_backward's fused pointwise pass (below): the rows per task, 0 when the shape does not take it.
// Only with an input gradient, a weight-gradient partial that stays in L2 (C K <= kFusedPartialFloats)
// and a weight product on fp32 (at matmul precision high only narrow layers: short AMX products per
// chunk cost what the fusion saves).
int64_t fused_pointwise_chunk(CpuBackend& be, const ConvShape& s, bool has_dx) {
  if (!has_dx || !is_pointwise(s) || static_cast<int64_t>(s.C) * s.K > kFusedPartialFloats ||
      pointwise_weight(be, s).kern.amx)
    return 0;
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  return balanced_chunk(rows, pointwise_chunk_rows(s), be.pool().size());
}

// One pass over chunks of `chunk` rows: each task gets its chunk of dy from dy_rows(r0, r1, t, room)
// (rows K floats apart; room: chunk K floats of its thread's kept scratch, where it may compute them;
// rows_in_cache: the task has just written them), computes dx = dy w (assign, or add) on the
// pre-packed filter and adds the chunk's weight-gradient product into its thread's partial while the
// chunk is in L2; the partials go into dw at the end. The weight product's orientation and precision
// as in conv2d_backward_weight. The partials and the rooms are kept between calls (conv_task_workspace,
// child(t)): fresh, these 0.3-1 MB buffers page-faulted in every call whenever the heap's history
// made glibc map them (822 faults per resnet50 b16 step after an unrelated allocation was added).
void pointwise_backward(CpuBackend& be, float* dw, float* dx,
                        const std::function<const float*(int64_t, int64_t, int, float*)>& dy_rows, bool rows_in_cache,
                        const float* x, const float* w, const ConvShape& s, bool add, int64_t chunk) {
  ThreadPool& pool = be.pool();
  const int C = s.C, K = s.K, T = pool.size();
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  const gemm_detail::KernelInfo kern = be.gemm_kernel();
  const PointwiseWeight pw = pointwise_weight(be, s);
  gemm_detail::WorkspaceLease filter(be.filter_workspace());
  const gemm_detail::PackedB wp(pool, kern, false, C, K, w, C, &filter.get());  // op(B) = w [K, C]
  gemm_detail::WorkspaceLease lease(be.conv_task_workspace());
  gemm_detail::Workspace& ws = lease.get();
  ws.children(T);
  std::vector<float*> partial(static_cast<size_t>(T), nullptr);
  pool.parallel_tasks((rows + chunk - 1) / chunk, [&](int64_t task, int t) {
    const int64_t r0 = task * chunk, r1 = std::min(rows, r0 + chunk);
    const int R = static_cast<int>(r1 - r0);
    gemm_detail::Workspace& tw = *ws.child(t);
    tw.reserve(2);
    float*& p = partial[static_cast<size_t>(t)];
    const bool first = !p;
    if (first) p = tw.get(0, static_cast<size_t>(C) * K);
    const float* d = dy_rows(r0, r1, t, tw.get(1, static_cast<size_t>(chunk) * K));
    gemm_detail::gemm_run(pool, rows_in_cache ? gemm_detail::with_cached_a(kern) : kern, false, false, R, C, K, 1.f, d, K,
                          nullptr, 0, add ? 1.f : 0.f, dx + r0 * C, C,
                          &wp, be.task_workspace(t));
    if (pw.transposed)
      gemm_detail::gemm_run(pool, pw.kern, true, false, C, K, R, 1.f, x + r0 * C, C, d, K, first ? 0.f : 1.f,
                            p, K, nullptr, be.task_workspace(t));
    else
      gemm_detail::gemm_run(pool, pw.kern, true, false, K, C, R, 1.f, d, K, x + r0 * C, C, first ? 0.f : 1.f,
                            p, C, nullptr, be.task_workspace(t));
  });
  std::vector<const float*> parts;
  for (const float* p : partial)
    if (p) parts.push_back(p);
  add_pointwise_partials(pool, dw, parts, C, K, pw.transposed);
}
}  // namespace

// Pointwise with an input gradient: one fused pass over dy (pointwise_backward: dy read from memory
// once instead of once per pass). resnet50 b16 step, fp32: its pointwise backward passes 319 -> 305
// ms; high: the narrow 56x56 layers 81 -> 74 ms (with C K = 2^20 at 7x7 the fusion was 10-50 %
// slower). Otherwise the two ops.
void CpuBackend::conv2d_backward(float* dw, float* dx, const float* dy, const float* x, const float* w,
                                 const ConvShape& s, bool add) {
  check_conv_shape("conv2d_backward", s);
  const int64_t chunk = fused_pointwise_chunk(*this, s, dx != nullptr);
  if (chunk == 0) {
    Backend::conv2d_backward(dw, dx, dy, x, w, s, add);
    return;
  }
  pointwise_backward(*this, dw, dx, [&](int64_t r0, int64_t, int, float*) { return dy + r0 * s.K; }, false, x, w, s,
                     add, chunk);
}

// Where the convolution takes the fused pointwise pass, the norm's input gradient (its dx, the
// convolution's dy) is never written: after the norm's sums pass each task computes its chunk's rows
// into a per-thread buffer and runs the convolution's products on it (batchnorm_fusion.h). Otherwise,
// and when dx overlaps dy without a residual gradient (the chunks would then read dy while others
// write dx over it), the two ops through scratch. resnet50 b16 step: 1.338 -> 1.311 s fp32 (median
// of 5), 1.067 -> 1.056 s at high.
void CpuBackend::batchnorm_conv_backward(float* dresidual, float* dgamma, float* dbeta, const float* dy,
                                         const uint8_t* relu_mask, const float* bn_x, const float* gamma,
                                         const float* mean, const float* invstd, bool relu, bool train, float* dw,
                                         float* dx, const float* x, const float* w, const ConvShape& s, bool add,
                                         float* scratch) {
  check_conv_shape("batchnorm_conv_backward", s);
  check_relu_mask("batchnorm_conv_backward", relu, relu_mask);
  const int M = s.N * s.P() * s.Q(), K = s.K;
  // dx [M, C] over dy [M, K]: the fused chunks read dy (without a residual gradient) as they write dx
  const bool overlap = dx && !dresidual && dx < dy + static_cast<int64_t>(M) * K && dy < dx + static_cast<int64_t>(M) * s.C;
  const int64_t chunk = overlap ? 0 : fused_pointwise_chunk(*this, s, dx != nullptr);
  if (chunk == 0) {
    Backend::batchnorm_conv_backward(dresidual, dgamma, dbeta, dy, relu_mask, bn_x, gamma, mean, invstd, relu, train,
                                     dw, dx, x, w, s, add, scratch);
    return;
  }
  const BatchnormBackward bn =
      batchnorm_backward_sums(*this, dresidual, dgamma, dbeta, dy, relu_mask, bn_x, gamma, mean, invstd, relu, train, M, K,
                              false);  // (no folding: the chunks' row bounds need not be even)
  pointwise_backward(*this, dw, dx,
                     [&](int64_t r0, int64_t r1, int, float* room) {
                       batchnorm_backward_rows(bn, room, r0, r1, false);
                       return static_cast<const float*>(room);
                     },
                     true, x, w, s, add, chunk);
}

void CpuBackend::conv2d_backward_weight(float* dw, const float* dy, const float* x, const ConvShape& s) {
  check_conv_shape("conv2d_backward_weight", s);
  const int64_t rows = static_cast<int64_t>(s.N) * s.P() * s.Q();
  const int rsc = s.R * s.S * s.C;
  if (rows == 0) return;
  if (is_pointwise(s)) {  // one GEMM over all rows (pointwise_weight: its kernel and orientation)
    const PointwiseWeight pw = pointwise_weight(*this, s);
    const int depth = static_cast<int>(rows);
    if (pw.transposed) {
      ScratchBuffer t(static_cast<size_t>(s.C) * s.K);
      gemm_with(pw.kern, true, false, s.C, s.K, depth, 1.f, x, s.C, dy, s.K, 0.f, t.get(), s.K);
      add_pointwise_partials(pool(), dw, {t.get()}, s.C, s.K, true);
      return;
    }
    gemm_with(pw.kern, true, false, s.K, s.C, depth, 1.f, dy, s.K, x, s.C, 1.f, dw, s.C);
    return;
  }
  // Few channels: the direct kernel (N512 16x16 channels at 14x14: 4.2 ms by Winograd, 2.8 direct).
  if (use_direct(s) || use_direct_wide(isa(), s)) {
    direct_weight(*this, dw, dy, x, s);
    return;
  }
  const int T = pool().size();
  const int64_t chunk = balanced_chunk(rows, kWeightDepth, T);
  if (chunk > 0 && s.R == 3 && s.S == 3 && s.stride == 1 && std::min(s.C, s.K) >= kWinogradWeightMinChannels) {
    if (use_winograd4_weight(gemm_kernel().amx, s)) {
      winograd_weight(*this, 4, dw, dy, x, s);
      return;
    }
    // F(2x2) on fp32 products only where it saves at least half the multiplications: its edge tiles
    // (odd P, Q) and short, wide tile products lose to the direct path below otherwise (N16 C512 K512
    // 7x7, 9 P Q / (16 tiles) = 1.7: 19.3 -> 10.9 ms; 14x14 (2.25) stays: 24 vs 40 ms direct).
    const int64_t tiles2 = static_cast<int64_t>((s.P() + 1) / 2) * ((s.Q() + 1) / 2);
    if (gemm_kernel().amx || 9 * static_cast<int64_t>(s.P()) * s.Q() >= 2 * 16 * tiles2) {
      winograd_weight(*this, 2, dw, dy, x, s);
      return;
    }
  }
  // At matmul precision high on AMX, convolutions with K >= 256 output channels skip the direct fp32
  // micro-kernel path below for the patch-chunk GEMMs at the end, which run on AMX (N16, 2 threads:
  // 3x3/2 C512 K512 14x14 12.2 -> 7.8 ms, 1x1/2 C256 K512 56x56 11.9 -> 6.3 ms; C256 K256 even, C128
  // K128 12.4 -> 17.2 ms).
  if (chunk > 0 && !(gemm_kernel().amx && s.K >= kWeightAmxMinK)) {
    // On the micro-kernel directly: each task gathers its chunk of patch rows straight into packed
    // panels (no col matrix, no second packing copy; whole panels are plain copies when C is a
    // multiple of the panel size) and its dy rows into the other operand's panels, and accumulates
    // into its thread's zero-padded partial (full tiles only); the partials are added to dw at the end.
    // Up to kWeightNarrowK output channels: dw[K, RSC] = dy^T[K, rows] * col[rows, RSC] (col in the
    // NR-wide B panels); wider: dw^T[RSC, K] = col^T * dy (col in the MR-tall A panels), transposed
    // into dw at the end.
    const bool col_is_a = s.K > kWeightNarrowK;
    const gemm_detail::KernelInfo kern = gemm_kernel();
    const int MR = kern.mr, NR = kern.nr;
    const int m_panels = ((col_is_a ? rsc : s.K) + MR - 1) / MR, n_panels = ((col_is_a ? s.K : rsc) + NR - 1) / NR;
    const int64_t ldc = static_cast<int64_t>(n_panels) * NR;
    const int64_t part_floats = static_cast<int64_t>(m_panels) * MR * ldc;
    // each pool thread's panels and partial in the kept workspace's child(t) (CpuBackend::conv_task_workspace)
    gemm_detail::WorkspaceLease lease(conv_task_workspace());
    gemm_detail::Workspace& ws = lease.get();
    ws.children(T);
    std::vector<float*> partial(static_cast<size_t>(T), nullptr);
    pool().parallel_tasks((rows + chunk - 1) / chunk, [&](int64_t task, int t) {
      gemm_detail::Workspace& tw = *ws.child(t);
      tw.reserve(3);
      float* Ap = tw.get(0, static_cast<size_t>((chunk * MR + kPanelSkew) * m_panels));
      float* Bp = tw.get(1, static_cast<size_t>((chunk * NR + kPanelSkew) * n_panels));
      float*& acc = partial[static_cast<size_t>(t)];
      const bool first = !acc;
      if (first) acc = tw.get(2, static_cast<size_t>(part_floats));
      const int64_t r0 = task * chunk;
      const int kc = static_cast<int>(std::min(rows, r0 + chunk) - r0);
      if (col_is_a) {
        im2col_packed(MR, Ap, x, s, r0, kc, m_panels);
        pack_rows(NR, Bp, kc * NR + kPanelSkew, dy + r0 * s.K, s.K, kc, s.K);
      } else {
        im2col_packed(NR, Bp, x, s, r0, kc, n_panels);
        pack_rows(MR, Ap, kc * MR + kPanelSkew, dy + r0 * s.K, s.K, kc, s.K);  // A panel ip: dy^T rows [ip * MR, +MR)
      }
      float* c = acc;
      const float beta = first ? 0.f : 1.f;
      auto tile = [&](int ip, int jp) {
        kern.fn(kc, Ap + static_cast<int64_t>(ip) * (kc * MR + kPanelSkew), Bp + static_cast<int64_t>(jp) * (kc * NR + kPanelSkew),
                c + static_cast<int64_t>(ip) * MR * ldc + static_cast<int64_t>(jp) * NR, static_cast<long>(ldc), beta);
      };
      if (col_is_a) {
        for (int ip = 0; ip < m_panels; ++ip)
          for (int jp = 0; jp < n_panels; ++jp) tile(ip, jp);
      } else {
        for (int jp = 0; jp < n_panels; ++jp)  // one (patch) B panel against every A panel while it is in L1
          for (int ip = 0; ip < m_panels; ++ip) tile(ip, jp);
      }
    });
    if (col_is_a) {
      // dw[k, i] += sum over threads of partial[i, k], in blocks of 16 patch entries.
      pool().parallel_for((rsc + 15) / 16, 1, [&](int64_t b, int64_t e, int) {
        for (int64_t blk = b; blk < e; ++blk) {
          const int i0 = static_cast<int>(blk * 16), i1 = std::min(rsc, i0 + 16);
          for (int k = 0; k < s.K; ++k) {
            float* d = dw + static_cast<int64_t>(k) * rsc;
            for (const float* acc : partial) {
              if (!acc) continue;
              const float* a = acc + k;
              for (int i = i0; i < i1; ++i) d[i] += a[i * ldc];
            }
          }
        }
      });
    } else {
      pool().parallel_for(s.K, 1, [&](int64_t b, int64_t e, int) {
        for (int64_t k = b; k < e; ++k) {
          float* d = dw + k * rsc;
          for (const float* acc : partial) {
            if (!acc) continue;
            const float* a = acc + k * ldc;
            for (int i = 0; i < rsc; ++i) d[i] += a[i];
          }
        }
      });
    }
    return;
  }
  const int64_t big = std::max<int64_t>(1, std::min<int64_t>(rows, kWorkspaceFloats / rsc));
  // The patch buffer is kept between calls (a fresh 16 MB buffer page-faults on every call).
  gemm_detail::WorkspaceLease lease(conv_workspace());
  gemm_detail::Workspace& ws = lease.get();
  ws.reserve(1);
  float* col = ws.get(0, static_cast<size_t>(big * rsc));
  for (int64_t r0 = 0; r0 < rows; r0 += big) {
    const int64_t r1 = std::min(rows, r0 + big);
    im2col(pool(), col, x, s, r0, r1);
    gemm(true, false, s.K, rsc, static_cast<int>(r1 - r0), 1.f, dy + r0 * s.K, s.K, col, rsc, 1.f, dw, rsc);
  }
}

}  // namespace mveb
