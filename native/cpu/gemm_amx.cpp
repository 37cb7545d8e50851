// gemm_amx.cpp: the SGEMM of matmul precision "high" on Intel AMX (AMX-TILE + AMX-BF16, with
// AVX512-BF16 for the conversions): C[M,N] = alpha op(A) op(B) + beta C, row-major, every transpose
// combination, any size. Each float x is split into two bfloat16, hi = bf16(x) and
// lo = bf16(x - hi) (16 significant bits together), and a*b is computed as
// hi_a lo_b + hi_a hi_b + lo_a hi_b with fp32 accumulation in the tile registers ("bf16x3", what
// PyTorch's set_float32_matmul_precision('high') allows). Dropped terms: lo_a lo_b and the
// residuals of the splits, about 2^-17 of each product: the relative error of a K-deep dot
// product with random signs is ~4e-6 (K = 1024), against ~1e-7 for the fp32 kernels
// (test_kernels.cpp "gemm amx" measures it against float64).
//
// GotoBLAS structure as in gemm.cpp: blocks of NC columns and KC depth of op(B) are packed once
// (threads share the packing), each task packs its MC rows of op(A), and a 32 x 32 micro-tile (four
// 16 x 16 fp32 accumulator tiles, two A tiles, two B tiles: the 8 tile registers) runs over
// them, one A panel (32 rows, in L1) against every B panel of the block (in L2). Packed layouts, per
// 32-row (A) or 32-column (B) panel and 32-deep step: [split hi/lo][half 0/1][16 rows][16 dwords],
// a dword holding the bf16 pair of depths (2p, 2p+1). An A tile row is one row of op(A); a B tile
// row is one depth pair across 16 columns (the VNNI layout TDPBF16PS reads). Edges (M, N not
// multiples of 32, K not a multiple of 32) are zero-padded in the packing; partial tiles go out
// through a masked epilogue, which also applies alpha and beta (beta == 0 never reads C).
// Only called when CpuBackend::amx() holds: CPUID reports AMX-TILE, AMX-BF16 and AVX512-BF16 and
// the kernel granted this process the tile data permission (arch_prctl, cpu_features.cpp).
// GCC 12 reports the intrinsics' internal undefined operand '__Y' (cvtepu16, slli, casts) as (maybe-)
// uninitialised: a false positive of its headers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>

#include "core/threadpool.h"
#include "cpu/gemm.h"
#include "cpu/transpose_avx512.h"

namespace mveb {
namespace gemm_detail {

namespace {
constexpr int kPanel = 32;                    // rows of an A panel, columns of a B panel
constexpr int kStep = 32;                     // depth of one tile step (16 bf16 pairs)
constexpr int kStepElems = 2 * 2 * 16 * 32;   // bf16 per panel per step: splits x halves x 16 x 32
constexpr int kMaxKC = 256;                   // depth per block: an A panel (32 x 256, 32 KiB) stays in L1
constexpr int kNC = 1024;                     // columns per B block (256 x 1024: 1 MiB packed, in L2)
constexpr int kMC = 256;                      // rows of op(A) per task block
constexpr int kPackGroup = 8;                 // B panels packed per claim (256 columns of each depth row)

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Loads the tile shapes on this thread (every tile 16 rows of 64 bytes) for the duration of an
// object; releases the tile state after (the kernel then need not save it on context switches).
class TileScope {
 public:
  TileScope() {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
    _tile_loadconfig(&cfg);
  }
  ~TileScope() { _tile_release(); }
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

inline __m512 bf16_bits_to_float(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// One row of 32 consecutive depths (the first n of them read from src, the rest zero) as the hi and
// lo dword vectors of its 16 depth pairs.
inline void pairs_from_row(const float* src, int n, __m512i& hi, __m512i& lo) {
  const __mmask16 m0 = static_cast<__mmask16>(n >= 16 ? 0xFFFF : (1u << n) - 1);
  const __mmask16 m1 = static_cast<__mmask16>(n >= 32 ? 0xFFFF : n <= 16 ? 0 : (1u << (n - 16)) - 1);
  const __m512 x0 = _mm512_maskz_loadu_ps(m0, src), x1 = _mm512_maskz_loadu_ps(m1, src + 16);
  hi = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);  // bf16 lane j = depth j
  const __m512 h0 = bf16_bits_to_float(_mm512_castsi512_si256(hi));
  const __m512 h1 = bf16_bits_to_float(_mm512_extracti64x4_epi64(hi, 1));
  lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(x1, h1), _mm512_sub_ps(x0, h0));
}

// Two depth rows (even depth, odd depth) of 16 values as the hi and lo dword vectors: dword j holds
// the pair (even[j], odd[j]).
inline void pairs_from_two_rows(__m512 even, __m512 odd, __m512i& hi, __m512i& lo) {
  const __m256i he = (__m256i)_mm512_cvtneps_pbh(even), ho = (__m256i)_mm512_cvtneps_pbh(odd);
  const __m256i le = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(even, bf16_bits_to_float(he)));
  const __m256i lo_odd = (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(odd, bf16_bits_to_float(ho)));
  hi = _mm512_or_si512(_mm512_cvtepu16_epi32(he), _mm512_slli_epi32(_mm512_cvtepu16_epi32(ho), 16));
  lo = _mm512_or_si512(_mm512_cvtepu16_epi32(le), _mm512_slli_epi32(_mm512_cvtepu16_epi32(lo_odd), 16));
}

inline __mmask16 first_lanes(int n) {
  return static_cast<__mmask16>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1);
}

// The 16 x 16 dword block of one split and half at dst: rows[r] is row r.
inline void store_rows(uint16_t* dst, const __m512i rows[16]) {
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) _mm512_store_si512(reinterpret_cast<__m512i*>(dst + r * 32), rows[r]);
}

