// Native CPU kernels of the fused stages (docs/design.md §2), registered as torch custom ops mmx_fast::*.
// One section per stage word (rankings, refine), as in mmx_fast/ops and kernels/.
//
// One translation unit (first-use JIT build: keep it short to compile). ATen for tensors and for the
// float32 GEMM of a vocabulary tile (at::mm, i.e. the same BLAS routine and layout as the reference's
// `h.float() @ w_u.float().T`; the rankings are tested equal to the reference's). OpenMP for the rest.
// Parallel work is split over vocabulary ranges (top-k: one parallel region per call, each thread runs
// single-threaded GEMMs on its own tiles and keeps its own exact running top-k, merged at the end),
// rows or targets; every output element is produced by one thread in a fixed order and no float sum
// is split across threads, so results are identical for any thread count. The thread count follows
// torch.get_num_threads().
//
// Ops (see mmx_fast/native.py for the Python wrappers and the fake / CUDA registrations):
//   rankings_topk(Tensor h, Tensor w_u, int k, int tile=0) -> Tensor                     int64 [R, k]
//   rankings_candidates(Tensor h, Tensor w_u, int keep) -> (Tensor, Tensor)             float32, int64 [R, keep]
//   rankings_rbo(Tensor a, Tensor b, float p, str variant) -> Tensor                     float32 [T, C]
//   refine(Tensor a_t, Tensor ctx, Tensor weights, bool apply_filter, float cancellation_floor) -> Tensor
//                                                                                        float32 [T, H, W]
//   refine_filter(Tensor x) -> Tensor                                                    x's dtype [..., H, W]
// Arguments are validated once in mmx_fast/ops/__init__.py; the TORCH_CHECKs here guard the invariants
// the loops rely on. Shared constants (the cancellation floor) are passed in from mmx_fast/constants.py.

// Only the headers used (not ATen/ATen.h): parsing torch's headers is most of the build time (measured:
// -ftime-report, ~25% less compiler time than with ATen/ATen.h; see README "Native C++ kernels").
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// Hot per-map loops are compiled twice on x86-64 Linux with GCC (AVX2/FMA and baseline) and picked at
// load time, so the JIT build needs no -march flag and the library runs on any x86-64 CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MMX_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MMX_MULTIVERSION
#endif

namespace mmx_fast {
namespace {

int num_threads_for(int64_t work_items) {
  int64_t n = at::get_num_threads();
  if (n < 1) n = 1;
  if (work_items < n) n = std::max<int64_t>(1, work_items);
  return static_cast<int>(n);
}

// ------------------------------------------------------------------------------------------------
// Stage rankings (top-k): streaming top-k rankings
// ------------------------------------------------------------------------------------------------

// A 64-bit key whose unsigned order is (logit descending, vocab id ascending), with the semantics of
// torch.sort(descending=True, stable=True): -0.0 == +0.0, every NaN ranks first (as one value).
inline uint64_t order_key(float v, uint32_t id) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    u = 0x7fc00000u;  // any NaN -> one positive NaN, above +inf
  } else if (u == 0x80000000u) {
    u = 0u;  // -0.0 -> +0.0
  }
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // float order -> unsigned order
  return (static_cast<uint64_t>(u) << 32) | static_cast<uint64_t>(0xffffffffu - id);
}

// The float value of a key (NaN for the NaN key, so that the pre-test `x < thr` is never true).
inline float key_value(uint64_t key) {
  uint32_t u = static_cast<uint32_t>(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
  float v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

inline int64_t key_to_id(uint64_t key) {
  return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu));
}

// Running top-k of one row: a min-heap of keys (heap[0] is the worst kept candidate).
inline void heap_push_row(uint64_t* heap, int64_t& count, int64_t k, const float* logits, int64_t n,
                          uint32_t first_id) {
  const std::greater<uint64_t> cmp;
  int64_t j = 0;
  for (; j < n && count < k; ++j) {
    heap[count++] = order_key(logits[j], first_id + static_cast<uint32_t>(j));
    std::push_heap(heap, heap + count, cmp);
  }
  if (j == n) return;
  uint64_t worst = heap[0];
  float thr = key_value(worst);
  for (; j < n; ++j) {
    // Cheap float pre-test: a logit below the worst kept one can never enter. NaN and ties (and -0.0
    // vs +0.0) fail it and take the exact key comparison.
    if (logits[j] < thr) continue;
    const uint64_t key = order_key(logits[j], first_id + static_cast<uint32_t>(j));
    if (key > worst) {
      std::pop_heap(heap, heap + k, cmp);
      heap[k - 1] = key;
      std::push_heap(heap, heap + k, cmp);
      worst = heap[0];
      thr = key_value(worst);
    }
  }
}

