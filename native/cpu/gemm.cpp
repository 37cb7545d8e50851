// gemm.cpp: the CPU SGEMM. C[M,N] = alpha op(A) op(B) + beta C, row-major, every transpose
// combination, any size. GotoBLAS structure: blocks of NC columns and KC depth of op(B) are packed
// into NR-wide panels (threads share the packing), blocks of MC rows of op(A) are packed (times
// alpha) into MR-tall panels by each thread (or, when op(A) = A and the ISA has a direct kernel, read
// in place with no packing, unless the rows are far apart in a wide product), and an MR x NR
// micro-kernel (AVX-512 14x32, AVX2 6x16 or portable 4x8, chosen by CpuBackend::isa()) runs over the
// panels: column panels outer, or (AVX-512) tile rows outer when the packed B block stays in L2
// (rows_outer in gemm_run). Products with few rows (M <= 128)
// and op(B) = B skip the packing pass over B: the first row panel's kernel packs each B panel as it
// reads it (AVX-512). Partial row tiles run the AVX-512 kernel for their row count; other edge tiles
// go through a small local tile. Threads split the rows of C into blocks (or the columns when C has
// few rows) and claim them from a counter; products much deeper than wide split the depth instead
// (gemm_depth_split). At matmul precision high on an AMX CPU, gemm_run hands big enough products to
// the AMX bf16x3 GEMM (gemm_amx.cpp).
// Tested by test/native/test_kernels.cpp ("kernels: gemm ..."); speed by benchmarks/kernels.
// -O2 vectorises only loops with no run-time checks; the packing loops need them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("vect-cost-model=dynamic")
#endif
#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include "core/threadpool.h"
#include "cpu/cpu_backend.h"
#include "cpu/gemm.h"
#include "cpu/kernel_util.h"

