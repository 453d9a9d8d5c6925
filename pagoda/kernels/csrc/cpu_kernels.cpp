// Pagoda's CPU kernels: the per-layer work between the matrix multiplies, fused so that a decode
// step runs a handful of operators per layer instead of dozens (each eager operator costs a few
// microseconds of dispatch, which at batch 1 is a third of the step).
//
// All kernels take float32 or bfloat16 tensors, compute in float32 and round once on the way
// out. Registered as torch.ops.pagoda.* so they show by name in profiles.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace {

// The kernels see bfloat16 as its raw bits (uint16_t) and convert with bit operations: the
// compiler vectorizes loops over plain integers, not over c10's BFloat16 class.
template <typename T> struct Raw { using type = T; };
template <> struct Raw<at::BFloat16> { using type = uint16_t; };

template <typename T> typename Raw<T>::type* raw(const at::Tensor& t) {
  return reinterpret_cast<typename Raw<T>::type*>(t.data_ptr<T>());
}

// float32 and bfloat16 only (other dtypes take the portable PyTorch path).
#define PAGODA_DISPATCH(TYPE, NAME, ...)                                                        \
  [&] {                                                                                         \
    switch (TYPE) {                                                                             \
      case at::kFloat: { using scalar_t = float; return __VA_ARGS__(); }                        \
      case at::kBFloat16: { using scalar_t = at::BFloat16; return __VA_ARGS__(); }              \
      default: TORCH_CHECK(false, NAME, ": float32 or bfloat16 expected, got ", TYPE);          \
    }                                                                                           \
  }()

inline float to_float(float x) { return x; }
inline float to_float(uint16_t bf16) { return __builtin_bit_cast(float, static_cast<uint32_t>(bf16) << 16); }

template <typename T> inline T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline uint16_t from_float<uint16_t>(float f) {
  uint32_t bits = __builtin_bit_cast(uint32_t, f);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

// exp by range reduction and a degree-6 polynomial (Cephes' expf, about 1 ulp), vectorizable.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.7f);
  const float k = std::floor(x * 1.44269504089f + 0.5f);
  const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(k) + 127) << 23);
}

// Rows per parallel task so that a task does at least ~16k elements of work: small batches then
// run on the calling thread without waking the pool.
int64_t grain_rows(int64_t elements_per_row) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, elements_per_row));
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
}

// residual += x; x = rms_norm(residual) * weight. The sum is rounded to the activation dtype
// before the norm, as the unfused add would.
template <typename T>
void add_rms_norm_impl(T* x, T* res, const T* w, int64_t rows, int64_t hidden, int64_t x_stride,
                       int64_t r_stride, float eps) {
  at::parallel_for(0, rows, grain_rows(hidden), [&](int64_t begin, int64_t end) {
    std::vector<float> sum(hidden);
    for (int64_t r = begin; r < end; ++r) {
      T* xr = x + r * x_stride;
      T* rr = res + r * r_stride;
      float ss = 0.f;
#pragma omp simd reduction(+ : ss)
      for (int64_t i = 0; i < hidden; ++i) {
        const T s = from_float<T>(to_float(xr[i]) + to_float(rr[i]));
        rr[i] = s;
        const float f = to_float(s);
        sum[i] = f;
        ss += f * f;
      }
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(hidden) + eps);
#pragma omp simd
      for (int64_t i = 0; i < hidden; ++i) xr[i] = from_float<T>(sum[i] * inv * to_float(w[i]));
    }
  });
}

void fused_add_rms_norm_(at::Tensor x, at::Tensor residual, const at::Tensor& weight, double eps) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && residual.sizes() == x.sizes(), "x and residual must be [tokens, hidden]");
  TORCH_CHECK(x.stride(1) == 1 && residual.stride(1) == 1, "rows must be contiguous");
  TORCH_CHECK(x.scalar_type() == residual.scalar_type() && x.scalar_type() == weight.scalar_type(),
              "x, residual and weight must share a dtype");
  const at::Tensor w = weight.contiguous();
  PAGODA_DISPATCH(x.scalar_type(), "fused_add_rms_norm_", [&] {
    add_rms_norm_impl<typename Raw<scalar_t>::type>(raw<scalar_t>(x), raw<scalar_t>(residual), raw<scalar_t>(w),
                                x.size(0), x.size(1), x.stride(0), residual.stride(0), static_cast<float>(eps));
  });
}