int64_t default_tile(int64_t d, bool upcast) {
  // Rows of W_U per tile and thread (d = 1536: 2048 for float32, 512 otherwise; measured on 2 cores,
  // flat within ~10% from half to twice these). float32 W_U: the GEMM reads W_U in place. Other dtypes:
  // each tile is first upcast into a per-thread float32 buffer, kept small enough to stay in cache.
  const int64_t bytes = upcast ? (int64_t(3) << 20) : (int64_t(12) << 20);
  int64_t t = bytes / (4 * std::max<int64_t>(d, 1));
  t = std::max<int64_t>(256, std::min<int64_t>(t, 16384));
  return (t + 63) / 64 * 64;
}

at::Tensor rankings_topk_cpu(const at::Tensor& h, const at::Tensor& w_u, int64_t k, int64_t tile) {
  TORCH_CHECK(h.dim() == 2 && w_u.dim() == 2 && h.size(1) == w_u.size(1),
              "rankings_topk needs h [R, d] and w_u [V, d]; got ", h.sizes(), " and ", w_u.sizes());
  TORCH_CHECK(h.is_floating_point() && w_u.is_floating_point(),
              "rankings_topk needs floating-point h and w_u; got ", h.scalar_type(), " and ",
              w_u.scalar_type());
  const int64_t r = h.size(0), v = w_u.size(0), d = h.size(1);
  TORCH_CHECK(k >= 1 && k <= v, "top_k=", k, " is not allowed; expected 1 <= top_k <= vocabulary size ", v);
  TORCH_CHECK(v < (int64_t(1) << 32) - 1, "vocabulary size ", v, " is not allowed; expected < 2**32 - 1");
  TORCH_CHECK(tile >= 0, "tile=", tile, " is not allowed; expected 0 (automatic) or a positive row count");
  auto out = at::empty({r, k}, h.options().dtype(at::kLong));
  if (r == 0) return out;

  // Detached: the GEMMs below run on OpenMP worker threads, whose thread-local dispatch state does not
  // exclude autograd.
  const at::Tensor h32 = h.detach().to(at::kFloat).contiguous();
  const at::Tensor w = w_u.detach();
  const bool upcast = w.scalar_type() != at::kFloat;
  if (tile == 0) tile = default_tile(d, upcast);
  tile = std::min(tile, v);
  const int64_t ntiles = (v + tile - 1) / tile;

  // One parallel region for the whole vocabulary: each thread streams a contiguous range of tiles
  // (upcast, single-threaded GEMM, running top-k per row into its own heaps); the heaps are merged after.
  // The per-thread top-k sets are exact, so the merged result does not depend on the split.
  const int nt = num_threads_for(ntiles);
  std::vector<uint64_t> heaps(static_cast<size_t>(nt) * r * k);
  std::vector<int64_t> counts(static_cast<size_t>(nt) * r, 0);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(nt));
  int used = 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int tid = 0, nthr = 1;
#ifdef _OPENMP
    tid = omp_get_thread_num();
    nthr = omp_get_num_threads();
#endif
#pragma omp single
    used = nthr;
    try {
      uint64_t* hp = heaps.data() + static_cast<size_t>(tid) * r * k;
      int64_t* cp = counts.data() + static_cast<size_t>(tid) * r;
      at::Tensor wbuf = upcast ? at::empty({tile, d}, h32.options()) : at::Tensor();
      at::Tensor logits = at::empty({r, tile}, h32.options());
      const int64_t first = ntiles * tid / nthr, last = ntiles * (tid + 1) / nthr;
      for (int64_t ti = first; ti < last; ++ti) {
        const int64_t start = ti * tile, n = std::min(tile, v - start);
        at::Tensor w_tile = w.narrow(0, start, n);
        if (upcast) {
          at::Tensor dst = wbuf.narrow(0, 0, n);
          dst.copy_(w_tile);
          w_tile = dst;
        }
        at::Tensor lg = n == tile ? logits : at::empty({r, n}, h32.options());
        at::mm_out(lg, h32, w_tile.t());  // [R, n] float32: the reference's GEMM, on this thread only
        const float* lp = lg.const_data_ptr<float>();
        for (int64_t row = 0; row < r; ++row)
          heap_push_row(hp + row * k, cp[row], k, lp + row * n, n, static_cast<uint32_t>(start));
      }
    } catch (...) {
      errors[tid] = std::current_exception();
    }
  }
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);

  int64_t* op = out.mutable_data_ptr<int64_t>();
  const int mt = num_threads_for(r);