namespace mveb {
namespace gemm_detail {

std::atomic<uint64_t>& lease_fallbacks() {
  static std::atomic<uint64_t> n{0};
  return n;
}

namespace {
constexpr int kScalarMR = 4, kScalarNR = 8;
// Products with at most this many rows pack op(B) = B on the fly when the ISA has a rows kernel.
// (256 rows: no gain.)
constexpr int kBOnTheFlyMaxRows = 128;
// op(A) = A is read in place by a direct kernel unless its rows are at least kDirectMaxLda floats apart
// and the product has at least kPackAMinColumns columns (gemm_run).
constexpr long kDirectMaxLda = 2560;
constexpr int kPackAMinColumns = 1024;
// gemm_run's tile order: rows outer over a packed B block of at most this many bytes (half of a 2 MB
// L2) in at least this many panels (see there).
constexpr int64_t kRowsOuterMaxBBytes = int64_t(1) << 20;
constexpr int kRowsOuterMinPanels = 4;
// Depth-split products (gemm_depth_split) from this many FLOP: below, a region and the partials cost
// more than they save.
constexpr double kDepthSplitMinFlop = 4e6;

void micro_scalar(int kc, const float* __restrict Ap, const float* __restrict Bp, float* __restrict C, long ldc,
                  float beta) {
  float acc[kScalarMR][kScalarNR] = {};
  for (int k = 0; k < kc; ++k) {
    for (int i = 0; i < kScalarMR; ++i) {
      const float a = Ap[i];
      for (int j = 0; j < kScalarNR; ++j) acc[i][j] += a * Bp[j];
    }
    Ap += kScalarMR;
    Bp += kScalarNR;
  }
  for (int i = 0; i < kScalarMR; ++i)
    for (int j = 0; j < kScalarNR; ++j)
      C[i * ldc + j] = beta == 0.f ? acc[i][j] : acc[i][j] + beta * C[i * ldc + j];
}

// Packs op(B)[k0:k0+kc, j0:j0+cols] into one NR-wide panel [k][NR], zero-padded.
void pack_b_panel(const KernelInfo& kern, const float* B, long ldb, bool transB, int k0, int kc, int j0, int cols,
                  float* dst) {
  const int nr = kern.nr;
  if (transB && cols == nr && kern.pack_bt != nullptr) return kern.pack_bt(B, ldb, k0, kc, j0, dst);
  if (!transB) {
    if (cols == nr) {
      for (int k = 0; k < kc; ++k)
        std::memcpy(dst + static_cast<long>(k) * nr, B + static_cast<long>(k0 + k) * ldb + j0, sizeof(float) * nr);
      return;
    }
    for (int k = 0; k < kc; ++k) {
      const float* src = B + static_cast<long>(k0 + k) * ldb + j0;
      float* d = dst + static_cast<long>(k) * nr;
      int j = 0;
      for (; j < cols; ++j) d[j] = src[j];
      for (; j < nr; ++j) d[j] = 0.f;
    }
  } else {
    // Blocks of 16 depths: the 16 x cols source block stays in L1 while each output row is written
    // contiguously.
    for (int kb = 0; kb < kc; kb += 16) {
      const int ke = std::min(kc, kb + 16);
      for (int k = kb; k < ke; ++k) {
        float* d = dst + static_cast<long>(k) * nr;
        const float* src = B + static_cast<long>(j0) * ldb + k0 + k;
        int j = 0;
        for (; j < cols; ++j) d[j] = src[static_cast<long>(j) * ldb];
        for (; j < nr; ++j) d[j] = 0.f;
      }
    }
  }
}

// Packs the panels [p_begin, p_end) of op(B)[k0:k0+kc, jc:jc+nc] (panel p at dst + p * kc * NR).
// op(B) = B: the whole panels one row of B at a time (a panel at a time would walk kc rows, a page
// each at large ldb, once per panel).
void pack_b_panels(const KernelInfo& kern, const float* B, long ldb, bool transB, int k0, int kc, int jc, int nc,
                   int p_begin, int p_end, float* dst) {
  const int nr = kern.nr;
  const int p_full = transB ? p_begin : std::max(p_begin, std::min(p_end, nc / nr));  // [p_begin, p_full) whole
  auto copy_rows = [&](auto nr_const) {
    constexpr int NR = decltype(nr_const)::value;
    for (int k = 0; k < kc; ++k) {
      const float* src = B + static_cast<long>(k0 + k) * ldb + jc;
      for (int p = p_begin; p < p_full; ++p)
        std::memcpy(dst + static_cast<long>(p) * kc * NR + static_cast<long>(k) * NR, src + p * NR, sizeof(float) * NR);
    }
  };
  int p = p_begin;
  if (p_full > p_begin) switch (nr) {
      case 32: copy_rows(std::integral_constant<int, 32>()), p = p_full; break;
      case 16: copy_rows(std::integral_constant<int, 16>()), p = p_full; break;
      case 8: copy_rows(std::integral_constant<int, 8>()), p = p_full; break;
      default: break;
    }
  for (; p < p_end; ++p)
    pack_b_panel(kern, B, ldb, transB, k0, kc, jc + p * nr, std::min(nr, nc - p * nr), dst + static_cast<long>(p) * kc * nr);
}

// Packs alpha * A[i0:i0+rows, k0:k0+kc] (op(A) = A) into one MR-tall panel [k][MR], zero-padded
// (with the ISA's packing routine when it has one).
void pack_a_panel(const KernelInfo& kern, const float* A, long lda, int i0, int rows, int k0, int kc, float alpha,
                  float* dst) {
  if (kern.pack_a != nullptr) return kern.pack_a(A, lda, i0, rows, k0, kc, alpha, dst);
  const int mr = kern.mr;
  for (int i = 0; i < rows; ++i) {
    const float* src = A + static_cast<long>(i0 + i) * lda + k0;
    for (int k = 0; k < kc; ++k) dst[static_cast<long>(k) * mr + i] = alpha * src[k];
  }
  for (int i = rows; i < mr; ++i)
    for (int k = 0; k < kc; ++k) dst[static_cast<long>(k) * mr + i] = 0.f;
}

// Packs alpha * op(A)[i0:i0+mc, k0:k0+kc] into MR-tall panels [k][MR] (panel q at dst + q * kc * MR),
// the last one zero-padded. op(A) = A^T (A stored [K, M]) goes one row of A at a time into every
// panel: a panel at a time would walk kc rows of A (a page each at large lda) once per panel.
void pack_a_block(const KernelInfo& kern, const float* A, long lda, bool transA, int i0, int mc, int k0, int kc,
                  float alpha, float* dst) {
  const int mr = kern.mr;
  const int panels = (mc + mr - 1) / mr;
  if (!transA) {
    for (int q = 0; q < panels; ++q)
      pack_a_panel(kern, A, lda, i0 + q * mr, std::min(mr, mc - q * mr), k0, kc, alpha, dst + static_cast<long>(q) * kc * mr);
    return;
  }
  const int full = alpha == 1.f ? mc / mr : 0;  // panels copied as fixed-size rows (the micro-kernels' MR)
  auto copy_full = [&](auto mr_const, const float* src, int k) {
    constexpr int MR = decltype(mr_const)::value;
    for (int q = 0; q < full; ++q)
      std::memcpy(dst + static_cast<long>(q) * kc * MR + static_cast<long>(k) * MR, src + q * MR, sizeof(float) * MR);
  };
  for (int k = 0; k < kc; ++k) {
    const float* src = A + static_cast<long>(k0 + k) * lda + i0;
    int q = 0;
    switch (full > 0 ? mr : 0) {
      case 14: copy_full(std::integral_constant<int, 14>(), src, k), q = full; break;
      case 6: copy_full(std::integral_constant<int, 6>(), src, k), q = full; break;
      case 4: copy_full(std::integral_constant<int, 4>(), src, k), q = full; break;
      default: break;
    }
    for (; q < panels; ++q) {
      float* d = dst + static_cast<long>(q) * kc * mr + static_cast<long>(k) * mr;
      const int rows = std::min(mr, mc - q * mr);
      int i = 0;
      for (; i < rows; ++i) d[i] = alpha * src[q * mr + i];
      for (; i < mr; ++i) d[i] = 0.f;
    }
  }
}

void scale_c(ThreadPool& pool, int M, int N, float beta, float* C, long ldc) {
  pool.parallel_for(M, 16, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      float* row = C + i * ldc;
      if (beta == 0.f) std::memset(row, 0, sizeof(float) * static_cast<size_t>(N));
      else if (beta != 1.f)
        for (int j = 0; j < N; ++j) row[j] *= beta;
    }
  });
}
}  // namespace