// Rotate-half RoPE in place on q [T, Hq, D] and k [T, Hkv, D] (rows may be strided views of a
// fused QKV output). cos/sin are float32 tables [max_positions, D] laid out as (c | c), (s | s).
template <typename T>
void rotary_impl(const int64_t* pos, T* q, T* k, const float* cos, const float* sin, int64_t tokens,
                 int64_t hq, int64_t hk, int64_t d, int64_t qst, int64_t qsh, int64_t kst, int64_t ksh) {
  const int64_t half = d / 2;
  at::parallel_for(0, tokens, grain_rows((hq + hk) * d), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* c = cos + pos[t] * d;
      const float* s = sin + pos[t] * d;
      auto rotate = [&](T* x) {
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float x1 = to_float(x[i]);
          const float x2 = to_float(x[i + half]);
          x[i] = from_float<T>(x1 * c[i] - x2 * s[i]);
          x[i + half] = from_float<T>(x2 * c[i + half] + x1 * s[i + half]);
        }
      };
      for (int64_t h = 0; h < hq; ++h) rotate(q + t * qst + h * qsh);
      for (int64_t h = 0; h < hk; ++h) rotate(k + t * kst + h * ksh);
    }
  });
}

void rotary_embedding_(const at::Tensor& positions, at::Tensor q, at::Tensor k, const at::Tensor& cos,
                       const at::Tensor& sin) {
  check_cpu(q, "q");
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && q.size(0) == k.size(0) && q.size(2) == k.size(2),
              "q must be [T, Hq, D] and k [T, Hkv, D]");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1, "head dim must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "q and k must share a dtype");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
              sin.is_contiguous() && cos.size(1) == q.size(2), "cos/sin must be contiguous float32 [P, D]");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.numel() == q.size(0), "positions: int64 [T]");
  const at::Tensor pos = positions.contiguous();
  PAGODA_DISPATCH(q.scalar_type(), "rotary_embedding_", [&] {
    rotary_impl<typename Raw<scalar_t>::type>(pos.data_ptr<int64_t>(), raw<scalar_t>(q), raw<scalar_t>(k),
                          cos.data_ptr<float>(), sin.data_ptr<float>(), q.size(0), q.size(1), k.size(1), q.size(2),
                          q.stride(0), q.stride(1), k.stride(0), k.stride(1));
  });
}

// Writes k/v [T, Hkv, D] into head-major caches [Hkv, num_blocks, block_size, D] at slot_mapping.
template <typename T>
void cache_write_impl(const T* k, const T* v, T* kc, T* vc, const int64_t* slots, int64_t tokens, int64_t hk,
                      int64_t d, int64_t kst, int64_t ksh, int64_t vst, int64_t vsh, int64_t head_stride) {
  at::parallel_for(0, tokens, grain_rows(2 * hk * d), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;  // padding token: nothing to store
      for (int64_t h = 0; h < hk; ++h) {
        std::memcpy(kc + h * head_stride + slot * d, k + t * kst + h * ksh, d * sizeof(T));
        std::memcpy(vc + h * head_stride + slot * d, v + t * vst + h * vsh, d * sizeof(T));
      }
    }
  });
}

void write_kv_cache_(const at::Tensor& k, const at::Tensor& v, at::Tensor k_cache, at::Tensor v_cache,
                     const at::Tensor& slot_mapping) {
  check_cpu(k, "k");
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes() && k.stride(2) == 1 && v.stride(2) == 1,
              "k and v must be [T, Hkv, D] with a contiguous head dim");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.dim() == 4 &&
              k_cache.size(0) == k.size(1) && k_cache.size(3) == k.size(2), "caches must be [Hkv, blocks, block, D]");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type(),
              "k/v and caches must share a dtype");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.numel() == k.size(0), "slot_mapping: int64 [T]");
  const at::Tensor slots = slot_mapping.contiguous();
  PAGODA_DISPATCH(k.scalar_type(), "write_kv_cache_", [&] {
    cache_write_impl<typename Raw<scalar_t>::type>(raw<scalar_t>(k), raw<scalar_t>(v), raw<scalar_t>(k_cache),
                               raw<scalar_t>(v_cache), slots.data_ptr<int64_t>(), k.size(0), k.size(1), k.size(2),
                               k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(0));
  });
}