#pragma omp parallel num_threads(mt) if (mt > 1)
  {
    std::vector<uint64_t> cand;
    cand.reserve(static_cast<size_t>(used) * k);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < r; ++row) {
      cand.clear();
      for (int th = 0; th < used; ++th) {
        const uint64_t* heap = heaps.data() + (static_cast<size_t>(th) * r + row) * k;
        cand.insert(cand.end(), heap, heap + counts[static_cast<size_t>(th) * r + row]);
      }
      std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), std::greater<uint64_t>());
      for (int64_t i = 0; i < k; ++i) op[row * k + i] = key_to_id(cand[i]);
    }
  }
  return out;
}


// ------------------------------------------------------------------------------------------------
// Stage rankings (candidates): the certified pass's candidate scores from our own dot-product kernel
// ------------------------------------------------------------------------------------------------
// Any float32 summation order is within gamma_d |x| |w_j| of the reference's GEMM, so the candidate pass
// need not be the reference's GEMM: the caller re-scores the candidates with it and certifies the rest
// with that bound (mmx_fast/ops/rankings.py, docs/design.md §5). This kernel blocks 3 rows of h x 4 rows of
// W_U in 12 AVX2 accumulators (FMA), which at the few rows stage B ranks runs nearer the core's peak than
// the BLAS GEMM does for small M.

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define MMX_HAVE_AVX2_KERNEL 1

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}

template <int RB, int JB>
__attribute__((target("avx2,fma"))) void dots_block(const float* h, int64_t ldh, const float* w, int64_t ldw,
                                                    int64_t d, float* out, int64_t ldo) {
  __m256 acc[RB][JB];
  for (int a = 0; a < RB; ++a)
    for (int b = 0; b < JB; ++b) acc[a][b] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= d; c += 8) {
    __m256 wv[JB];
    for (int b = 0; b < JB; ++b) wv[b] = _mm256_loadu_ps(w + b * ldw + c);
    for (int a = 0; a < RB; ++a) {
      const __m256 hv = _mm256_loadu_ps(h + a * ldh + c);
      for (int b = 0; b < JB; ++b) acc[a][b] = _mm256_fmadd_ps(hv, wv[b], acc[a][b]);
    }
  }
  for (int a = 0; a < RB; ++a)
    for (int b = 0; b < JB; ++b) {
      float sum = hsum256(acc[a][b]);
      for (int64_t t = c; t < d; ++t) sum += h[a * ldh + t] * w[b * ldw + t];
      out[a * ldo + b] = sum;
    }
}

template <int RB>
__attribute__((target("avx2,fma"))) void dots_rows(const float* h, const float* w, int64_t n, int64_t d,
                                                   float* out, int64_t ldo) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) dots_block<RB, 4>(h, d, w + j * d, d, d, out + j, ldo);
  for (; j < n; ++j) dots_block<RB, 1>(h, d, w + j * d, d, d, out + j, ldo);
}

// out[i, j] = h[i] . w[j] for i < r, j < n (h [r, d], w [n, d], out [r, n], all contiguous float32)
__attribute__((target("avx2,fma"))) void dots_avx2(const float* h, int64_t r, const float* w, int64_t n,
                                                   int64_t d, float* out) {
  // W_U rows in chunks that stay in L1/L2 while every block of 3 rows of h passes over them
  const int64_t chunk = 64;
  for (int64_t j0 = 0; j0 < n; j0 += chunk) {
    const int64_t m = std::min(chunk, n - j0);
    int64_t i = 0;
    for (; i + 3 <= r; i += 3) dots_rows<3>(h + i * d, w + j0 * d, m, d, out + i * n + j0, n);
    if (r - i == 2) dots_rows<2>(h + i * d, w + j0 * d, m, d, out + i * n + j0, n);
    if (r - i == 1) dots_rows<1>(h + i * d, w + j0 * d, m, d, out + i * n + j0, n);
  }
}
#endif

void dots_portable(const float* h, int64_t r, const float* w, int64_t n, int64_t d, float* out) {
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float sum = 0.f;
      for (int64_t t = 0; t < d; ++t) sum += h[i * d + t] * w[j * d + t];
      out[i * n + j] = sum;
    }
}