KernelInfo kernel_scalar() { return KernelInfo{kScalarMR, kScalarNR, micro_scalar, 256, 128, 2048}; }

int balanced_depth(int K, int kc_max) {
  const int blocks = std::max(1, (K + kc_max - 1) / kc_max);
  return (K + blocks - 1) / blocks;
}

KernelInfo kernel_for(Isa isa) {
  return isa == Isa::Avx512 ? kernel_avx512() : isa == Isa::Avx2 ? kernel_avx2() : kernel_scalar();
}

PackedB::PackedB(const KernelInfo& kern, int N_, int K_, bool amx_, Workspace* keep, int slot)
    : N(N_), K(K_), KC(balanced_depth(K_, kern.kc)), NC(std::min((N_ + kern.nr - 1) / kern.nr * kern.nr, kern.nc)),
      NR(kern.nr), amx(amx_), keep_(keep), slot_(slot) {}

PackedB::PackedB(ThreadPool& pool, const KernelInfo& kern, bool transB, int N_, int K_, const float* B, long ldb,
                 Workspace* keep, int slot)
    : PackedB(kern, N_, K_, kern.amx && N_ >= 16 && K_ >= 32, keep, slot) {
  if (amx) {
    pack_amx(pool, [&](int r) { return B + static_cast<long>(r) * ldb; }, !transB);
    return;
  }
  pack_all(pool, [&](float* dst, int pc, int kc, int j0, int cols) {
    pack_b_panel(kern, B, ldb, transB, pc, kc, j0, cols, dst);
  });
}

PackedB::PackedB(ThreadPool& pool, const KernelInfo& kern, int N_, int K_, const std::function<const float*(int)>& row,
                 Workspace* keep, int slot)
    : PackedB(kern, N_, K_, kern.amx && N_ >= 16 && K_ >= 32, keep, slot) {
  if (amx) {
    pack_amx(pool, row, true);
    return;
  }
  pack_all(pool, [&](float* dst, int pc, int kc, int j0, int cols) {
    for (int k = 0; k < kc; ++k) {
      const float* src = row(pc + k) + j0;
      float* d = dst + static_cast<long>(k) * NR;
      if (cols == NR) {
        std::memcpy(d, src, sizeof(float) * static_cast<size_t>(NR));
        continue;
      }
      int j = 0;
      for (; j < cols; ++j) d[j] = src[j];
      for (; j < NR; ++j) d[j] = 0.f;
    }
  });
}

