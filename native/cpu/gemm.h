// gemm.h: internals of the CPU SGEMM (gemm.cpp): the packed-panel micro-kernel interface shared by
// the portable (gemm.cpp), AVX2 (gemm_avx2.cpp) and AVX-512 (gemm_avx512.cpp) micro-kernels.
// Packed A: panels of MR rows, element (i, k) at Ap[k * MR + i]; packed B: panels of NR columns,
// element (k, j) at Bp[k * NR + j]; both zero-padded to full panels, 64-byte aligned.
// Tested by test/native/test_kernels.cpp ("kernels: gemm ...") under every ISA.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "cpu/cpu_features.h"
#include "cpu/kernel_util.h"

namespace mveb {
class ThreadPool;
namespace gemm_detail {

// C[MR x NR] (row stride ldc) = Ap*Bp (kc deep) + beta * C; beta == 0 never reads C.
using MicroKernel = void (*)(int kc, const float* Ap, const float* Bp, float* C, long ldc, float beta);

// The same tile with A read unpacked (row-major, row stride lda): C = alpha * A*Bp + beta * C.
using DirectMicroKernel = void (*)(int kc, const float* A, long lda, const float* Bp, float* C, long ldc, float alpha,
                                   float beta);

// C[rows x NR] = Ap*B + beta * C for the first rows <= MR rows of a packed A panel, with the rows of B
// ldb floats apart (ldb = NR: a packed panel; otherwise op(B) = B read in place). A non-null Bcopy
// (64-byte aligned) receives the B rows read as a packed panel, for the next row panels.
using RowsMicroKernel = void (*)(int rows, int kc, const float* Ap, const float* B, long ldb, float* Bcopy, float* C,
                                 long ldc, float beta);

// Packs a whole NR-wide panel of op(B) = B^T (B stored [N, K]): dst[k * NR + j] = B[(j0 + j) * ldb + k0 + k]
// for k < kc, j < NR.
using PackBtPanel = void (*)(const float* B, long ldb, int k0, int kc, int j0, float* dst);

// Packs alpha * A[i0:i0+rows, k0:k0+kc] (op(A) = A stored row-major, rows <= MR) into one MR-tall
// panel: dst[k * MR + i], rows rows..MR-1 zero.
using PackAPanel = void (*)(const float* A, long lda, int i0, int rows, int k0, int kc, float alpha, float* dst);

struct KernelInfo {
  int mr, nr;
  MicroKernel fn;
  int kc, mc, nc;  // cache blocking: depth, rows of A per block, columns of B per block
  DirectMicroKernel direct = nullptr;  // optional: used when op(A) = A (no packing of A)
  RowsMicroKernel rows = nullptr;      // optional: partial row tiles, and B packed on the fly for few rows
  PackBtPanel pack_bt = nullptr;       // optional: packing of transposed B (else portable code)
  PackAPanel pack_a = nullptr;         // optional: packing of op(A) = A (else portable code)
  // optional: `direct` that also prefetches A ahead of use, for the first column panel of each row
  // block (the one that reads A from memory; else `direct`)
  DirectMicroKernel direct_prefetch = nullptr;
  // gemm_run may run tile rows outer over a packed B block that stays in L2 (see there): measured
  // faster with the AVX-512 14 x 32 tile, slower with AVX2's 6 x 16 (3136 x 1024 x 256 (0,1) one
  // thread 110-111 -> 98-103 GFLOP/s), so set per kernel.
  bool rows_outer = false;
  // Matmul precision "high" on a CPU with AMX: gemm_run hands products without a PackedB that are
  // big enough (amx_pays) to gemm_amx.
  bool amx = false;
};

// k for products whose A the caller has just written (a task's buffer, in cache): without the
// A-prefetching direct variant, whose extra instructions only cost there (~9 % in cache).
inline KernelInfo with_cached_a(KernelInfo k) {
  k.direct_prefetch = nullptr;
  return k;
}

KernelInfo kernel_scalar();
KernelInfo kernel_avx2();
KernelInfo kernel_avx512();

// Depth of the K blocks: K split into equal blocks of at most kc_max.
int balanced_depth(int K, int kc_max);

// The micro-kernel of an ISA.
KernelInfo kernel_for(Isa isa);

// op(B) [K, N] packed once, in the blocks gemm_run uses, for several products with different A
// (the chunks of a convolution). Block (jc, pc) of NC columns and KC depth starts at jc * K + pc * ncp
// (ncp: the block's width rounded up to NR). With an AMX kernel (kern.amx, N >= 16, K >= 32) it holds
// gemm_amx's split-bf16 panels instead (amx = true, amx_block), and gemm_run multiplies on AMX.
// keep (optional): the panels live in slot `slot` of this kept workspace (the caller holds it, e.g. by
// a WorkspaceLease, while the PackedB is in use) instead of a buffer of their own: a convolution packs
// its filter in every call, and a fresh multi-MiB buffer page-faults each time.
class Workspace;
class PackedB {
 public:
  PackedB(ThreadPool& pool, const KernelInfo& kernel, bool transB, int N, int K, const float* B, long ldb,
          Workspace* keep = nullptr, int slot = 0);
  // op(B) given by its rows: row(k) points at the N contiguous floats of row k (any row order in
  // memory, e.g. a convolution filter flipped in space).
  PackedB(ThreadPool& pool, const KernelInfo& kernel, int N, int K, const std::function<const float*(int)>& row,
          Workspace* keep = nullptr, int slot = 0);
  // Room for the panels, which the caller fills with pack_part (fp32 kernels; never AMX panels).
  PackedB(const KernelInfo& kernel, int N, int K, Workspace* keep = nullptr, int slot = 0);
  // Packs the part rows [k0, k1) x columns [j0, j1) of op(B) from B, which holds that part alone:
  // op(B)[k][j] = B[(j - j0) * ldb + k - k0] (transB) or B[(k - k0) * ldb + j - j0]. j0 a multiple of
  // NR, j1 one too or N. Parts that do not overlap may be packed on different threads.
  void pack_part(const KernelInfo& kernel, const float* B, long ldb, bool transB, int k0, int k1, int j0, int j1);
  const float* block(int jc, int pc) const;
  const uint16_t* amx_block(int jc, int pc) const;
  int N, K, KC, NC, NR;
  bool amx = false;