bool cpu_has_avx2_fma() {
#ifdef MMX_HAVE_AVX2_KERNEL
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// Per row of h, the `keep` largest candidate scores (float32 [R, keep], descending, ties to the smaller id)
// and their ids (int64): the running top-k of rankings_topk_cpu over our kernel's scores instead of the GEMM's.
std::tuple<at::Tensor, at::Tensor> rankings_candidates_cpu(const at::Tensor& h, const at::Tensor& w_u, int64_t keep) {
  TORCH_CHECK(h.dim() == 2 && w_u.dim() == 2 && h.size(1) == w_u.size(1),
              "rankings_candidates needs h [R, d] and w_u [V, d]; got ", h.sizes(), " and ", w_u.sizes());
  TORCH_CHECK(h.is_floating_point() && w_u.is_floating_point(), "rankings_candidates needs floating-point inputs");
  const int64_t r = h.size(0), v = w_u.size(0), d = h.size(1);
  TORCH_CHECK(keep >= 1 && keep <= v, "keep=", keep, " is not allowed; expected 1 <= keep <= ", v);
  TORCH_CHECK(v < (int64_t(1) << 32) - 1, "vocabulary size ", v, " is not allowed; expected < 2**32 - 1");
  auto vals = at::empty({r, keep}, h.options().dtype(at::kFloat));
  auto ids = at::empty({r, keep}, h.options().dtype(at::kLong));
  if (r == 0) return {vals, ids};
  const at::Tensor h32 = h.detach().to(at::kFloat).contiguous();
  const at::Tensor w = w_u.detach().contiguous();
  const bool upcast = w.scalar_type() != at::kFloat;
  const int64_t tile = std::min<int64_t>(upcast ? 512 : 1024, v);
  const int64_t ntiles = (v + tile - 1) / tile;
  const bool avx2 = cpu_has_avx2_fma();
  const int nt = num_threads_for(ntiles);
  std::vector<uint64_t> heaps(static_cast<size_t>(nt) * r * keep);
  std::vector<int64_t> counts(static_cast<size_t>(nt) * r, 0);
  std::vector<std::exception_ptr> errors(static_cast<size_t>(nt));
  int used = 1;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    int tid = 0, nthr = 1;
#ifdef _OPENMP
    tid = omp_get_thread_num();
    nthr = omp_get_num_threads();
#endif
#pragma omp single
    used = nthr;
    try {
      uint64_t* hp = heaps.data() + static_cast<size_t>(tid) * r * keep;
      int64_t* cp = counts.data() + static_cast<size_t>(tid) * r;
      at::Tensor wbuf = upcast ? at::empty({tile, d}, h32.options()) : at::Tensor();
      std::vector<float> lg(static_cast<size_t>(r * tile));
      const int64_t first = ntiles * tid / nthr, last = ntiles * (tid + 1) / nthr;
      for (int64_t ti = first; ti < last; ++ti) {
        const int64_t start = ti * tile, n = std::min(tile, v - start);
        at::Tensor w_tile = w.narrow(0, start, n);
        if (upcast) {
          at::Tensor dst = wbuf.narrow(0, 0, n);
          dst.copy_(w_tile);  // exact: bfloat16 / float16 -> float32
          w_tile = dst;
        }
        const float* wp = w_tile.const_data_ptr<float>();
#ifdef MMX_HAVE_AVX2_KERNEL
        if (avx2)
          dots_avx2(h32.const_data_ptr<float>(), r, wp, n, d, lg.data());
        else
#endif
          dots_portable(h32.const_data_ptr<float>(), r, wp, n, d, lg.data());
        for (int64_t row = 0; row < r; ++row)
          heap_push_row(hp + row * keep, cp[row], keep, lg.data() + row * n, n, static_cast<uint32_t>(start));
      }
    } catch (...) {
      errors[tid] = std::current_exception();
    }
  }
  (void)avx2;
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
  float* vp = vals.mutable_data_ptr<float>();
  int64_t* ip = ids.mutable_data_ptr<int64_t>();
  std::vector<uint64_t> cand;
  for (int64_t row = 0; row < r; ++row) {
    cand.clear();
    for (int th = 0; th < used; ++th) {
      const uint64_t* heap = heaps.data() + (static_cast<size_t>(th) * r + row) * keep;
      cand.insert(cand.end(), heap, heap + counts[static_cast<size_t>(th) * r + row]);
    }
    std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), std::greater<uint64_t>());
    for (int64_t i = 0; i < keep; ++i) {
      vp[row * keep + i] = key_value(cand[i]);
      ip[row * keep + i] = key_to_id(cand[i]);
    }
  }
  return {vals, ids};
}