// 16 float lanes as a GCC vector: one AVX-512 register, or two AVX2 ones, or scalar code.
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));

inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline f32x16 load16(const uint16_t* p) {  // bfloat16 -> float32
  u16x16 h;
  std::memcpy(&h, p, sizeof h);
  return reinterpret_cast<f32x16>(__builtin_convertvector(h, u32x16) << 16);
}
inline float sum16(f32x16 v) {  // a tree: a left-to-right sum is a chain of 16 dependent adds
  const f32x8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                  __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const f32x4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

constexpr int64_t MAX_GROUP = 16;  // query heads per KV head held in registers

// Blocks sit anywhere in the pool, so the hardware prefetcher stops at each block's end: ask for
// the next block while this one is read (halves the time of a long decode batch).
template <typename T>
inline void prefetch_block(const T* head, int64_t block, int64_t block_size, int64_t d) {
  const char* start = reinterpret_cast<const char*>(head + block * block_size * d);
  for (int64_t byte = 0; byte < block_size * d * static_cast<int64_t>(sizeof(T)); byte += 64)
    __builtin_prefetch(start + byte);
}

template <typename T>
inline void prefetch_next_block(const T* head, const int64_t* table, int64_t j, int64_t len, int64_t block_size,
                                int64_t d) {
  if (j % block_size == 0 && j + block_size < len) prefetch_block(head, table[j / block_size + 1], block_size, d);
}

// Softmax over each query's scores in place (normalised, so p . v needs no division after).
inline void softmax_rows(float* scores, int64_t group, int64_t len) {
  for (int64_t g = 0; g < group; ++g) {
    float* sg = scores + g * len;
    float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < len; ++j) mx = std::max(mx, sg[j]);
    float total = 0.f;
#pragma omp simd reduction(+ : total)
    for (int64_t j = 0; j < len; ++j) {
      sg[j] = fast_exp(sg[j] - mx);
      total += sg[j];
    }
    const float inv = 1.f / total;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) sg[j] *= inv;
  }
}

// One (sequence, KV head) of decode attention for head_dim = 16 * CHUNKS: the group's queries
// and output accumulators stay in registers; each key and value row is read once.
template <typename T, int CHUNKS>
void decode_task(T* out, int64_t osh, const T* q, int64_t qsh, const T* kh, const T* vh, const int64_t* table,
                 int64_t len, int64_t group, int64_t block_size, float scale, std::vector<float>& scores) {
  constexpr int64_t d = 16 * CHUNKS;
  f32x16 qv[MAX_GROUP][CHUNKS], acc[MAX_GROUP][CHUNKS] = {};
  for (int64_t g = 0; g < group; ++g)
    for (int c = 0; c < CHUNKS; ++c) qv[g][c] = load16(q + g * qsh + c * 16) * scale;
  scores.resize(group * len);
  float* sc = scores.data();
  for (int64_t j = 0; j < len; ++j) {
    const T* kr = kh + (table[j / block_size] * block_size + j % block_size) * d;
    prefetch_next_block(kh, table, j, len, block_size, d);
    f32x16 k[CHUNKS];
    for (int c = 0; c < CHUNKS; ++c) k[c] = load16(kr + c * 16);
    for (int64_t g = 0; g < group; ++g) {
      f32x16 dot = qv[g][0] * k[0];
      for (int c = 1; c < CHUNKS; ++c) dot += qv[g][c] * k[c];
      sc[g * len + j] = sum16(dot);
    }
  }
  softmax_rows(sc, group, len);
  for (int64_t j = 0; j < len; ++j) {
    const T* vr = vh + (table[j / block_size] * block_size + j % block_size) * d;
    prefetch_next_block(vh, table, j, len, block_size, d);
    f32x16 v[CHUNKS];
    for (int c = 0; c < CHUNKS; ++c) v[c] = load16(vr + c * 16);
    for (int64_t g = 0; g < group; ++g) {
      const float p = sc[g * len + j];
      for (int c = 0; c < CHUNKS; ++c) acc[g][c] += p * v[c];
    }
  }
  for (int64_t g = 0; g < group; ++g)
    for (int64_t i = 0; i < d; ++i) out[g * osh + i] = from_float<T>(acc[g][i / 16][i % 16]);
}