// The hi and lo 16 x 16 dword blocks of one step and half, as given or transposed.
inline void store_split(const __m512i hi[16], const __m512i lo[16], bool transpose, uint16_t* hi_dst,
                        uint16_t* lo_dst) {
  if (transpose) {
    __m512i t[16];
    transpose16(hi, t);
    store_rows(hi_dst, t);
    transpose16(lo, t);
    store_rows(lo_dst, t);
  } else {
    store_rows(hi_dst, hi);
    store_rows(lo_dst, lo);
  }
}

// One 32-deep step of 16 "index rows" (at(i) points at the step's first depth of index i; indices
// >= count and depths >= depth are zero) into the hi and lo blocks, as rows (transpose = false) or
// transposed (row p = depth pair p across the 16 indices).
template <class At>
void pack_step_rows(At at, int count, int depth, bool transpose, uint16_t* hi_dst, uint16_t* lo_dst) {
  __m512i hi[16], lo[16];
  for (int i = 0; i < 16; ++i) {
    if (i < count) pairs_from_row(at(i), depth, hi[i], lo[i]);
    else hi[i] = lo[i] = _mm512_setzero_si512();
  }
  store_split(hi, lo, transpose, hi_dst, lo_dst);
}

// One 32-deep step from "depth rows" (at(d) points at the step's depth d, 16 indices; the first
// count are real, the rest and depths >= depth zero): row p = depth pair p across the indices
// (transpose = false), or transposed (row i = index i's 16 pairs).
template <class At>
void pack_step_depth_rows(At at, int count, int depth, bool transpose, uint16_t* hi_dst, uint16_t* lo_dst) {
  const __mmask16 m = first_lanes(count);
  __m512i hi[16], lo[16];
  for (int p = 0; p < 16; ++p) {
    const __m512 even = 2 * p < depth ? _mm512_maskz_loadu_ps(m, at(2 * p)) : _mm512_setzero_ps();
    const __m512 odd = 2 * p + 1 < depth ? _mm512_maskz_loadu_ps(m, at(2 * p + 1)) : _mm512_setzero_ps();
    pairs_from_two_rows(even, odd, hi[p], lo[p]);
  }
  store_split(hi, lo, transpose, hi_dst, lo_dst);
}