PackedB::PackedB(const KernelInfo& kern, int N_, int K_, Workspace* keep, int slot)
    : PackedB(kern, N_, K_, false, keep, slot) {
  data_ = storage(fp32_floats());
}

size_t PackedB::fp32_floats() const {
  return static_cast<size_t>((static_cast<long>(N) + NR - 1) / NR * NR) * std::max(1, K);
}

void PackedB::pack_part(const KernelInfo& kern, const float* B, long ldb, bool transB, int k0, int k1, int j0, int j1) {
  for (int pc = k0 / KC * KC; pc < k1; pc += KC) {  // the depth blocks the part meets
    const int kc = std::min(KC, K - pc), r0 = std::max(k0, pc), r1 = std::min(k1, pc + kc);
    for (int j = j0; j < j1; j += NR) {  // its panels
      const int jc = j / NC * NC;
      float* dst = const_cast<float*>(block(jc, pc)) + static_cast<long>(j - jc) * kc + static_cast<long>(r0 - pc) * NR;
      const float* src = transB ? B + static_cast<long>(j - j0) * ldb + (r0 - k0) : B + static_cast<long>(r0 - k0) * ldb + (j - j0);
      pack_b_panel(kern, src, ldb, transB, 0, r1 - r0, 0, std::min(NR, j1 - j), dst);
    }
  }
}

void PackedB::pack_all(ThreadPool& pool, const std::function<void(float*, int, int, int, int)>& pack) {
  data_ = storage(fp32_floats());
  // tasks: (jc block, pc block, panel)
  std::vector<int> jcs, pcs;
  for (int jc = 0; jc < N; jc += NC) jcs.push_back(jc);
  for (int pc = 0; pc < K; pc += KC) pcs.push_back(pc);
  const int max_panels = NC / NR;
  const int64_t tasks = static_cast<int64_t>(jcs.size()) * pcs.size() * max_panels;
  pool.parallel_for(tasks, 4, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const int p = static_cast<int>(t % max_panels);
      const int pi = static_cast<int>((t / max_panels) % static_cast<int64_t>(pcs.size()));
      const int ji = static_cast<int>(t / max_panels / static_cast<int64_t>(pcs.size()));
      const int jc = jcs[static_cast<size_t>(ji)], pc = pcs[static_cast<size_t>(pi)];
      const int nc = std::min(NC, N - jc), kc = std::min(KC, K - pc), j0 = p * NR;
      if (j0 >= nc) continue;
      float* dst = const_cast<float*>(block(jc, pc)) + static_cast<long>(p) * kc * NR;
      pack(dst, pc, kc, jc + j0, std::min(NR, nc - j0));
    }
  });
}

void PackedB::pack_amx(ThreadPool& pool, const std::function<const float*(int)>& row, bool depth_major) {
  data_ = storage((amx_packed_b_elems(N, K) + 1) / 2);
  amx_pack_b(pool, N, K, row, depth_major, reinterpret_cast<uint16_t*>(data_));
}

float* PackedB::storage(size_t floats) {
  if (keep_) {
    keep_->reserve(slot_ + 1);  // (outside any parallel region: the constructor's caller's thread)
    return keep_->get(slot_, floats);
  }
  own_.reset(new ScratchBuffer(floats));
  return own_->get();
}

const uint16_t* PackedB::amx_block(int jc, int pc) const {
  return reinterpret_cast<const uint16_t*>(data_) + amx_block_offset(N, K, jc, pc);
}

const float* PackedB::block(int jc, int pc) const {
  const int ncp = (std::min(NC, N - jc) + NR - 1) / NR * NR;
  return data_ + static_cast<long>(jc) * K + static_cast<long>(pc) * ncp;
}

void Workspace::reserve(int slots) {
  if (static_cast<int>(buffers_.size()) < slots) {
    buffers_.resize(static_cast<size_t>(slots));
    sizes_.resize(static_cast<size_t>(slots), 0);
  }
}

void Workspace::children(int n) {
  while (static_cast<int>(children_.size()) < n) children_.emplace_back(new Workspace);
}