// ------------------------------------------------------------------------------------------------
// Stage rankings (RBO): RBO of every (target, context) pair
// ------------------------------------------------------------------------------------------------

// c_d (d = 1..k) with RBO = sum_d c_d X_d; the same formulas as mmx_fast.reference.rankings.rbo_weights.
std::vector<double> rbo_weights(int64_t k, double p, const std::string& variant) {
  std::vector<double> c(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    c[i] = (1.0 - p) * std::pow(p, static_cast<double>(i)) / static_cast<double>(i + 1);
  }
  if (variant == "ext") {
    c[k - 1] += std::pow(p, static_cast<double>(k)) / static_cast<double>(k);
  } else if (variant == "min") {
    double s = 0.0;
    for (int64_t d = 1; d <= k; ++d) s += std::pow(p, static_cast<double>(d)) / static_cast<double>(d);
    c[k - 1] += -(1.0 - p) / p * (s + std::log(1.0 - p));
  } else {
    TORCH_CHECK(variant == "truncated", "rbo variant='", variant,
                "' is not allowed; expected one of ext, truncated, min");
  }
  return c;
}

at::Tensor rankings_rbo_cpu(const at::Tensor& a, const at::Tensor& b, double p, c10::string_view variant) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "rankings_rbo needs a [T, k] and b [C, k]; got ", a.sizes(),
              " and ", b.sizes());
  TORCH_CHECK(!a.is_floating_point() && !b.is_floating_point() && !a.is_complex() && !b.is_complex() &&
                  a.scalar_type() != at::kBool && b.scalar_type() != at::kBool,
              "rankings_rbo takes integer id lists; got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.size(1) == b.size(1) && a.size(1) >= 1,
              "rankings_rbo needs two non-empty lists of equal depth; got ", a.size(1), " and ", b.size(1));
  TORCH_CHECK(p > 0.0 && p < 1.0, "rbo_p=", p, " is not allowed; expected a number strictly between 0 and 1");
  const int64_t t = a.size(0), c = b.size(0), k = a.size(1);
  const std::vector<double> cw = rbo_weights(k, p, std::string(variant));
  auto out = at::empty({t, c}, a.options().dtype(at::kFloat));
  if (t == 0 || c == 0) return out;
  const at::Tensor a64 = a.to(at::kLong).contiguous();
  const at::Tensor b64 = b.to(at::kLong).contiguous();
  const int64_t* ap = a64.const_data_ptr<int64_t>();
  const int64_t* bp = b64.const_data_ptr<int64_t>();

  // An id at position i of one list and j of the other lies in both depth-d prefixes for d > max(i, j):
  // RBO = sum_d c_d X_d = sum_m hist[m] W[m], hist the histogram of max(i, j) over matching pairs (whose
  // cumulative sum is X) and W[m] = sum_{d > m} c_d (the cumulative sum folded into the weights).
  // W[k] = 0 stands for "absent".
  std::vector<double> wdepth(static_cast<size_t>(k + 1), 0.0);
  for (int64_t m = k - 1; m >= 0; --m) wdepth[m] = wdepth[m + 1] + cw[m];

  // Compact indices of the ids that occur in a (ids only in b never match).
  std::vector<int64_t> uniq(ap, ap + t * k);
  std::sort(uniq.begin(), uniq.end());
  uniq.erase(std::unique(uniq.begin(), uniq.end()), uniq.end());
  const int64_t u = static_cast<int64_t>(uniq.size());
  auto index_of = [&](int64_t id) -> int64_t {
    auto it = std::lower_bound(uniq.begin(), uniq.end(), id);
    return (it != uniq.end() && *it == id) ? static_cast<int64_t>(it - uniq.begin()) : -1;
  };
  std::vector<int32_t> ua(static_cast<size_t>(t * k));
  for (int64_t i = 0; i < t * k; ++i) ua[i] = static_cast<int32_t>(index_of(ap[i]));
  std::vector<int32_t> ub(static_cast<size_t>(c * k));
  for (int64_t i = 0; i < c * k; ++i) ub[i] = static_cast<int32_t>(index_of(bp[i]));

  float* op = out.mutable_data_ptr<float>();
  const double* wd = wdepth.data();
  const int nt = num_threads_for(c);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    // Per context list: the position of every compact id in it (k = absent). A list holding a shared id
    // twice (never a top-k ranking) is compared exhaustively instead, so every matching (i, j) counts.
    std::vector<int32_t> pos(static_cast<size_t>(u), static_cast<int32_t>(k));