// The same for any head_dim (and bigger groups), one element at a time.
template <typename T>
void decode_task_any(T* out, int64_t osh, const T* q, int64_t qsh, const T* kh, const T* vh, const int64_t* table,
                     int64_t len, int64_t group, int64_t block_size, int64_t d, float scale,
                     std::vector<float>& scores) {
  std::vector<float> acc(group * d, 0.f);
  scores.resize(group * len);
  for (int64_t j = 0; j < len; ++j) {
    const T* kr = kh + (table[j / block_size] * block_size + j % block_size) * d;
    for (int64_t g = 0; g < group; ++g) {
      float dot = 0.f;
      for (int64_t i = 0; i < d; ++i) dot += to_float(q[g * qsh + i]) * to_float(kr[i]);
      scores[g * len + j] = dot * scale;
    }
  }
  softmax_rows(scores.data(), group, len);
  for (int64_t j = 0; j < len; ++j) {
    const T* vr = vh + (table[j / block_size] * block_size + j % block_size) * d;
    for (int64_t g = 0; g < group; ++g)
      for (int64_t i = 0; i < d; ++i) acc[g * d + i] += scores[g * len + j] * to_float(vr[i]);
  }
  for (int64_t g = 0; g < group; ++g)
    for (int64_t i = 0; i < d; ++i) out[g * osh + i] = from_float<T>(acc[g * d + i]);
}

// One query token per sequence over its blocks, read in place (no gathered copy); one task per
// (sequence, KV head).
template <typename T>
void decode_impl(T* out, const T* q, const T* kc, const T* vc, const int64_t* tables, const int64_t* lens,
                 int64_t seqs, int64_t hq, int64_t hk, int64_t d, int64_t block_size, int64_t table_stride,
                 int64_t head_stride, int64_t qst, int64_t qsh, int64_t ost, int64_t osh, float scale) {
  const int64_t group = hq / hk;
  at::parallel_for(0, seqs * hk, 1, [=](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / hk, h = task % hk;
      T* o = out + s * ost + h * group * osh;
      const T* qs = q + s * qst + h * group * qsh;
      const T* kh = kc + h * head_stride;
      const T* vh = vc + h * head_stride;
      const int64_t* table = tables + s * table_stride;
      if (task + 1 < end) {  // the next task's first blocks, while this one computes
        const int64_t next_h = (task + 1) % hk;
        const int64_t first = tables[(task + 1) / hk * table_stride];
        prefetch_block(kc + next_h * head_stride, first, block_size, d);
        prefetch_block(vc + next_h * head_stride, first, block_size, d);
      }
#define PAGODA_DECODE_CASE(CHUNKS)                                                                         \
  case CHUNKS:                                                                                             \
    decode_task<T, CHUNKS>(o, osh, qs, qsh, kh, vh, table, lens[s], group, block_size, scale, scores); \
    continue;
      if (d % 16 == 0 && group <= MAX_GROUP) {
        switch (d / 16) {
          PAGODA_DECODE_CASE(1)
          PAGODA_DECODE_CASE(2)
          PAGODA_DECODE_CASE(3)  // head_dim 48
          PAGODA_DECODE_CASE(4)
          PAGODA_DECODE_CASE(5)  // 80
          PAGODA_DECODE_CASE(6)  // 96
          PAGODA_DECODE_CASE(8)
          default:
            break;
        }
      }
#undef PAGODA_DECODE_CASE
      decode_task_any<T>(o, osh, qs, qsh, kh, vh, table, lens[s], group, block_size, d, scale, scores);
    }
  });
}

