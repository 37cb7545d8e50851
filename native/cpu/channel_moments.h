// channel_moments.h: per-channel moments of a [rows, C] block for batch norm's statistics, computed
// where the block is still in cache (a convolution task's output chunk, conv.cpp) and merged in a
// fixed order, so that the batch norm after it needs no statistics pass of its own (batchnorm.cpp).
// Each block is shifted by its first row before the float sums (as batchnorm_forward_train's own pass),
// and blocks merge in double by Chan, Golub & LeVeque's pairwise update, so a mean large against the
// spread does not cancel. Tested by test/native/test_kernels.cpp ("kernels: conv2d_forward_stats ...").
#pragma once
#include <cstdint>
#include <vector>

#include "cpu/cpu_features.h"  // Isa

namespace mveb {

// Moments of the rows of one block: n rows, the per-channel mean and sum of squared deviations.
struct ChannelMoments {
  int64_t n = 0;
  std::vector<double> mean, m2;
};

// The moments of y[rows, C] (row stride C) on the calling thread, with `isa`'s batch-norm row loops.
void block_moments(Isa isa, const float* y, int64_t rows, int C, ChannelMoments& out);
// a = the moments of a's rows and b's together.
void merge_moments(ChannelMoments& a, const ChannelMoments& b);
// stats[c] = mean, stats[C + c] = biased variance (m2 / n) of the merged blocks, in block order.
void finish_moments(const std::vector<ChannelMoments>& blocks, int C, double* stats);

}  // namespace mveb