#pragma omp for schedule(static)
    for (int64_t ci = 0; ci < c; ++ci) {
      const int32_t* brow = ub.data() + ci * k;
      bool dup = false;
      for (int64_t j = 0; j < k; ++j) {
        if (brow[j] < 0) continue;
        if (pos[brow[j]] != k) dup = true;
        pos[brow[j]] = static_cast<int32_t>(j);
      }
      for (int64_t ti = 0; ti < t; ++ti) {
        double acc = 0.0;
        if (!dup) {
          const int32_t* arow = ua.data() + ti * k;
          for (int64_t i = 0; i < k; ++i) acc += wd[std::max<int64_t>(i, pos[arow[i]])];
        } else {
          const int64_t* arow = ap + ti * k;
          const int64_t* brow_ids = bp + ci * k;
          for (int64_t i = 0; i < k; ++i)
            for (int64_t j = 0; j < k; ++j)
              if (arow[i] == brow_ids[j]) acc += wd[std::max(i, j)];
        }
        op[ti * c + ci] = static_cast<float>(acc);
      }
      for (int64_t j = 0; j < k; ++j)
        if (brow[j] >= 0) pos[brow[j]] = static_cast<int32_t>(k);
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// Stage refine: rank Gaussian filter (TAM, kernel 3), ARC, normalisation
// ------------------------------------------------------------------------------------------------

#define MMX_CSWAP(i, j)                     \
  {                                         \
    const double lo = std::min(v[i], v[j]); \
    const double hi = std::max(v[i], v[j]); \
    v[i] = lo;                              \
    v[j] = hi;                              \
  }

// 9-input sorting network, 25 comparators: sort the three rows of the window, then the columns, then
// merge along the diagonals. Branch-free (min/max).
inline void sort9(double* v) {
  MMX_CSWAP(0, 1) MMX_CSWAP(3, 4) MMX_CSWAP(6, 7) MMX_CSWAP(1, 2) MMX_CSWAP(4, 5) MMX_CSWAP(7, 8)
  MMX_CSWAP(0, 1) MMX_CSWAP(3, 4) MMX_CSWAP(6, 7) MMX_CSWAP(0, 3) MMX_CSWAP(3, 6) MMX_CSWAP(0, 3)
  MMX_CSWAP(1, 4) MMX_CSWAP(4, 7) MMX_CSWAP(1, 4) MMX_CSWAP(2, 5) MMX_CSWAP(5, 8) MMX_CSWAP(2, 5)
  MMX_CSWAP(1, 3) MMX_CSWAP(5, 7) MMX_CSWAP(2, 6) MMX_CSWAP(4, 6) MMX_CSWAP(2, 4) MMX_CSWAP(2, 3)
  MMX_CSWAP(5, 6)
}
#undef MMX_CSWAP

// One cell: sorted window -> filtered value. mean <= 0 -> 0; sigma == 0 (constant window) -> median.
inline double rank_gaussian_cell(double* v) {
  sort9(v);
  double sum = 0.0;
  for (int i = 0; i < 9; ++i) sum += v[i];
  const double mean = sum / 9.0;
  if (!(mean > 0.0)) return 0.0;
  double var = 0.0;
  for (int i = 0; i < 9; ++i) var += (v[i] - mean) * (v[i] - mean);
  var /= 9.0;
  const double sigma = std::sqrt(var) / mean;
  const double denom = 2.0 * sigma * sigma;
  if (!(denom > 0.0)) return v[4];
  // Weights exp(-r^2 / denom) for rank offsets r = 0, +-1..+-4 (the r = 0 weight is 1): one exp, then
  // e^(r^2) by products (relative error a few double ulps; underflow to 0 is the correct limit).
  const double e1 = std::exp(-1.0 / denom);
  const double e2 = e1 * e1, e4 = e2 * e2, e8 = e4 * e4;
  const double w1 = e1, w2 = e4, w3 = e8 * e1, w4 = e8 * e8;
  const double num =
      v[4] + w1 * (v[3] + v[5]) + w2 * (v[2] + v[6]) + w3 * (v[1] + v[7]) + w4 * (v[0] + v[8]);
  const double den = 1.0 + 2.0 * (w1 + w2 + w3 + w4);
  return num / den;
}

// numpy 'reflect' neighbours (edge not repeated; a length-1 axis repeats itself) of each index.
inline void reflect_neighbours(int64_t n, std::vector<int64_t>& prev, std::vector<int64_t>& next) {
  prev.resize(static_cast<size_t>(n));
  next.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    prev[i] = i > 0 ? i - 1 : (n > 1 ? 1 : 0);
    next[i] = i < n - 1 ? i + 1 : (n > 1 ? n - 2 : 0);
  }
}