 private:
  // The blocking of op(B) [K, N] for `kernel` (no storage yet).
  PackedB(const KernelInfo& kernel, int N, int K, bool amx, Workspace* keep, int slot);
  // Floats of the fp32 panels: N rounded up to NR, times K.
  size_t fp32_floats() const;
  // Calls pack(dst, pc, kc, col0, cols) for every panel of every block, on the pool.
  void pack_all(ThreadPool& pool, const std::function<void(float*, int, int, int, int)>& pack);
  // The AMX panels (amx_pack_b) into data_.
  void pack_amx(ThreadPool& pool, const std::function<const float*(int)>& row, bool depth_major);
  // Room for `floats` floats: own_, or the kept workspace's slot.
  float* storage(size_t floats);
  Workspace* keep_;
  int slot_;
  std::unique_ptr<ScratchBuffer> own_;
  float* data_ = nullptr;
};

// Scratch memory that gemm_run keeps between calls (a CpuBackend owns one): a fresh multi-MiB buffer
// in every call costs its page faults every time (glibc hands large blocks back to the OS on free;
// ~0.65 ms per 4 MiB, 6 % of a one-thread 1024^3 product). One gemm_run at a time uses it; a call that
// finds it busy allocates its own. Buffers grow and are never shrunk (~9 MiB with AVX-512, 2 threads).
class Workspace {
 public:
  // Buffer `slot` (0 .. slots-1 set by reserve) with room for at least `floats` floats. reserve runs
  // before a parallel region; get may then run on several threads, for different slots.
  void reserve(int slots);
  float* get(int slot, size_t floats);
  // A nested workspace kept with this one (the depth-split parts' own products); children(n) before
  // the parallel region, child(i) inside it.
  void children(int n);
  Workspace* child(int i) { return children_[static_cast<size_t>(i)].get(); }
  std::atomic<bool> busy{false};

 private:
  std::vector<std::unique_ptr<ScratchBuffer>> buffers_;
  std::vector<size_t> sizes_;
  std::vector<std::unique_ptr<Workspace>> children_;
};

// Leases that found their kept workspace busy and used a fresh local one (process-wide; tests check
// that side-by-side tasks do not, CpuBackend::run_concurrently).
std::atomic<uint64_t>& lease_fallbacks();

// Holds a Workspace for one GEMM call: the caller's when given and free, else a local one.
class WorkspaceLease {
 public:
  explicit WorkspaceLease(Workspace* shared) {
    bool expected = false;
    if (shared && shared->busy.compare_exchange_strong(expected, true))
      shared_ = shared;
    else if (shared)
      lease_fallbacks().fetch_add(1, std::memory_order_relaxed);
  }
  ~WorkspaceLease() {
    if (shared_) shared_->busy.store(false);
  }
  WorkspaceLease(const WorkspaceLease&) = delete;
  WorkspaceLease& operator=(const WorkspaceLease&) = delete;
  Workspace& get() { return shared_ ? *shared_ : local_; }

 private:
  Workspace* shared_ = nullptr;
  Workspace local_;
};

// The whole blocked, packed, multithreaded GEMM with the given micro-kernel. Row-major:
// C[M,N] = alpha op(A) op(B) + beta C. With `packed`, op(B) comes from it (B, ldb, transB unused).
// Called from inside a pool region it runs on the calling thread alone. `workspace`: scratch kept
// between calls (optional; without it, or when it is busy, the call allocates its own).
void gemm_run(ThreadPool& pool, const KernelInfo& kernel, bool transA, bool transB, int M, int N, int K, float alpha,
              const float* A, long lda, const float* B, long ldb, float beta, float* C, long ldc,
              const PackedB* packed = nullptr, Workspace* workspace = nullptr);

// Whether an M x N x K product is worth the AMX path (tile padding and the split packing).
bool amx_pays(int M, int N, int K);

// The AMX bf16x3 SGEMM (gemm_amx.cpp; same contract as gemm_run; `packed` must then be an AMX
// PackedB). Only on a CPU where CpuBackend::amx() holds.
void gemm_amx(ThreadPool& pool, bool transA, bool transB, int M, int N, int K, float alpha, const float* A, long lda,
              const float* B, long ldb, float beta, float* C, long ldc, const PackedB* packed, Workspace* workspace);
// gemm_amx's blocking of op(B) [K, N] (depth KC, a multiple of 32; NC columns), the size in bf16 of
// all of op(B) packed in those blocks, where block (jc, pc) starts, and the packing itself: row(r)
// points at row r of the stored B (depth_major: op(B) = B or a row function; else op(B) = B^T).
struct AmxBlocking {
  int KC, NC;
};
AmxBlocking amx_blocking(int N, int K);
size_t amx_packed_b_elems(int N, int K);
size_t amx_block_offset(int N, int K, int jc, int pc);
void amx_pack_b(ThreadPool& pool, int N, int K, const std::function<const float*(int)>& row, bool depth_major,
                uint16_t* dst);

}  // namespace gemm_detail
}  // namespace mveb