float* Workspace::get(int slot, size_t floats) {
  auto& b = buffers_[static_cast<size_t>(slot)];
  if (!b || sizes_[static_cast<size_t>(slot)] < floats) {
    b.reset();  // free first: the peak stays one buffer
    b.reset(new ScratchBuffer(floats));
    sizes_[static_cast<size_t>(slot)] = floats;
  }
  return b->get();
}

namespace {
// Products much deeper than wide (K >= 4 max(M, N): the weight gradients of 1x1 convolutions, dW =
// dy^T x over all pixels): part t of the T threads multiplies depths [K t / T, K (t + 1) / T) with a
// serial gemm_run of its own (on AMX or the fp32 kernels, as for any product) into C (part 0, with
// beta) or a partial (beta 0), then the partials are added to C in part order: no per-depth-block
// barriers, each thread's operands stay in its own caches, and the result depends only on T.
// fp32, 2 threads, against the row-block split: 256 x 64 x 50176 (1,0) 199 -> 251 GFLOP/s, 64 x 64 x
// 50176 188 -> 284, 512 x 128 x 12544 272 -> 322 (AMX as before, within noise).
void gemm_depth_split(ThreadPool& pool, const KernelInfo& kern, bool transA, bool transB, int M, int N, int K,
                      float alpha, const float* A, long lda, const float* B, long ldb, float beta, float* C, long ldc,
                      Workspace* workspace) {
  const int T = pool.size();
  WorkspaceLease lease(workspace);
  Workspace& ws = lease.get();
  ws.reserve(T);
  ws.children(T);
  std::vector<float*> partial(static_cast<size_t>(T), nullptr);
  for (int t = 1; t < T; ++t) partial[static_cast<size_t>(t)] = ws.get(t, static_cast<size_t>(M) * N);
  pool.parallel_for(T, 1, [&](int64_t b, int64_t e, int) {
    for (int64_t part = b; part < e; ++part) {
      const int k0 = static_cast<int>(static_cast<int64_t>(K) * part / T);
      const int k1 = static_cast<int>(static_cast<int64_t>(K) * (part + 1) / T);
      const float* Ap = transA ? A + static_cast<long>(k0) * lda : A + k0;
      const float* Bp = transB ? B + k0 : B + static_cast<long>(k0) * ldb;
      Workspace* own = ws.child(static_cast<int>(part));
      if (part == 0) gemm_run(pool, kern, transA, transB, M, N, k1 - k0, alpha, Ap, lda, Bp, ldb, beta, C, ldc, nullptr, own);
      else
        gemm_run(pool, kern, transA, transB, M, N, k1 - k0, alpha, Ap, lda, Bp, ldb, 0.f,
                 partial[static_cast<size_t>(part)], N, nullptr, own);
    }
  });
  pool.parallel_for(M, 4, [&](int64_t b, int64_t e, int) {
    for (int64_t i = b; i < e; ++i) {
      float* __restrict c = C + i * ldc;
      for (int t = 1; t < T; ++t) {
        const float* __restrict p = partial[static_cast<size_t>(t)] + i * N;
        for (int j = 0; j < N; ++j) c[j] += p[j];
      }
    }
  });
}
}  // namespace