// Packs op(X)[x0 : x0 + count, k0 : k0 + kc] as panels of 32 indices (rows of op(A) when as_a, else
// columns of op(B)), steps of 32 depths, zero-padded. row(r) points at row r of the stored X:
// `depth_major`, X stored with the depth as its row index (op(A) = A^T, op(B) = B, or a PackedB's
// row function); else with the index as its row (op(A) = A, op(B) = B^T).
// Panels [p0, p1) only; panel p at dst + p * steps * kStepElems.
template <class Row>
void pack_panels(Row row, bool depth_major, bool as_a, int x0, int count, int k0, int kc, int p0, int p1,
                 uint16_t* dst) {
  const int steps = (kc + kStep - 1) / kStep;
  auto one = [&](int p, int s) {
    const int depth = std::min(kStep, kc - s * kStep);
    for (int h = 0; h < 2; ++h) {
      const int first = p * kPanel + h * 16, n = std::min(16, count - first);
      uint16_t* hi = dst + (static_cast<long>(p) * steps + s) * kStepElems + h * 512;
      uint16_t* lo = hi + 1024;
      const int k = k0 + s * kStep, x = x0 + first;
      if (n <= 0) {
        std::memset(hi, 0, 1024);
        std::memset(lo, 0, 1024);
      } else if (depth_major) {
        pack_step_depth_rows([&](int d) { return row(k + d) + x; }, n, depth, as_a, hi, lo);
      } else {
        pack_step_rows([&](int i) { return row(x + i) + k; }, n, depth, !as_a, hi, lo);
      }
    }
  };
  // Source order: 32 depth rows at a time across all panels (each row read once, front to back) when
  // the depth is the stored row index; else panel by panel (each stored row read along its depths).
  if (depth_major) {
    for (int s = 0; s < steps; ++s)
      for (int p = p0; p < p1; ++p) one(p, s);
  } else {
    for (int p = p0; p < p1; ++p)
      for (int s = 0; s < steps; ++s) one(p, s);
  }
}

// Row r of a row-major matrix with leading dimension ld.
struct RowsOf {
  const float* X;
  long ld;
  const float* operator()(int r) const { return X + static_cast<long>(r) * ld; }
};
inline RowsOf rows_of(const float* X, long ld) { return RowsOf{X, ld}; }

// The 2 x 2 accumulator tiles (0-3: rows 0-15 / 16-31 x columns 0-15 / 16-31) += A tiles 4, 5 (rows
// 0-15, 16-31) times B tiles 6, 7 (columns 0-15, 16-31).
inline void products_2x2() {
  _tile_dpbf16ps(0, 4, 6);
  _tile_dpbf16ps(1, 4, 7);
  _tile_dpbf16ps(2, 5, 6);
  _tile_dpbf16ps(3, 5, 7);
}

// The accumulator tiles from / to a 32 x 32 block of floats ld floats apart.
inline void load_accumulators(const float* c, long ld) {
  const long bytes = ld * static_cast<long>(sizeof(float));
  _tile_loadd(0, c, bytes);
  _tile_loadd(1, c + 16, bytes);
  _tile_loadd(2, c + 16 * ld, bytes);
  _tile_loadd(3, c + 16 * ld + 16, bytes);
}
inline void store_accumulators(float* c, long ld) {
  const long bytes = ld * static_cast<long>(sizeof(float));
  _tile_stored(0, c, bytes);
  _tile_stored(1, c + 16, bytes);
  _tile_stored(2, c + 16 * ld, bytes);
  _tile_stored(3, c + 16 * ld + 16, bytes);
}

// C[rows x cols] (rows, cols <= 32) = alpha * (A panel * B panel over `steps` 32-deep steps) + beta * C.
// Whole tiles with alpha 1 and beta 0 or 1 (the convolutions' products) load C into the accumulator
// tiles and store them back directly; others go through a masked epilogue.
void micro_tile(int steps, const uint16_t* a, const uint16_t* b, float* C, long ldc, int rows, int cols,
                float alpha, float beta) {
  const bool direct = rows == kPanel && cols == kPanel && alpha == 1.f && (beta == 0.f || beta == 1.f);
  if (direct && beta == 1.f) {
    load_accumulators(C, ldc);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int s = 0; s < steps; ++s, a += kStepElems, b += kStepElems) {
    // hi_a lo_b, hi_a hi_b, lo_a hi_b: 8 tile loads for 12 products (small terms first).
    _tile_loadd(4, a, 64);
    _tile_loadd(5, a + 512, 64);
    _tile_loadd(6, b + 1024, 64);
    _tile_loadd(7, b + 1536, 64);
    products_2x2();
    _tile_loadd(6, b, 64);
    _tile_loadd(7, b + 512, 64);
    products_2x2();
    _tile_loadd(4, a + 1024, 64);
    _tile_loadd(5, a + 1536, 64);
    products_2x2();
  }
  if (direct) return store_accumulators(C, ldc);
  alignas(64) float acc[32 * 32];
  store_accumulators(acc, 32);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  const __mmask16 m0 = first_lanes(cols), m1 = first_lanes(cols - 16);
  for (int i = 0; i < rows; ++i) {
    float* c = C + i * ldc;
    __m512 v0 = _mm512_mul_ps(va, _mm512_load_ps(acc + i * 32));
    __m512 v1 = _mm512_mul_ps(va, _mm512_load_ps(acc + i * 32 + 16));
    if (beta != 0.f) {
      v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, c), v0);
      v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16), v1);
    }
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
  }
}