// Filter one map src [H, W] (double) into dst [H, W] (double).
inline void filter_map(const double* src, double* dst, int64_t hh, int64_t ww, const int64_t* yp,
                       const int64_t* yn, const int64_t* xp, const int64_t* xn) {
  double v[9];
  for (int64_t y = 0; y < hh; ++y) {
    const double* rows[3] = {src + yp[y] * ww, src + y * ww, src + yn[y] * ww};
    for (int64_t x = 0; x < ww; ++x) {
      const int64_t cols[3] = {xp[x], x, xn[x]};
      for (int dy = 0; dy < 3; ++dy)
        for (int dx = 0; dx < 3; ++dx) v[dy * 3 + dx] = rows[dy][cols[dx]];
      dst[y * ww + x] = rank_gaussian_cell(v);
    }
  }
}

MMX_MULTIVERSION
void filter_one(const double* src, double* dst, int64_t hh, int64_t ww, const int64_t* yp, const int64_t* yn,
                const int64_t* xp, const int64_t* xn) {
  filter_map(src, dst, hh, ww, yp, yn, xp, xn);
}

at::Tensor refine_filter_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 2 && x.size(-1) >= 1 && x.size(-2) >= 1,
              "refine_filter needs [..., H, W] with H, W >= 1; got ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), "refine_filter needs a floating-point tensor; got ",
              x.scalar_type());
  const int64_t hh = x.size(-2), ww = x.size(-1), hw = hh * ww;
  const at::Tensor xd = x.to(at::kDouble).contiguous();
  at::Tensor out = at::empty_like(xd);
  const int64_t maps = hw == 0 ? 0 : xd.numel() / hw;
  std::vector<int64_t> yp, yn, xp, xn;
  reflect_neighbours(hh, yp, yn);
  reflect_neighbours(ww, xp, xn);
  const double* src = xd.const_data_ptr<double>();
  double* dst = out.mutable_data_ptr<double>();
  const int nt = num_threads_for(maps);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t m = 0; m < maps; ++m)
    filter_one(src + m * hw, dst + m * hw, hh, ww, yp.data(), yn.data(), xp.data(), xn.data());
  return out.to(x.scalar_type());
}

// One target of stage refine: out[hw] = normalize(G(floor(relu(a - beta ahat)))). ahat is accumulated in float32
// over the contexts in index order (as a GEMM would, but in a fixed order); the dot products, the
// residual and the filter are computed in double. Scratch: ahat (float, hw), res and filt (double, hw).
MMX_MULTIVERSION
void refine_target(const float* a, const float* ctx, const float* w, int64_t c, int64_t hh, int64_t ww,
                   bool apply_filter, double cancellation_floor, const int64_t* yp, const int64_t* yn, const int64_t* xp,
                   const int64_t* xn, float* ahat, double* res, double* filt, float* out) {
  const int64_t hw = hh * ww;
  // Interference map (Eq. 8): sum_j w_j A_j / sum_j w_j, zero when the sum is <= 0.
  double total = 0.0;
  for (int64_t ci = 0; ci < c; ++ci) total += static_cast<double>(w[ci]);
  std::fill(ahat, ahat + hw, 0.0f);
  if (c > 0 && total > 0.0) {
    for (int64_t ci = 0; ci < c; ++ci) {
      const float wc = w[ci];
      if (wc == 0.0f) continue;
      const float* m = ctx + ci * hw;
      for (int64_t i = 0; i < hw; ++i) ahat[i] += wc * m[i];
    }
    const float inv = static_cast<float>(1.0 / total);
    for (int64_t i = 0; i < hw; ++i) ahat[i] *= inv;
  }
  // Closed-form least squares (Eq. 9): beta = <A, Ahat> / <Ahat, Ahat>, 0 when Ahat == 0.
  double num = 0.0, den = 0.0;
  float amax = a[0];
  for (int64_t i = 0; i < hw; ++i) {
    num += static_cast<double>(a[i]) * static_cast<double>(ahat[i]);
    den += static_cast<double>(ahat[i]) * static_cast<double>(ahat[i]);
    amax = std::max(amax, a[i]);
  }
  const double beta = den > 0.0 ? num / den : 0.0;
  const double floor = cancellation_floor * static_cast<double>(amax);
  for (int64_t i = 0; i < hw; ++i) {
    const double r = std::max(static_cast<double>(a[i]) - beta * static_cast<double>(ahat[i]), 0.0);
    res[i] = r > floor ? r : 0.0;
  }
  const double* g = res;
  if (apply_filter) {
    filter_map(res, filt, hh, ww, yp, yn, xp, xn);
    g = filt;
  }
  double gmax = 0.0;
  for (int64_t i = 0; i < hw; ++i) gmax = std::max(gmax, g[i]);
  if (gmax > 0.0) {
    for (int64_t i = 0; i < hw; ++i) out[i] = static_cast<float>(g[i] / gmax);
  } else {
    std::fill(out, out + hw, 0.0f);
  }
}