void paged_decode_attention(at::Tensor out, const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& seq_lens,
                            double scale) {
  check_cpu(q, "q");
  TORCH_CHECK(q.dim() == 3 && out.sizes() == q.sizes() && q.stride(2) == 1 && out.stride(2) == 1,
              "q and out must be [S, Hq, D] with a contiguous head dim");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.dim() == 4 &&
              v_cache.sizes() == k_cache.sizes() && k_cache.size(3) == q.size(2),
              "caches must be contiguous [Hkv, blocks, block, D]");
  TORCH_CHECK(q.size(1) % k_cache.size(0) == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && out.scalar_type() == q.scalar_type(),
              "q, out and caches must share a dtype");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && block_tables.dim() == 2 &&
              block_tables.size(0) >= q.size(0) && block_tables.stride(1) == 1, "block_tables: int64 [S, blocks]");
  TORCH_CHECK(seq_lens.scalar_type() == at::kLong && seq_lens.numel() >= q.size(0), "seq_lens: int64 [S]");
  const at::Tensor lens = seq_lens.contiguous();
  const int64_t block_size = k_cache.size(2);
  for (int64_t s = 0; s < q.size(0); ++s) {
    TORCH_CHECK(lens.data_ptr<int64_t>()[s] <= block_tables.size(1) * block_size,
                "sequence ", s, " is longer than its block table");
  }
  PAGODA_DISPATCH(q.scalar_type(), "paged_decode_attention", [&] {
    decode_impl<typename Raw<scalar_t>::type>(
        raw<scalar_t>(out), raw<scalar_t>(q), raw<scalar_t>(k_cache), raw<scalar_t>(v_cache),
        block_tables.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), q.size(0), q.size(1), k_cache.size(0), q.size(2),
        block_size, block_tables.stride(0), k_cache.stride(0), q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        static_cast<float>(scale));
  });
}

// y = x W^T for a few rows of x (decode of small batches) and a row-major bfloat16 weight: the
// step streams W once, so the kernel is a memory-bound dot product per output, split over the
// threads by output rows. oneDNN's GEMM reaches a third of the memory bandwidth on this shape.
template <int ROWS>
void gemv_bf16_impl(const uint16_t* x, const uint16_t* w, uint16_t* y, int64_t n, int64_t k) {
  const int64_t chunks = k / 16;
  std::vector<f32x16> xv(ROWS * chunks);
  for (int r = 0; r < ROWS; ++r)
    for (int64_t c = 0; c < chunks; ++c) xv[r * chunks + c] = load16(x + r * k + c * 16);
#ifdef __AVX512BF16__
  if (k % 32 == 0) {  // bf16 pairs multiplied and summed into float32 by one instruction (vdpbf16ps)
    at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
      for (int64_t o = begin; o < end; ++o) {
        const uint16_t* wr = w + o * k;
        __m512 acc[ROWS];
        for (int r = 0; r < ROWS; ++r) acc[r] = _mm512_setzero_ps();
        for (int64_t c = 0; c < k; c += 32) {
          const __m512bh wv = (__m512bh)_mm512_loadu_si512(wr + c);
          for (int r = 0; r < ROWS; ++r)
            acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(x + r * k + c), wv);
        }
        for (int r = 0; r < ROWS; ++r) y[r * n + o] = from_float<uint16_t>(_mm512_reduce_add_ps(acc[r]));
      }
    });
    return;
  }
#endif
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const uint16_t* wr = w + o * k;
      f32x16 acc[ROWS] = {};
      for (int64_t c = 0; c < chunks; ++c) {
        const f32x16 wv = load16(wr + c * 16);
        for (int r = 0; r < ROWS; ++r) acc[r] += xv[r * chunks + c] * wv;
      }
      for (int r = 0; r < ROWS; ++r) y[r * n + o] = from_float<uint16_t>(sum16(acc[r]));
    }
  });
}

at::Tensor gemv_bf16(const at::Tensor& x, const at::Tensor& weight) {
  check_cpu(x, "x");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16, "bfloat16 expected");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1) && x.size(1) % 16 == 0,
              "x [M, K] and weight [N, K] with K a multiple of 16 expected");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 4, "gemv_bf16 takes 1 to 4 rows");
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, x.options());
  auto* kernel = x.size(0) == 1 ? &gemv_bf16_impl<1> : x.size(0) == 2 ? &gemv_bf16_impl<2>
               : x.size(0) == 3 ? &gemv_bf16_impl<3> : &gemv_bf16_impl<4>;
  kernel(raw<at::BFloat16>(xc), raw<at::BFloat16>(wc), raw<at::BFloat16>(y), weight.size(0), weight.size(1));
  return y;
}