// The micro-tiles of a packed A block (a_panels panels, mc rows, C rows from C) against the packed B
// panels [jp0, jp1) of a block nc columns wide: one A panel (in L1) against every B panel.
void multiply_packed(int steps, const uint16_t* pa, int a_panels, int mc, const uint16_t* pb, int jp0, int jp1,
                     int nc, float* C, long ldc, float alpha, float beta) {
  for (int ip = 0; ip < a_panels; ++ip) {
    const uint16_t* a_panel = pa + static_cast<long>(ip) * steps * kStepElems;
    const int rows = std::min(kPanel, mc - ip * kPanel);
    for (int jp = jp0; jp < jp1; ++jp)
      micro_tile(steps, a_panel, pb + static_cast<long>(jp) * steps * kStepElems,
                 C + static_cast<long>(ip) * kPanel * ldc + jp * kPanel, ldc, rows, std::min(kPanel, nc - jp * kPanel),
                 alpha, beta);
  }
}

}  // namespace

AmxBlocking amx_blocking(int N, int K) {
  return AmxBlocking{(balanced_depth(K, kMaxKC) + kStep - 1) / kStep * kStep,
                     std::min((N + kPanel - 1) / kPanel * kPanel, kNC)};
}

namespace {
// 32-deep steps over all K-blocks of a depth K blocked by KC (the last block's steps rounded up).
long depth_steps(int K, int KC) { return static_cast<long>(K / KC) * (KC / kStep) + (K % KC + kStep - 1) / kStep; }
}  // namespace

size_t amx_packed_b_elems(int N, int K) {
  const AmxBlocking bl = amx_blocking(N, K);
  const long k_steps = depth_steps(K, bl.KC);
  return static_cast<size_t>((N + kPanel - 1) / kPanel) * k_steps * kStepElems;
}

size_t amx_block_offset(int N, int K, int jc, int pc) {
  const AmxBlocking bl = amx_blocking(N, K);
  const long k_steps = depth_steps(K, bl.KC);
  const long n_panels = (std::min(bl.NC, N - jc) + kPanel - 1) / kPanel;
  return static_cast<size_t>((static_cast<long>(jc / bl.NC) * (bl.NC / kPanel) * k_steps +
                              n_panels * (pc / bl.KC) * (bl.KC / kStep)) *
                             kStepElems);
}

void amx_pack_b(ThreadPool& pool, int N, int K, const std::function<const float*(int)>& row, bool depth_major,
                uint16_t* dst) {
  const AmxBlocking bl = amx_blocking(N, K);
  const int n_panels_max = bl.NC / kPanel;
  const int jcs = (N + bl.NC - 1) / bl.NC, pcs = (K + bl.KC - 1) / bl.KC;
  pool.parallel_for(static_cast<int64_t>(jcs) * pcs * n_panels_max, 2, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const int p = static_cast<int>(t % n_panels_max), pb = static_cast<int>((t / n_panels_max) % pcs);
      const int jc = static_cast<int>(t / n_panels_max / pcs) * bl.NC, pc = pb * bl.KC;
      const int nc = std::min(bl.NC, N - jc);
      if (p * kPanel >= nc) continue;
      pack_panels(row, depth_major, false, jc, nc, pc, std::min(bl.KC, K - pc), p, p + 1,
                  dst + amx_block_offset(N, K, jc, pc));
    }
  });
}