at::Tensor refine_cpu(const at::Tensor& a_t, const at::Tensor& ctx, const at::Tensor& weights,
                      bool apply_filter, double cancellation_floor) {
  TORCH_CHECK(a_t.dim() == 3, "refine needs a_t [T, H, W]; got ", a_t.sizes());
  TORCH_CHECK(ctx.dim() == 3 && ctx.size(1) == a_t.size(1) && ctx.size(2) == a_t.size(2),
              "refine needs ctx [C, H, W] on the grid of a_t; got ", ctx.sizes(), " and ", a_t.sizes());
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == a_t.size(0) && weights.size(1) == ctx.size(0),
              "refine needs weights [T, C] = [", a_t.size(0), ", ", ctx.size(0), "]; got ", weights.sizes());
  TORCH_CHECK(a_t.is_floating_point() && ctx.is_floating_point() && weights.is_floating_point(),
              "refine needs floating-point a_t, ctx and weights; got ", a_t.scalar_type(), ", ",
              ctx.scalar_type(), " and ", weights.scalar_type());
  const int64_t t = a_t.size(0), c = ctx.size(0), hh = a_t.size(1), ww = a_t.size(2), hw = hh * ww;
  auto out = at::empty({t, hh, ww}, a_t.options().dtype(at::kFloat));
  if (t == 0 || hw == 0) return out;
  const at::Tensor a32 = a_t.to(at::kFloat).contiguous();
  const at::Tensor c32 = ctx.to(at::kFloat).contiguous();
  const at::Tensor w32 = weights.to(at::kFloat).contiguous();
  const float* ap = a32.const_data_ptr<float>();
  const float* cp = c32.const_data_ptr<float>();
  const float* wp = w32.const_data_ptr<float>();
  float* op = out.mutable_data_ptr<float>();
  std::vector<int64_t> yp, yn, xp, xn;
  reflect_neighbours(hh, yp, yn);
  reflect_neighbours(ww, xp, xn);

  const int nt = num_threads_for(t);
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    std::vector<float> ahat(static_cast<size_t>(hw));
    std::vector<double> res(static_cast<size_t>(hw)), filt(static_cast<size_t>(hw));
#pragma omp for schedule(static)
    for (int64_t ti = 0; ti < t; ++ti) {
      refine_target(ap + ti * hw, cp, wp + ti * c, c, hh, ww, apply_filter, cancellation_floor, yp.data(),
                    yn.data(), xp.data(), xn.data(), ahat.data(), res.data(), filt.data(), op + ti * hw);
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(mmx_fast, m) {
  m.def("rankings_topk(Tensor h, Tensor w_u, int k, int tile=0) -> Tensor");
  m.def("rankings_candidates(Tensor h, Tensor w_u, int keep) -> (Tensor, Tensor)");
  m.def("rankings_rbo(Tensor a, Tensor b, float p=0.9, str variant=\"ext\") -> Tensor");
  m.def("refine(Tensor a_t, Tensor ctx, Tensor weights, bool apply_filter, float cancellation_floor) -> Tensor");
  m.def("refine_filter(Tensor x) -> Tensor");
}

TORCH_LIBRARY_IMPL(mmx_fast, CPU, m) {
  m.impl("rankings_topk", &rankings_topk_cpu);
  m.impl("rankings_candidates", &rankings_candidates_cpu);
  m.impl("rankings_rbo", &rankings_rbo_cpu);
  m.impl("refine", &refine_cpu);
  m.impl("refine_filter", &refine_filter_cpu);
}

}  // namespace mmx_fast