// SwiGLU over a fused [gate | up] projection: out = silu(gate) * up.
template <typename T>
void silu_and_mul_impl(const T* x, T* out, int64_t rows, int64_t n, int64_t x_stride) {
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* __restrict__ gate = x + r * x_stride;
      const T* __restrict__ up = gate + n;
      T* __restrict__ o = out + r * n;
      const int64_t cols = n;
#pragma omp simd
      for (int64_t i = 0; i < cols; ++i) {
        const float g = to_float(gate[i]);
        o[i] = from_float<T>(g / (1.f + fast_exp(-g)) * to_float(up[i]));
      }
    }
  });
}

at::Tensor silu_and_mul(const at::Tensor& x) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.size(1) % 2 == 0 && x.stride(1) == 1, "x must be [T, 2 * I], rows contiguous");
  const int64_t n = x.size(1) / 2;
  at::Tensor out = at::empty({x.size(0), n}, x.options());
  PAGODA_DISPATCH(x.scalar_type(), "silu_and_mul", [&] {
    silu_and_mul_impl<typename Raw<scalar_t>::type>(raw<scalar_t>(x), raw<scalar_t>(out), x.size(0), n, x.stride(0));
  });
  return out;
}

// Grammar masks: logits[t] = -inf wherever bit t of the row's bitmask (int32 words, bit t % 32 of
// word t / 32) is clear, and past the bitmask's end. Whole words are the common case: an all-clear
// word bans 32 tokens at once, an all-set one keeps them.
template <typename T>
void apply_token_bitmask_impl(T* logits, const int32_t* mask, int64_t vocab, int64_t words) {
  const T neg_inf = from_float<T>(-std::numeric_limits<float>::infinity());
  const int64_t covered = std::min(vocab, words * 32);
  for (int64_t w = 0; w * 32 < covered; ++w) {
    const uint32_t bits = static_cast<uint32_t>(mask[w]);
    if (bits == 0xFFFFFFFFu) continue;
    const int64_t end = std::min<int64_t>(32, covered - w * 32);
    T* row = logits + w * 32;
    if (bits == 0) {
      std::fill(row, row + end, neg_inf);
      continue;
    }
    for (int64_t b = 0; b < end; ++b)
      if (!((bits >> b) & 1u)) row[b] = neg_inf;
  }
  for (int64_t t = covered; t < vocab; ++t) logits[t] = neg_inf;
}

void apply_token_bitmask_(at::Tensor& logits, const at::Tensor& bitmask) {
  check_cpu(logits, "logits");
  check_cpu(bitmask, "bitmask");
  TORCH_CHECK(logits.dim() == 1 && logits.is_contiguous(), "logits must be one contiguous row");
  TORCH_CHECK(bitmask.dim() == 1 && bitmask.is_contiguous() && bitmask.scalar_type() == at::kInt,
              "bitmask must be contiguous int32 words");
  PAGODA_DISPATCH(logits.scalar_type(), "apply_token_bitmask_", [&] {
    apply_token_bitmask_impl<typename Raw<scalar_t>::type>(raw<scalar_t>(logits), bitmask.data_ptr<int32_t>(),
                                                           logits.size(0), bitmask.size(0));
  });
}

}  // namespace

TORCH_LIBRARY(pagoda, m) {
  m.def("fused_add_rms_norm_(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("rotary_embedding_(Tensor positions, Tensor(a!) q, Tensor(b!) k, Tensor cos, Tensor sin) -> ()");
  m.def("write_kv_cache_(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()");
  m.def("paged_decode_attention(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor seq_lens, float scale) -> ()");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("gemv_bf16(Tensor x, Tensor weight) -> Tensor");
  m.def("apply_token_bitmask_(Tensor(a!) logits, Tensor bitmask) -> ()");
}

TORCH_LIBRARY_IMPL(pagoda, CPU, m) {
  m.impl("fused_add_rms_norm_", &fused_add_rms_norm_);
  m.impl("rotary_embedding_", &rotary_embedding_);
  m.impl("write_kv_cache_", &write_kv_cache_);
  m.impl("paged_decode_attention", &paged_decode_attention);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("gemv_bf16", &gemv_bf16);
  m.impl("apply_token_bitmask_", &apply_token_bitmask_);
}
