// batchnorm_fusion.h: the pieces of batch norm that the CPU convolutions run inside their own row
// chunks (conv.cpp), implemented in batchnorm.cpp:
// - forward: per-channel moments of a [rows, C] block, computed where a convolution task's output
//   chunk is still in cache and merged in a fixed order, so that the batch norm after it needs no
//   statistics pass of its own. Each block is shifted by its first row before the float sums (as
//   batchnorm_forward_train's own pass), and blocks merge in double by Chan, Golub & LeVeque's
//   pairwise update, so a mean large against the spread does not cancel.
// - backward: batchnorm_backward split into its sums pass (the coefficients of dx) and the rows of
//   dx, so that batchnorm_conv_backward computes the norm's input gradient chunk by chunk inside the
//   convolution's backward instead of writing it out and reading it back.
// Tested by test/native/test_kernels.cpp ("kernels: conv2d_forward_stats ...", "kernels:
// batchnorm_conv_backward ...").
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/cpu_features.h"  // Isa

namespace mveb {

class CpuBackend;

// Moments of the rows of one block: n rows, the per-channel mean and sum of squared deviations.
struct ChannelMoments {
  int64_t n = 0;
  std::vector<double> mean, m2;
};

// The moments of y[rows, C] (row stride C) on the calling thread, with `isa`'s batch-norm row loops.
// With a non-null copy, y's rows also go to copy in the same pass (non-temporal stores where the
// ISA's kernel file and copy's alignment allow: a convolution's output chunk staged in L2, conv.cpp).
void block_moments(Isa isa, const float* y, int64_t rows, int C, ChannelMoments& out, float* copy = nullptr);
// a = the moments of a's rows and b's together.
void merge_moments(ChannelMoments& a, const ChannelMoments& b);
// stats[c] = mean, stats[C + c] = biased variance (m2 / n) of the merged blocks, in block order.
void finish_moments(const std::vector<ChannelMoments>& blocks, int C, double* stats);

// batchnorm_backward after its sums pass: dx = a g + b (x - mean) + c0 per channel, g = dy masked by
// g_mask (null: g is dy, or dresidual, which the sums pass filled with the masked gradient).
// With fold 2 (allow_fold, 8 channels on AVX-512, even M) the rows are pairs of rows as rows of C = 16
// (batchnorm.cpp: fold_factor) and a, b, c0, mean are tiled accordingly.
struct BatchnormBackward {
  Isa isa;
  std::vector<float> a, b, c0;
  const float* g;
  const uint8_t* g_mask;
  const float* x;
  std::vector<float> mean;
  int C;
  int fold;
};
// The sums pass of batchnorm_backward (same arguments): accumulates dgamma / dbeta, writes dresidual.
BatchnormBackward batchnorm_backward_sums(CpuBackend& be, float* dresidual, float* dgamma, float* dbeta,
                                          const float* dy, const uint8_t* relu_mask, const float* x,
                                          const float* gamma, const float* mean, const float* invstd, bool relu,
                                          bool train, int M, int C, bool allow_fold);
// Rows [r0, r1) of dx into out (out's row 0 is row r0; with fold, r0 and r1 multiples of it), on the
// calling thread.
void batchnorm_backward_rows(const BatchnormBackward& bn, float* out, int64_t r0, int64_t r1, bool stream);

}  // namespace mveb