void gemm_amx(ThreadPool& pool, bool transA, bool transB, int M, int N, int K, float alpha, const float* A, long lda,
              const float* B, long ldb, float beta, float* C, long ldc, const PackedB* packed, Workspace* workspace) {
  const int T = ThreadPool::inside_region() ? 1 : pool.size();  // serial inside a region (as gemm_run)
  WorkspaceLease lease(workspace);
  Workspace& ws = lease.get();
  const AmxBlocking bl = amx_blocking(N, K);
  const int KC = bl.KC, NC = bl.NC;
  // Row blocks as gemm_run splits them: a multiple of the thread count when M allows, balanced to
  // within one panel; column splits when there are too few row blocks for the threads.
  const int m_panels = (M + kPanel - 1) / kPanel;
  int m_blocks = (M + kMC - 1) / kMC;
  // Row blocks for every thread when M allows, unless op(B) is more than twice as wide: then one row
  // block split by columns (256 x 1024 x 3136 (1,0), 2 threads: 420 -> 520 GFLOP/s).
  if (m_panels >= 4 * T && (packed || N <= 2 * M)) m_blocks = std::max(m_blocks, T);
  if (m_blocks > 1 && m_blocks % T) m_blocks = std::min(m_panels, (m_blocks + T - 1) / T * T);
  m_blocks = std::min(m_blocks, m_panels);
  const int max_block_panels = (m_panels + m_blocks - 1) / m_blocks;

  ws.reserve(1 + T);
  const size_t step_floats = kStepElems / 2;  // uint16 pairs per float slot
  uint16_t* const packed_b = packed ? nullptr : reinterpret_cast<uint16_t*>(
      ws.get(0, static_cast<size_t>(KC / kStep) * (NC / kPanel) * step_floats));

  for (int jc = 0; jc < N; jc += NC) {
    const int nc = std::min(NC, N - jc);
    const int n_panels = (nc + kPanel - 1) / kPanel;
    const int n_splits = m_blocks >= 2 * T || m_blocks % T == 0 ? 1 : std::min(n_panels, T);
    for (int pc = 0; pc < K; pc += KC) {
      const int kc = std::min(KC, K - pc), steps = (kc + kStep - 1) / kStep;
      const float beta_block = pc == 0 ? beta : 1.f;
      // One region: the threads pack the B block (panels claimed from a counter), wait for all of
      // it, then claim (row block, column split) tasks; every C element is written by one task. With
      // one row block split by columns, each task packs its own B panels instead (they stay in its
      // core's L2: 256 x 1024 x 3136 (1,0) 2 threads 420 -> 520 GFLOP/s with the column split).
      const bool own_b = !packed && m_blocks == 1 && n_splits > 1;
      const int b_panels = packed || own_b ? 0 : n_panels;  // panels to pack first, shared
      const uint16_t* const b_block = packed ? packed->amx_block(jc, pc) : packed_b;
      std::atomic<int> next_panel{0}, panels_packed{0};
      std::atomic<int64_t> next_task{0};
      const int64_t tasks = static_cast<int64_t>(m_blocks) * n_splits;
      const int64_t pack_claims = (b_panels + kPackGroup - 1) / kPackGroup;
      pool.parallel_for(std::min<int64_t>(T, std::max(tasks, pack_claims)), 1, [&](int64_t, int64_t, int thread) {
        TileScope tiles;
        // groups of kPackGroup panels: a depth-major B is then read 32 rows at a time, a group wide
        for (int g; (g = next_panel.fetch_add(1, std::memory_order_relaxed)) * kPackGroup < b_panels;) {
          const int p0 = g * kPackGroup, p1 = std::min(b_panels, p0 + kPackGroup);
          pack_panels(rows_of(B, ldb), !transB, false, jc, nc, pc, kc, p0, p1, packed_b);
          panels_packed.fetch_add(p1 - p0, std::memory_order_release);
        }
        while (panels_packed.load(std::memory_order_acquire) < b_panels) std::this_thread::yield();
        uint16_t* const pa = reinterpret_cast<uint16_t*>(
            ws.get(1 + thread, static_cast<size_t>(steps) * max_block_panels * step_floats));
        for (int64_t task; (task = next_task.fetch_add(1, std::memory_order_relaxed)) < tasks;) {
          const int mb = static_cast<int>(task / n_splits), ns = static_cast<int>(task % n_splits);
          const int ip0 = static_cast<int>(static_cast<int64_t>(m_panels) * mb / m_blocks);
          const int ip1 = static_cast<int>(static_cast<int64_t>(m_panels) * (mb + 1) / m_blocks);
          const int i0 = ip0 * kPanel, mc = std::min(M, ip1 * kPanel) - i0;
          const int jp0 = n_panels * ns / n_splits, jp1 = n_panels * (ns + 1) / n_splits;
          if (own_b) pack_panels(rows_of(B, ldb), !transB, false, jc, nc, pc, kc, jp0, jp1, packed_b);
          pack_panels(rows_of(A, lda), transA, true, i0, mc, pc, kc, 0, ip1 - ip0, pa);
          multiply_packed(steps, pa, ip1 - ip0, mc, b_block, jp0, jp1, nc, C + static_cast<long>(i0) * ldc + jc, ldc,
                          alpha, beta_block);
        }
      });
    }
  }
}

}  // namespace gemm_detail
}  // namespace mveb