void gemm_run(ThreadPool& pool, const KernelInfo& kern, bool transA, bool transB, int M, int N, int K, float alpha,
              const float* A, long lda, const float* B, long ldb, float beta, float* C, long ldc,
              const PackedB* packed, Workspace* workspace) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.f) {
    scale_c(pool, M, N, beta, C, ldc);
    return;
  }
  if (!packed && pool.size() > 1 && !ThreadPool::inside_region() && K >= 4 * std::max(M, N) &&
      static_cast<int64_t>(M) * N <= (int64_t(1) << 20) && 2.0 * M * N * K >= kDepthSplitMinFlop)
    return gemm_depth_split(pool, kern, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, workspace);
  if (packed ? packed->amx : kern.amx && amx_pays(M, N, K))
    return gemm_amx(pool, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, packed, workspace);
  const int MR = kern.mr, NR = kern.nr;

  // Inside a parallel region the product runs serially on this thread: block it for one thread (a
  // column split would pack A once per split for nothing).
  const int T = ThreadPool::inside_region() ? 1 : pool.size();
  const int KC = balanced_depth(K, kern.kc);
  const int NC = std::min((N + NR - 1) / NR * NR, kern.nc);

  // Row blocks: enough to keep every thread busy when M allows, a multiple of the thread count,
  // balanced to within one MR panel.
  int m_blocks = (M + kern.mc - 1) / kern.mc;
  const int m_panels = (M + MR - 1) / MR;
  if (m_panels >= 4 * T) m_blocks = std::max(m_blocks, T);
  if (m_blocks > 1 && m_blocks % T) m_blocks = std::min(m_panels, (m_blocks + T - 1) / T * T);
  m_blocks = std::min(m_blocks, m_panels);

  // Few rows of C cannot amortise a packing pass over op(B) (each packed element serves 2M flops):
  // then each task packs the B panels it uses on the fly, into a panel buffer that stays in L2. For
  // op(B) = B the first row panel's kernel packs each panel as it reads it from B in place (a last
  // partial column panel is packed beforehand); the rows kernel needs packed A, so when the direct
  // kernel could read A in place, only with several times more columns than rows (measured). For
  // op(B) = B^T each panel is transposed just before use. Each thread works on whole columns of C,
  // so no B panel is packed twice.
  const bool b_on_the_fly = !packed && kern.rows != nullptr && M <= kBOnTheFlyMaxRows &&
                            (transB ? kern.pack_bt != nullptr : transA || kern.direct == nullptr || N >= 4 * M);
  if (b_on_the_fly && (std::min(N, kern.nc) + NR - 1) / NR >= T) m_blocks = 1;
  // Block b holds panels [m_panels * b / m_blocks, m_panels * (b + 1) / m_blocks): equal within one panel.
  const int MC = (m_panels + m_blocks - 1) / m_blocks * MR;  // the largest block
  // The direct kernel reads MR rows of A lda apart in place. With rows far apart and many columns to
  // amortise the packing, packed panels (packed with the ISA's vector transpose) measured faster
  // (2 threads: 4096^3 379-383 -> 393-398 GFLOP/s, 3072^3 383 -> 388-391, 1024 x 1024 x 4096
  // 378-381 -> 388-395); with few columns, or rows closer (ResNet-50's shapes), slower (1568 x 256 x
  // 2560 (0,1) 410-415 -> 394, 784 x 512 x 4608 400-410 -> 395-403; 2048^3 and the pointwise shapes
  // 1-20 %).
  // (Measured with AVX-512's; an ISA without a vector packing routine stays direct.)
  const bool direct = !transA && kern.direct != nullptr && !(b_on_the_fly && !transB) &&
                      (lda < kDirectMaxLda || N < kPackAMinColumns || kern.pack_a == nullptr);
  // Scratch slots: 0 the packed B block; per thread t, allocated by it, 1 + 2t packed A (the block, or
  // the last partial panel for direct kernels) and 2 + 2t, with B packed on the fly, the current panel.
  WorkspaceLease lease(workspace);
  Workspace& ws = lease.get();
  ws.reserve(1 + 2 * T);
  float* const packed_b = packed || b_on_the_fly ? nullptr : ws.get(0, static_cast<size_t>(KC) * NC);

  for (int jc = 0; jc < N; jc += NC) {
    const int nc = std::min(NC, N - jc);
    const int n_panels = (nc + NR - 1) / NR;
    // Column splits when there are too few row blocks for the threads.
    const int n_splits = m_blocks >= 2 * T || m_blocks % T == 0 ? 1 : std::min(n_panels, T);
    for (int pc = 0; pc < K; pc += KC) {
      const int kc = std::min(KC, K - pc);
      const float beta_block = pc == 0 ? beta : 1.f;
      const float* b_block = packed ? packed->block(jc, pc) : packed_b;
      // Tile rows outer, column panels inner, over a B block that stays in L2 (at most
      // kRowsOuterMaxBBytes, in at least kRowsOuterMinPanels panels): a task's MR rows of A (read in
      // place by a direct kernel, or its packed panel) then stay in L1 across the panels and the packed
      // B panels stream from L2, where panels outer made every panel re-read the task's whole row
      // block (for a direct kernel from MR strided rows); C is written a tile row at a time. Two
      // threads, GFLOP/s: 3136 x 1024 x 256 (0,1) 305-315 -> 335-361, 50176 x 256 x 64 (0,1) 203-205 ->
      // 213-226, 3136 x 256 x 64 276-296 -> 289-301; one thread, packed A: 3136 x 1024 x 256 (1,1) 138
      // -> 155, 12544 x 512 x 128 (1,0) 123-127 -> 135-140; 784 x 512 x 128 +3 %, 256^3 and 3136 x 256 x
      // 1024 even; 2 panels (12544 x 64 x 576) -2 %, a 2 MB block -0-8 % (AVX-512's 14 x 32 kernel;
      // KernelInfo::rows_outer).
      const bool rows_outer = kern.rows_outer && !b_on_the_fly && n_panels >= kRowsOuterMinPanels &&
                              static_cast<int64_t>(kc) * nc * static_cast<int64_t>(sizeof(float)) <= kRowsOuterMaxBBytes;
      // One parallel region: the threads first pack the B block (groups of panels claimed from a
      // counter), then claim tasks, each waiting only for the groups of the panels it reaches (a
      // thread packs its task's A block while the others still pack B). Tasks come from a counter too,
      // not a fixed map: every C element is written by one task in a fixed order, so the result does
      // not depend on the map, and a thread the OS descheduled (the machine is often shared) does not
      // hold the others back.
      constexpr int kPackGroup = 4;  // panels
      const int pack_groups = packed_b ? (n_panels + kPackGroup - 1) / kPackGroup : 0;
      const int64_t tasks = static_cast<int64_t>(m_blocks) * n_splits;
      std::atomic<int> next_group{0};
      std::unique_ptr<std::atomic<bool>[]> group_ready(new std::atomic<bool>[static_cast<size_t>(pack_groups)]());
      std::atomic<int64_t> next_task{0};
      pool.parallel_for(std::min<int64_t>(T, std::max<int64_t>(tasks, pack_groups)), 1, [&](int64_t, int64_t, int thread) {
        if (pack_groups > 0) {
          for (int g; (g = next_group.fetch_add(1, std::memory_order_relaxed)) < pack_groups;) {
            pack_b_panels(kern, B, ldb, transB, pc, kc, jc, nc, g * kPackGroup,
                          std::min(n_panels, (g + 1) * kPackGroup), packed_b);
            group_ready[static_cast<size_t>(g)].store(true, std::memory_order_release);
          }
        }
        for (int64_t task; (task = next_task.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
          const int mb = static_cast<int>(task / n_splits), ns = static_cast<int>(task % n_splits);
          const int i0 = static_cast<int>(static_cast<int64_t>(m_panels) * mb / m_blocks) * MR;
          const int mc = std::min(M, static_cast<int>(static_cast<int64_t>(m_panels) * (mb + 1) / m_blocks) * MR) - i0;
          const int p_begin = n_panels * ns / n_splits, p_end = n_panels * (ns + 1) / n_splits;
          float* pa = ws.get(1 + 2 * thread, static_cast<size_t>(KC) * (direct ? MR : MC));
          // Direct kernels read full panels of A in place; only a last partial panel is packed (at pa).
          if (!direct) pack_a_block(kern, A, lda, transA, i0, mc, pc, kc, alpha, pa);
          else if (mc % MR) pack_a_panel(kern, A, lda, i0 + mc / MR * MR, mc % MR, pc, kc, alpha, pa);
          alignas(64) float tile[16 * 64];
          // C's tile (ir, p): rows [i0 + ir, + MR) of column panel p; pb the panel, first_b / first_ldb
          // / copy_b how the first row panel reads (and packs) it when B is packed on the fly.
          auto run_tile = [&](int p, int ir, const float* pb, const float* first_b, long first_ldb, float* copy_b) {
            const int j0 = p * NR, nr = std::min(NR, nc - j0);
            const int mr = std::min(MR, mc - ir);
            const float* pa_panel = direct ? pa : pa + static_cast<long>(ir) * kc;
            float* c = C + static_cast<long>(i0 + ir) * ldc + jc + j0;
            // Whole tiles, and with a rows kernel partial-row tiles, write C directly; the rest goes
            // through the local tile.
            const bool in_place = nr == NR && (mr == MR || kern.rows != nullptr);
            float* out = in_place ? c : tile;
            const long ldo = in_place ? ldc : NR;
            const float beta_out = in_place ? beta_block : 0.f;
            if (direct && mr == MR) {
              const DirectMicroKernel fn = p == p_begin && kern.direct_prefetch ? kern.direct_prefetch : kern.direct;
              fn(kc, A + static_cast<long>(i0 + ir) * lda + pc, lda, pb, out, ldo, alpha, beta_out);
            } else if (kern.rows != nullptr) {
              if (ir == 0) kern.rows(mr, kc, pa_panel, first_b, first_ldb, copy_b, out, ldo, beta_out);
              else kern.rows(mr, kc, pa_panel, pb, NR, nullptr, out, ldo, beta_out);
            } else {
              kern.fn(kc, pa_panel, pb, out, ldo, beta_out);
            }
            if (!in_place) {  // the partial tile back into C (beta == 0: C is not read, it may hold NaNs)
              for (int i = 0; i < mr; ++i) {
                float* __restrict dst = c + static_cast<long>(i) * ldc;
                const float* __restrict src = tile + i * NR;
                if (beta_block == 0.f) {
                  for (int j = 0; j < nr; ++j) dst[j] = src[j];
                } else {
                  for (int j = 0; j < nr; ++j) dst[j] = src[j] + beta_block * dst[j];
                }
              }
            }
          };
          if (rows_outer) {  // all of the block's B panels first, then tile rows outer (see rows_outer)
            if (pack_groups > 0)
              for (int g = p_begin / kPackGroup; g <= (p_end - 1) / kPackGroup; ++g)
                while (!group_ready[static_cast<size_t>(g)].load(std::memory_order_acquire)) std::this_thread::yield();
            for (int ir = 0; ir < mc; ir += MR)
              for (int p = p_begin; p < p_end; ++p) {
                const float* pb = b_block + static_cast<long>(p) * kc * NR;
                run_tile(p, ir, pb, pb, NR, nullptr);
              }
            continue;
          }
          for (int p = p_begin; p < p_end; ++p) {
            const int j0 = p * NR, nr = std::min(NR, nc - j0);
            if (pack_groups > 0)
              while (!group_ready[static_cast<size_t>(p / kPackGroup)].load(std::memory_order_acquire))
                std::this_thread::yield();
            const float* pb = b_block + static_cast<long>(p) * kc * NR;
            const float* first_b = pb;  // B as the first row panel reads it
            long first_ldb = NR;
            float* copy_b = nullptr;  // where the first row panel packs it
            if (b_on_the_fly) {
              float* panel = ws.get(2 + 2 * thread, static_cast<size_t>(KC) * NR);
              pb = first_b = panel;
              if (!transB && nr == NR) {
                first_b = B + static_cast<long>(pc) * ldb + jc + j0;
                first_ldb = ldb;
                if (mc > MR) copy_b = panel;
              } else {  // B^T, or a partial panel (the kernel reads NR columns): packed, zero-padded
                pack_b_panel(kern, B, ldb, transB, pc, kc, jc + j0, nr, panel);
              }
            }
            for (int ir = 0; ir < mc; ir += MR) run_tile(p, ir, pb, first_b, first_ldb, copy_b);
          }
        }
      });
    }
  }
}

bool amx_pays(int M, int N, int K) {
  // The AMX tile is 32 x 32 x 32 deep: below that most of each tile is zero padding, and the packing
  // of both operands does not pay for a product of less than a few MFLOP.
  return M >= 16 && N >= 16 && K >= 32 && 2.0 * M * N * K >= 4e6;
}

}  // namespace gemm_detail

void CpuBackend::gemm(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
                      const float* B, int ldb, float beta, float* C, int ldc) {
  gemm_with(gemm_kernel(), transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void CpuBackend::gemm_fp32(bool transA, bool transB, int M, int N, int K, float alpha, const float* A, int lda,
                           const float* B, int ldb, float beta, float* C, int ldc) {
  gemm_with(gemm_detail::kernel_for(isa()), transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void CpuBackend::gemm_with(const gemm_detail::KernelInfo& kernel, bool transA, bool transB, int M, int N, int K,
                           float alpha, const float* A, int lda, const float* B, int ldb, float beta, float* C,
                           int ldc) {
  check_gemm_args(transA, transB, M, N, K, lda, ldb, ldc);
  gemm_detail::gemm_run(pool(), kernel, transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                        nullptr, gemm_workspace());
}

}  // namespace mveb
