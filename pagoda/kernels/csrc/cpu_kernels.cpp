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
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
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

// One query token per row over its sequence's blocks, read in place (no gathered copy); one task
// per (query, KV head). Row s reads block table table_of[s] (s itself when table_of is null) and
// its first lens[s] tokens: a prefill chunk's queries are rows too, each over its causal prefix,
// so every query is reduced by the same code in the same order, whatever the chunking.
template <typename T>
void decode_impl(T* out, const T* q, const T* kc, const T* vc, const int64_t* tables, const int64_t* lens,
                 const int64_t* table_of, int64_t seqs, int64_t hq, int64_t hk, int64_t d, int64_t block_size,
                 int64_t table_stride, int64_t head_stride, int64_t qst, int64_t qsh, int64_t ost, int64_t osh,
                 float scale) {
  const int64_t group = hq / hk;
  auto table_row = [=](int64_t s) { return table_of ? table_of[s] : s; };
  at::parallel_for(0, seqs * hk, 1, [=](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / hk, h = task % hk;
      T* o = out + s * ost + h * group * osh;
      const T* qs = q + s * qst + h * group * qsh;
      const T* kh = kc + h * head_stride;
      const T* vh = vc + h * head_stride;
      const int64_t* table = tables + table_row(s) * table_stride;
      if (task + 1 < end) {  // the next task's first blocks, while this one computes
        const int64_t next_h = (task + 1) % hk;
        const int64_t first = tables[table_row((task + 1) / hk) * table_stride];
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

void paged_attention_rows(at::Tensor out, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& block_tables, const at::Tensor& seq_lens,
                          const c10::optional<at::Tensor>& table_of, double scale) {
  check_cpu(q, "q");
  TORCH_CHECK(q.dim() == 3 && out.sizes() == q.sizes() && q.stride(2) == 1 && out.stride(2) == 1,
              "q and out must be [S, Hq, D] with a contiguous head dim");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.dim() == 4 &&
              v_cache.sizes() == k_cache.sizes() && k_cache.size(3) == q.size(2),
              "caches must be contiguous [Hkv, blocks, block, D]");
  TORCH_CHECK(q.size(1) % k_cache.size(0) == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && out.scalar_type() == q.scalar_type(),
              "q, out and caches must share a dtype");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && block_tables.dim() == 2 && block_tables.stride(1) == 1,
              "block_tables: int64 [S, blocks]");
  TORCH_CHECK(seq_lens.scalar_type() == at::kLong && seq_lens.numel() >= q.size(0), "seq_lens: int64 [rows]");
  at::Tensor rows_table;
  if (table_of.has_value()) {
    rows_table = table_of->contiguous();
    TORCH_CHECK(rows_table.scalar_type() == at::kLong && rows_table.numel() == q.size(0), "table_of: int64 [rows]");
  } else {
    TORCH_CHECK(block_tables.size(0) >= q.size(0), "block_tables must have a row per query");
  }
  const int64_t* table_ptr = table_of.has_value() ? rows_table.data_ptr<int64_t>() : nullptr;
  const at::Tensor lens = seq_lens.contiguous();
  const int64_t block_size = k_cache.size(2);
  for (int64_t s = 0; s < q.size(0); ++s) {
    const int64_t t = table_ptr ? table_ptr[s] : s;
    TORCH_CHECK(t >= 0 && t < block_tables.size(0), "row ", s, " names block table ", t, " of ", block_tables.size(0));
    TORCH_CHECK(lens.data_ptr<int64_t>()[s] <= block_tables.size(1) * block_size,
                "sequence ", s, " is longer than its block table");
  }
  PAGODA_DISPATCH(q.scalar_type(), "paged_decode_attention", [&] {
    decode_impl<typename Raw<scalar_t>::type>(
        raw<scalar_t>(out), raw<scalar_t>(q), raw<scalar_t>(k_cache), raw<scalar_t>(v_cache),
        block_tables.data_ptr<int64_t>(), lens.data_ptr<int64_t>(), table_ptr, q.size(0), q.size(1), k_cache.size(0),
        q.size(2),
        block_size, block_tables.stride(0), k_cache.stride(0), q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        static_cast<float>(scale));
  });
}

void paged_decode_attention(at::Tensor out, const at::Tensor& q, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, const at::Tensor& block_tables, const at::Tensor& seq_lens,
                            double scale) {
  paged_attention_rows(out, q, k_cache, v_cache, block_tables, seq_lens, c10::nullopt, scale);
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

// ---- Batch-invariant linear: y = x W^T with one fixed reduction order per (row, output) ----
//
// Every output element is a dot product over k taken in the same order whatever the number of
// rows, the row's place in the batch or the thread count: chunks of 32 (bfloat16 pairs, vdpbf16ps)
// or 16 (float32, FMA) lanes accumulated in one register from k = 0 up, then one fixed tree over the
// 16 lanes. Threads split the outputs, never k. Weights are dense (bfloat16 / float32) or GGUF Q4
// blocks kept packed (32 weights per group, w = q * scale + offset with q in 0..15); a task turns
// its block of outputs into the compute type in a small buffer once and runs every row over it, so
// one kernel serves one row (weight-streaming) and thousands (compute-bound) alike.

constexpr int64_t LIN_OUTS = 32;  // outputs per task (and per weight buffer)
constexpr int64_t LIN_ROWS = 4;   // rows per register tile
constexpr int64_t LIN_COLS = 4;   // outputs per register tile

// Q4 weights come in tiles of 16 outputs, so that a tile's codes and parameters for one group
// are contiguous (one stream per tensor for the prefetcher, not one per output row): codes uint8
// [ceil(N / 16), K / 32, 16, 16] (16 bytes per output and group), scale and offset float32
// [ceil(N / 16), K / 32, 16].
constexpr int64_t Q4_TILE = 16;

struct LinearWeight {
  int kind;  // 0: float32 [N, K], 1: bfloat16 [N, K], 2: Q4 tiles (above)
  const void* data;
  const float* scale;
  const float* offset;
  int64_t groups;  // K / 32

  // Q4: where output o's group g starts; its successors follow every Q4_TILE entries
  int64_t q4_index(int64_t o, int64_t g) const { return ((o / Q4_TILE) * groups + g) * Q4_TILE + o % Q4_TILE; }
  const uint8_t* q4_codes(int64_t o, int64_t g) const { return static_cast<const uint8_t*>(data) + q4_index(o, g) * 16; }
};

#ifdef __AVX512BF16__
// Sums of 16 accumulators at once, each by the same tree over its own 16 lanes (halves, then
// quarters, then pairs: lanes never mix across accumulators), so a result does not depend on
// which slot of a tile it was computed in. Returns the 16 sums in a shuffled lane order.
inline __m512 lin_tree16(const __m512* acc) {
  __m512 t[8], u[4], v[2];
  for (int i = 0; i < 8; ++i)  // [a0..7 + a8..15 | b0..7 + b8..15]
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(acc[2 * i], acc[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(acc[2 * i], acc[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // 4 lanes per accumulator
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)  // 2 lanes per accumulator
    v[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD));
}

// The lane where lin_tree16 leaves each accumulator's sum, found once by reducing one-hot inputs.
struct LinSlots {
  int lane[16];
  LinSlots() {
    for (int i = 0; i < 16; ++i) {
      __m512 acc[16];
      for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_ps(j == i ? 1.f : 0.f);
      float lanes[16];
      _mm512_storeu_ps(lanes, lin_tree16(acc));
      for (int l = 0; l < 16; ++l)
        if (lanes[l] == 16.f) lane[i] = l;
    }
  }
};

inline void lin_reduce16(const __m512* acc, float* out) {
  static const LinSlots slots;
  float lanes[16];
  _mm512_storeu_ps(lanes, lin_tree16(acc));
  for (int i = 0; i < 16; ++i) out[i] = lanes[slots.lane[i]];
}

// A group's 16 possible weights, bfloat16(q * scale + offset) for q = 0..15, twice over (a word
// index's fifth bit then needs no masking); the 32 codes of the group become word indices.
inline __m512i q4_group_bf16(const uint8_t* codes, float scale, float offset) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i shifts = _mm512_setr_epi64(0, 0, 0, 0, 0x0004000400040004LL, 0x0004000400040004LL,
                                           0x0004000400040004LL, 0x0004000400040004LL);
  const __m512 values = _mm512_fmadd_ps(iota, _mm512_set1_ps(scale), _mm512_set1_ps(offset));
  const __m512i table = (__m512i)_mm512_cvtne2ps_pbh(values, values);
  const __m256i bytes = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  // words 0..15: byte j (its low nibble plus junk above, ignored by the duplicated table), 16..31: byte j >> 4
  const __m512i idx = _mm512_srlv_epi16(_mm512_cvtepu8_epi16(bytes), shifts);
  return _mm512_permutexvar_epi16(idx, table);
}

// One group of 32 Q4 weights -> 32 float32 values in two registers (GGUF order: byte j holds
// weight j in its low nibble and weight j + 16 in its high one).
inline void q4_group(const uint8_t* codes, float scale, float offset, __m512& lo, __m512& hi) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
  const __m128i mask = _mm_set1_epi8(0x0F);
  const __m512 s = _mm512_set1_ps(scale), o = _mm512_set1_ps(offset);
  lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(bytes, mask))), s, o);
  hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask))), s, o);
}

// Outputs [o0, o0 + n) of the weight as compute-type rows of the buffer (k contiguous); rows
// n..LIN_OUTS of the buffer are zero.
template <typename C>
const C* lin_weight_rows(const LinearWeight& w, int64_t o0, int64_t n, int64_t k, C* buffer);

template <>
const uint16_t* lin_weight_rows<uint16_t>(const LinearWeight& w, int64_t o0, int64_t n, int64_t k, uint16_t* buffer) {
  if (w.kind == 1 && n == LIN_OUTS) return static_cast<const uint16_t*>(w.data) + o0 * k;  // read in place
  if (w.kind == 1) {
    std::memcpy(buffer, static_cast<const uint16_t*>(w.data) + o0 * k, n * k * sizeof(uint16_t));
  } else {
    TORCH_CHECK(w.kind == 2, "bfloat16 activations take bfloat16 or Q4 weights");
    for (int64_t r = 0; r < n; ++r)
      for (int64_t g = 0; g < w.groups; ++g) {
        const int64_t at = w.q4_index(o0 + r, g);
        _mm512_storeu_si512(buffer + r * k + g * 32, q4_group_bf16(w.q4_codes(o0 + r, g), w.scale[at], w.offset[at]));
      }
  }
  std::fill(buffer + n * k, buffer + LIN_OUTS * k, 0);
  return buffer;
}

template <>
const float* lin_weight_rows<float>(const LinearWeight& w, int64_t o0, int64_t n, int64_t k, float* buffer) {
  if (w.kind == 0 && n == LIN_OUTS) return static_cast<const float*>(w.data) + o0 * k;
  if (w.kind == 0) {
    std::memcpy(buffer, static_cast<const float*>(w.data) + o0 * k, n * k * sizeof(float));
  } else if (w.kind == 1) {
    const uint16_t* src = static_cast<const uint16_t*>(w.data) + o0 * k;
    for (int64_t i = 0; i < n * k; i += 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      _mm512_storeu_ps(buffer + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
  } else {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t g = 0; g < w.groups; ++g) {
        const int64_t at = w.q4_index(o0 + r, g);
        __m512 lo, hi;
        q4_group(w.q4_codes(o0 + r, g), w.scale[at], w.offset[at], lo, hi);
        _mm512_storeu_ps(buffer + r * k + g * 32, lo);
        _mm512_storeu_ps(buffer + r * k + g * 32 + 16, hi);
      }
  }
  std::fill(buffer + n * k, buffer + LIN_OUTS * k, 0.f);
  return buffer;
}

inline __m512 lin_step(__m512 acc, const uint16_t* x, const uint16_t* w) {
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(x), (__m512bh)_mm512_loadu_si512(w));
}
inline __m512 lin_step(__m512 acc, const float* x, const float* w) {
  return _mm512_fmadd_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(w), acc);
}
template <typename C> constexpr int64_t lin_lanes() { return sizeof(C) == 2 ? 32 : 16; }

// R rows x COLS outputs in registers (R * COLS <= 16); each accumulator sees exactly the same
// operations whatever R and COLS are, so a row's result does not depend on the tile it falls in.
template <typename C, typename Y, int R, int COLS>
void lin_tile(const C* x, int64_t ldx, const C* w, int64_t k, Y* y, int64_t ldy, int64_t cols) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += lin_lanes<C>())
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < COLS; ++c) acc[r * COLS + c] = lin_step(acc[r * COLS + c], x + r * ldx + i, w + c * k + i);
  float sums[16];
  lin_reduce16(acc, sums);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < cols; ++c) y[r * ldy + c] = from_float<Y>(sums[r * COLS + c]);
}

// Up to 4 rows with Q4 weights: each group is dequantized in registers and used at once (the
// same bfloat16 values and the same operations per accumulator as the buffered path).
template <typename Y, int R, int COLS>
void lin_q4_fused_tile(const uint16_t* x, int64_t ldx, const LinearWeight& w, int64_t o0, int64_t k, Y* y,
                       int64_t ldy, int64_t cols) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  // the tile's outputs lie in one Q4 tile (COLS divides Q4_TILE and o0 is a multiple of COLS)
  const uint8_t* codes[COLS];
  const float *sc[COLS], *of[COLS];
  for (int c = 0; c < COLS; ++c) {
    const int64_t o = o0 + std::min<int64_t>(c, cols - 1);  // past `cols`: a repeat, never stored
    codes[c] = w.q4_codes(o, 0);
    sc[c] = w.scale + w.q4_index(o, 0);
    of[c] = w.offset + w.q4_index(o, 0);
  }
  for (int64_t g = 0; g < w.groups; ++g) {
    __m512bh xv[R];
    for (int r = 0; r < R; ++r) xv[r] = (__m512bh)_mm512_loadu_si512(x + r * ldx + g * 32);
    for (int c = 0; c < COLS; ++c) {
      const int64_t at = g * Q4_TILE;
      const __m512bh wv = (__m512bh)q4_group_bf16(codes[c] + at * 16, sc[c][at], of[c][at]);
      for (int r = 0; r < R; ++r) acc[r * COLS + c] = _mm512_dpbf16_ps(acc[r * COLS + c], xv[r], wv);
    }
  }
  float sums[16];
  lin_reduce16(acc, sums);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < cols; ++c) y[r * ldy + c] = from_float<Y>(sums[r * COLS + c]);
}

template <typename Y>
void lin_q4_fused(const uint16_t* x, int64_t m, int64_t ldx, const LinearWeight& w, int64_t n, int64_t k, Y* y) {
  at::parallel_for(0, (n + LIN_OUTS - 1) / LIN_OUTS, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t o0 = task * LIN_OUTS, outs = std::min(LIN_OUTS, n - o0);
      const int64_t step = m == 1 ? 16 : m == 2 ? 8 : 4;
      for (int64_t c0 = 0; c0 < outs; c0 += step) {
        const int64_t cols = std::min(step, outs - c0);
        switch (m) {
          case 4: lin_q4_fused_tile<Y, 4, 4>(x, ldx, w, o0 + c0, k, y + o0 + c0, n, cols); break;
          case 3: lin_q4_fused_tile<Y, 3, 4>(x, ldx, w, o0 + c0, k, y + o0 + c0, n, cols); break;
          case 2: lin_q4_fused_tile<Y, 2, 8>(x, ldx, w, o0 + c0, k, y + o0 + c0, n, cols); break;
          default: lin_q4_fused_tile<Y, 1, 16>(x, ldx, w, o0 + c0, k, y + o0 + c0, n, cols); break;
        }
      }
    }
  });
}

// float32 rows times a bfloat16 weight (the LM head): each row is split once into two bfloat16
// parts, x = hi + lo + e with hi its first 8 significant bits, lo the rest rounded to 8 more, so
// |e| <= 2^-16 |x| (2^7 below the rounding of the bfloat16 weights themselves); each product of a
// part and a weight is exact in float32, and vdpbf16ps accumulates them in float32 at twice the
// bfloat16 cost rather than the four times of float32 FMAs. Stored [hi | lo] per chunk of 32.
// The weight is read in place.
constexpr int64_t SPLIT_PARTS = 2, SPLIT_ROWS = 2, SPLIT_COLS = 1;  // one weight row streams at a time (measured fastest)

void lin_split_rows(const float* x, int64_t m, int64_t ldx, int64_t k, uint16_t* parts) {
  at::parallel_for(0, m, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t i = 0; i < k; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + r * ldx + i);
        const __m512i hi = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0xFFFF0000));
        const __m512 rest = _mm512_sub_ps(v, _mm512_castsi512_ps(hi));  // exact
        uint16_t* out = parts + r * SPLIT_PARTS * k + (i / 32) * 32 * SPLIT_PARTS + i % 32;
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(_mm512_srli_epi32(hi, 16)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32), (__m256i)_mm512_cvtneps_pbh(rest));
      }
  });
}

template <int R, int C>
void lin_split_tile(const uint16_t* parts, int64_t ldp, const uint16_t* w, int64_t k, float* y, int64_t ldy,
                    int64_t cols) {
  __m512 acc[R][C][SPLIT_PARTS];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c)
      for (int p = 0; p < SPLIT_PARTS; ++p) acc[r][c][p] = _mm512_setzero_ps();
  const uint16_t* rows[C];
  for (int c = 0; c < C; ++c) rows[c] = w + std::min<int64_t>(c, cols - 1) * k;  // past `cols`: never stored
  for (int64_t i = 0; i < k; i += 32) {
    __m512bh xv[R][SPLIT_PARTS];
    for (int r = 0; r < R; ++r)
      for (int p = 0; p < SPLIT_PARTS; ++p) xv[r][p] = (__m512bh)_mm512_loadu_si512(parts + r * ldp + (i / 32) * 32 * SPLIT_PARTS + p * 32);
    for (int c = 0; c < C; ++c) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(rows[c] + i);
      for (int r = 0; r < R; ++r)
        for (int p = 0; p < SPLIT_PARTS; ++p) acc[r][c][p] = _mm512_dpbf16_ps(acc[r][c][p], xv[r][p], wv);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < cols; ++c)
      y[r * ldy + c] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][c][0], acc[r][c][1]));
}

void lin_split(const float* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t n, int64_t k, float* y) {
  std::vector<uint16_t> parts(m * SPLIT_PARTS * k);
  lin_split_rows(x, m, ldx, k, parts.data());
  const int64_t ldp = SPLIT_PARTS * k;
  at::parallel_for(0, (n + LIN_OUTS - 1) / LIN_OUTS, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t o0 = task * LIN_OUTS, outs = std::min(LIN_OUTS, n - o0);
      for (int64_t r0 = 0; r0 < m; r0 += SPLIT_ROWS) {
        const uint16_t* pr = parts.data() + r0 * ldp;
        float* yr = y + r0 * n + o0;
        for (int64_t c0 = 0; c0 < outs; c0 += SPLIT_COLS) {
          const int64_t cols = std::min(SPLIT_COLS, outs - c0);
          const uint16_t* wt = w + (o0 + c0) * k;
          if (m - r0 >= SPLIT_ROWS) lin_split_tile<SPLIT_ROWS, SPLIT_COLS>(pr, ldp, wt, k, yr + c0, n, cols);
          else lin_split_tile<1, SPLIT_COLS>(pr, ldp, wt, k, yr + c0, n, cols);
        }
      }
    }
  });
}

template <typename C, typename Y>
void lin_impl(const C* x, int64_t m, int64_t ldx, const LinearWeight& w, int64_t n, int64_t k, Y* y) {
  at::parallel_for(0, (n + LIN_OUTS - 1) / LIN_OUTS, 1, [&](int64_t begin, int64_t end) {
    std::vector<C> buffer(LIN_OUTS * k);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t o0 = task * LIN_OUTS, outs = std::min(LIN_OUTS, n - o0);
      const C* wt = lin_weight_rows<C>(w, o0, outs, k, buffer.data());
      for (int64_t r0 = 0; r0 < m; r0 += 4) {
        const int64_t rows = std::min<int64_t>(4, m - r0);
        const C* xr = x + r0 * ldx;
        Y* yr = y + r0 * n + o0;
        // the row tile's width: 16 accumulators in all (outputs past `outs` read zero rows)
        const int64_t step = rows == 1 ? 16 : rows == 2 ? 8 : 4;
        for (int64_t c0 = 0; c0 < outs; c0 += step) {
          const int64_t cols = std::min(step, outs - c0);
          switch (rows) {
            case 4: lin_tile<C, Y, 4, 4>(xr, ldx, wt + c0 * k, k, yr + c0, n, cols); break;
            case 3: lin_tile<C, Y, 3, 4>(xr, ldx, wt + c0 * k, k, yr + c0, n, cols); break;
            case 2: lin_tile<C, Y, 2, 8>(xr, ldx, wt + c0 * k, k, yr + c0, n, cols); break;
            default: lin_tile<C, Y, 1, 16>(xr, ldx, wt + c0 * k, k, yr + c0, n, cols); break;
          }
        }
      }
    }
  });
}
#endif

bool invariant_linear_available() {
#ifdef __AVX512BF16__
  return true;
#else
  return false;
#endif
}

// x [M, K] (float32 or bfloat16, rows contiguous) times a weight given as `kind` -> [M, N] in
// out_dtype (x's dtype or float32).
at::Tensor invariant_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                            const at::Tensor& offset, int64_t out_features, at::ScalarType out_dtype) {
  check_cpu(x, "x");
  TORCH_CHECK(invariant_linear_available(), "invariant_linear needs AVX-512 BF16 (built without it)");
#ifdef __AVX512BF16__
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [M, K] with contiguous rows");
  const int64_t m = x.size(0), k = x.size(1), n = out_features;
  TORCH_CHECK(k % 32 == 0, "invariant_linear: K must be a multiple of 32, got ", k);
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
  LinearWeight w{0, weight.data_ptr(), nullptr, nullptr, k / 32};
  if (weight.scalar_type() == at::kByte) {
    const int64_t tiles = (n + Q4_TILE - 1) / Q4_TILE;
    TORCH_CHECK(weight.dim() == 4 && weight.size(0) == tiles && weight.size(1) == k / 32 && weight.size(2) == Q4_TILE &&
                weight.size(3) == 16, "Q4 codes must be [ceil(N / 16), K / 32, 16, 16]");
    TORCH_CHECK(scale.scalar_type() == at::kFloat && offset.scalar_type() == at::kFloat && scale.is_contiguous() &&
                offset.is_contiguous() && scale.numel() == tiles * Q4_TILE * (k / 32) && offset.numel() == scale.numel(),
                "Q4 scale and offset must be contiguous float32 [ceil(N / 16), K / 32, 16]");
    w = LinearWeight{2, weight.data_ptr(), scale.data_ptr<float>(), offset.data_ptr<float>(), k / 32};
  } else {
    TORCH_CHECK(weight.dim() == 2 && weight.size(0) >= n && weight.size(1) == k, "weight must be [N, K]");
    TORCH_CHECK(weight.scalar_type() == at::kBFloat16 || weight.scalar_type() == at::kFloat,
                "weight must be float32, bfloat16 or Q4 codes");
    w.kind = weight.scalar_type() == at::kFloat ? 0 : 1;
  }
  TORCH_CHECK(out_dtype == x.scalar_type() || out_dtype == at::kFloat, "out dtype: x's dtype or float32");
  at::Tensor y = at::empty({m, n}, x.options().dtype(out_dtype));
  if (m == 0) return y;
  if (x.scalar_type() == at::kBFloat16) {
    TORCH_CHECK(w.kind != 0, "bfloat16 activations with a float32 weight: cast one of them");
    const uint16_t* xp = raw<at::BFloat16>(x);
    if (w.kind == 2 && m <= 4) {
      if (out_dtype == at::kFloat) lin_q4_fused<float>(xp, m, x.stride(0), w, n, k, y.data_ptr<float>());
      else lin_q4_fused<uint16_t>(xp, m, x.stride(0), w, n, k, raw<at::BFloat16>(y));
      return y;
    }
    if (out_dtype == at::kFloat) lin_impl<uint16_t, float>(xp, m, x.stride(0), w, n, k, y.data_ptr<float>());
    else lin_impl<uint16_t, uint16_t>(xp, m, x.stride(0), w, n, k, raw<at::BFloat16>(y));
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "x must be float32 or bfloat16");
    if (w.kind == 1) {
      lin_split(x.data_ptr<float>(), m, x.stride(0), static_cast<const uint16_t*>(w.data), n, k, y.data_ptr<float>());
      return y;
    }
    lin_impl<float, float>(x.data_ptr<float>(), m, x.stride(0), w, n, k, y.data_ptr<float>());
  }
  return y;
#else
  return x;
#endif
}

// ---- LoRA: y += (x A_s^T) B_s^T for each row's adapter slot s, in place ----
//
// Rows are grouped by slot. A group's shrink t = x A_s^T (float32) runs through lin_tile, the
// fixed-order dot products above. Its expand sums t[j] * B^T[j, o] over j = 0, 1, ... in one float32
// FMA chain per output (a rank of 16-64 is too short for a dot product's lane tree to pay: the
// tree cost more than the products), and the sum is added to y once. A row's delta therefore takes
// the same operations whatever the batch. Each part of a fused layer (q, k, v; gate, up) reads
// only its own block of the rank: the other blocks of B are zero and would add exact zeros.

#ifdef __AVX512BF16__
constexpr int64_t LORA_OUTS = 64;  // outputs per expand task: 4 registers

inline __m512 lora_load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 lora_load(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
inline void lora_add_store(float* p, __m512 d, __mmask16 m) {
  _mm512_mask_storeu_ps(p, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), d));
}
inline void lora_add_store(uint16_t* p, __m512 d, __mmask16 m) {
  _mm256_mask_storeu_epi16(p, m, (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(lora_load(p, m), d)));
}

// R rows' outputs [o0, o0 + n) (n <= LORA_OUTS) of one part, over the part's rank block [k0, k1).
template <typename C, int R>
void lora_expand_tile(const float* t, int64_t ldt, int64_t k0, int64_t k1, const C* bt, int64_t ldb, int64_t o0,
                      int64_t n, C* const* y) {
  __mmask16 mask[4];
  for (int v = 0; v < 4; ++v) {
    const int64_t left = n - 16 * v;
    mask[v] = left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
  }
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t j = k0; j < k1; ++j) {
    __m512 b[4];
    for (int v = 0; v < 4; ++v) b[v] = lora_load(bt + j * ldb + o0 + 16 * v, mask[v]);
    for (int r = 0; r < R; ++r) {
      const __m512 tj = _mm512_set1_ps(t[r * ldt + j]);
      for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_fmadd_ps(tj, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) lora_add_store(y[r] + o0 + 16 * v, acc[r][v], mask[v]);
}

template <typename C>
void lora_add_impl(C* y, int64_t ldy, const C* x, int64_t ldx, const C* a, const C* bt, int64_t k, int64_t n,
                   int64_t w, const std::vector<int64_t>& order, const std::vector<int64_t>& starts,
                   at::IntArrayRef part_outs, const int64_t* slot_widths) {
  const int64_t rows = static_cast<int64_t>(order.size()), slots = static_cast<int64_t>(starts.size()) - 1;
  const int64_t parts = static_cast<int64_t>(part_outs.size()) - 1, part_width = w / parts;
  std::vector<C> xs(rows * k);  // the rows grouped by slot
  for (int64_t i = 0; i < rows; ++i) std::memcpy(xs.data() + i * k, x + order[i] * ldx, k * sizeof(C));
  std::vector<float> t(rows * w);
  std::vector<std::array<int64_t, 3>> blocks;  // (slot, first grouped row, rows <= 4)
  for (int64_t s = 0; s < slots; ++s)
    for (int64_t r0 = starts[s]; r0 < starts[s + 1]; r0 += 4) blocks.push_back({s, r0, std::min<int64_t>(4, starts[s + 1] - r0)});
  std::vector<std::array<int64_t, 3>> chunks;  // (part, first output, outputs <= LORA_OUTS)
  for (int64_t p = 0; p < parts; ++p)
    for (int64_t o0 = part_outs[p]; o0 < part_outs[p + 1]; o0 += LORA_OUTS)
      chunks.push_back({p, o0, std::min<int64_t>(LORA_OUTS, part_outs[p + 1] - o0)});
  const int64_t nb = static_cast<int64_t>(blocks.size()), nc = static_cast<int64_t>(chunks.size());
  at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {  // shrink
    for (int64_t i = begin; i < end; ++i) {
      const auto [s, r0, m] = blocks[i];
      const C* as = a + s * w * k;
      const C* xr = xs.data() + r0 * k;
      float* tr = t.data() + r0 * w;
      const int64_t step = m == 1 ? 16 : m == 2 ? 8 : 4;  // widths are multiples of 16
      for (int64_t p = 0; p < parts; ++p)
        for (int64_t c0 = p * part_width; c0 < p * part_width + slot_widths[s]; c0 += step) switch (m) {
          case 4: lin_tile<C, float, 4, 4>(xr, k, as + c0 * k, k, tr + c0, w, step); break;
          case 3: lin_tile<C, float, 3, 4>(xr, k, as + c0 * k, k, tr + c0, w, step); break;
          case 2: lin_tile<C, float, 2, 8>(xr, k, as + c0 * k, k, tr + c0, w, step); break;
          default: lin_tile<C, float, 1, 16>(xr, k, as + c0 * k, k, tr + c0, w, step); break;
        }
    }
  });
  at::parallel_for(0, nb * nc, 1, [&](int64_t begin, int64_t end) {  // expand, added to y
    for (int64_t i = begin; i < end; ++i) {
      const auto [s, r0, m] = blocks[i / nc];
      const auto [p, o0, on] = chunks[i % nc];
      C* yr[4];
      for (int64_t r = 0; r < m; ++r) yr[r] = y + order[r0 + r] * ldy;
      const float* tr = t.data() + r0 * w;
      const C* bs = bt + s * w * n;
      const int64_t k0 = p * part_width, k1 = k0 + slot_widths[s];
      switch (m) {
        case 4: lora_expand_tile<C, 4>(tr, w, k0, k1, bs, n, o0, on, yr); break;
        case 3: lora_expand_tile<C, 3>(tr, w, k0, k1, bs, n, o0, on, yr); break;
        case 2: lora_expand_tile<C, 2>(tr, w, k0, k1, bs, n, o0, on, yr); break;
        default: lora_expand_tile<C, 1>(tr, w, k0, k1, bs, n, o0, on, yr); break;
      }
    }
  });
}
#endif

// y [M, N] += per row i with row_slots[i] >= 0: (x_i A_s^T) B_s^T, a [S, W, K], bt [S, W, N] (B
// transposed), all of y's dtype. part_outs [0, .., N] splits the outputs into parts, each with its
// block of W / parts ranks (one part: the whole rank for every output); slot s uses the first
// slot_widths[s] ranks of each block (the rest of its A and B is zero).
void lora_add_(at::Tensor y, const at::Tensor& x, const at::Tensor& a, const at::Tensor& bt,
               const at::Tensor& row_slots, at::IntArrayRef part_outs, const at::Tensor& slot_widths) {
  check_cpu(y, "y");
  TORCH_CHECK(invariant_linear_available(), "lora_add_ needs AVX-512 BF16 (built without it)");
#ifdef __AVX512BF16__
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.stride(1) == 1 && y.stride(1) == 1 && x.size(0) == y.size(0),
              "x [M, K] and y [M, N] with contiguous rows");
  TORCH_CHECK(a.dim() == 3 && bt.dim() == 3 && a.is_contiguous() && bt.is_contiguous() && a.size(0) == bt.size(0) &&
              a.size(1) == bt.size(1) && a.size(2) == x.size(1) && bt.size(2) == y.size(1),
              "a [S, W, K] and bt [S, W, N], contiguous");
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && a.scalar_type() == y.scalar_type() &&
              bt.scalar_type() == y.scalar_type(), "x, y, a and bt share one dtype");
  TORCH_CHECK(row_slots.scalar_type() == at::kLong && row_slots.dim() == 1 && row_slots.size(0) == y.size(0) &&
              row_slots.is_contiguous(), "row_slots: int64 [M]");
  const int64_t m = x.size(0), k = x.size(1), n = y.size(1), slots = a.size(0), w = a.size(1);
  const int64_t parts = static_cast<int64_t>(part_outs.size()) - 1;
  TORCH_CHECK(w % 16 == 0, "lora_add_: the rank width must be a multiple of 16, got ", w);
  TORCH_CHECK(k % (y.scalar_type() == at::kBFloat16 ? 32 : 16) == 0, "lora_add_: K must be a multiple of 32 "
              "(bfloat16) or 16 (float32), got ", k);
  TORCH_CHECK(parts >= 1 && w % parts == 0 && part_outs.front() == 0 && part_outs.back() == n,
              "part_outs must run from 0 to N in parts that split the rank width evenly");
  for (int64_t p = 0; p < parts; ++p) TORCH_CHECK(part_outs[p] <= part_outs[p + 1], "part_outs must not decrease");
  TORCH_CHECK(slot_widths.scalar_type() == at::kLong && slot_widths.is_contiguous() && slot_widths.numel() == slots,
              "slot_widths: int64 [S]");
  const int64_t* widths = slot_widths.data_ptr<int64_t>();
  for (int64_t s = 0; s < slots; ++s)
    TORCH_CHECK(widths[s] >= 0 && widths[s] <= w / parts && widths[s] % 16 == 0,
                "slot widths must be multiples of 16 within a part's block");
  const int64_t* rs = row_slots.data_ptr<int64_t>();
  std::vector<int64_t> starts(slots + 1, 0);  // counting sort of the rows by slot (stable)
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK(rs[i] < slots, "row slot ", rs[i], " out of ", slots, " slots");
    if (rs[i] >= 0) ++starts[rs[i] + 1];
  }
  for (int64_t s = 0; s < slots; ++s) starts[s + 1] += starts[s];
  std::vector<int64_t> order(starts[slots]), next(starts.begin(), starts.end() - 1);
  for (int64_t i = 0; i < m; ++i)
    if (rs[i] >= 0) order[next[rs[i]]++] = i;
  if (order.empty()) return;
  if (y.scalar_type() == at::kBFloat16)
    lora_add_impl<uint16_t>(raw<at::BFloat16>(y), y.stride(0), raw<at::BFloat16>(x), x.stride(0),
                            raw<at::BFloat16>(a), raw<at::BFloat16>(bt), k, n, w, order, starts, part_outs, widths);
  else {
    TORCH_CHECK(y.scalar_type() == at::kFloat, "lora_add_: float32 or bfloat16");
    lora_add_impl<float>(y.data_ptr<float>(), y.stride(0), x.data_ptr<float>(), x.stride(0), a.data_ptr<float>(),
                         bt.data_ptr<float>(), k, n, w, order, starts, part_outs, widths);
  }
#endif
}

// ---- Int8 linear helpers (W8A8 and GGUF Q8_0): per-row activation quantization, int32 epilogue ----
//
// Integer dot products are exact, so their order never matters; what a row's result could depend
// on is the float work around them, which these kernels do per row (quantization: one amax, one
// scale) and per element (epilogue: one fixed expression), the same at every row count.

// x [M, K] -> codes int8 [M, K] = rne(x * 127 / amax_row) and scales float32 [M, 1] = amax_row / 127
// (a zero row gets scale 1 and zero codes).
template <typename T>
void quantize_rows_int8_impl(const T* x, int64_t ldx, const float* cs, int8_t* q, float* s, int64_t m, int64_t k) {
  at::parallel_for(0, m, grain_rows(k), [&](int64_t begin, int64_t end) {
    std::vector<float> scaled(cs != nullptr ? k : 0);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * ldx;
      float amax = 0.f;
      if (cs != nullptr) {  // x * col_scale, one float32 product per element, then quantized as a float32 row
        for (int64_t i = 0; i < k; ++i) scaled[i] = to_float(xr[i]) * cs[i];
        quantize_rows_int8_impl<float>(scaled.data(), k, nullptr, q + r * k, s + r, 1, k);
        continue;
      }
#pragma omp simd reduction(max : amax)
      for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(to_float(xr[i])));
      const float scale = amax > 0.f ? amax / 127.f : 1.f;
      const float inv = amax > 0.f ? 127.f / amax : 0.f;
      int8_t* qr = q + r * k;
      int64_t i = 0;
#ifdef __AVX512F__
      // 16 at a time: the multiply, then cvtps's round-to-nearest-even (the default MXCSR mode), as below
      const __m512 vinv = _mm512_set1_ps(inv);
      const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
      for (; i + 16 <= k; i += 16) {
        __m512 v;
        if constexpr (std::is_same_v<T, float>) {
          v = _mm512_loadu_ps(xr + i);
        } else {
          const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + i));
          v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
        }
        __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(v, vinv));
        c = _mm512_min_epi32(_mm512_max_epi32(c, lo), hi);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + i), _mm512_cvtepi32_epi8(c));
      }
#endif
      for (; i < k; ++i) {
        const float v = std::nearbyint(to_float(xr[i]) * inv);
        qr[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, v)));
      }
      s[r] = scale;
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quantize_rows_int8(const at::Tensor& x, const std::optional<at::Tensor>& col_scale) {
  check_cpu(x, "x");
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [M, K] with contiguous rows");
  const int64_t m = x.size(0), k = x.size(1);
  const float* cs = nullptr;
  if (col_scale.has_value()) {
    TORCH_CHECK(col_scale->scalar_type() == at::kFloat && col_scale->is_contiguous() && col_scale->numel() == k,
                "col_scale must be contiguous float32 [K]");
    cs = col_scale->data_ptr<float>();
  }
  at::Tensor q = at::empty({m, k}, x.options().dtype(at::kChar));
  at::Tensor s = at::empty({m, 1}, x.options().dtype(at::kFloat));
  PAGODA_DISPATCH(x.scalar_type(), "quantize_rows_int8", [&] {
    quantize_rows_int8_impl<typename Raw<scalar_t>::type>(raw<scalar_t>(x), x.stride(0), cs,
                                      q.data_ptr<int8_t>(), s.data_ptr<float>(), m, k);
  });
  return {q, s};
}

// y[i, j] = fma(float(acc[i, j]), x_scale[i] * w_scale[j], bias[j]) (or the product alone), rounded once
// to out_dtype: the fma spelt out, so no compiler's contraction choice changes the bits.
template <typename Y>
void int8_epilogue_impl(const int32_t* acc, const float* xs, const float* ws, const float* bias, Y* y, int64_t m,
                        int64_t n) {
  at::parallel_for(0, m, grain_rows(n), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int32_t* a = acc + r * n;
      Y* yr = y + r * n;
      const float sx = xs[r];
      if (bias != nullptr) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) yr[j] = from_float<Y>(std::fma(static_cast<float>(a[j]), sx * ws[j], bias[j]));
      } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) yr[j] = from_float<Y>(static_cast<float>(a[j]) * (sx * ws[j]));
      }
    }
  });
}

at::Tensor int8_scaled_epilogue(const at::Tensor& acc, const at::Tensor& x_scale, const at::Tensor& w_scale,
                                const c10::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  check_cpu(acc, "acc");
  TORCH_CHECK(acc.dim() == 2 && acc.is_contiguous() && acc.scalar_type() == at::kInt, "acc must be int32 [M, N]");
  const int64_t m = acc.size(0), n = acc.size(1);
  TORCH_CHECK(x_scale.scalar_type() == at::kFloat && x_scale.is_contiguous() && x_scale.numel() == m,
              "x_scale must be float32 [M, 1]");
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous() && w_scale.numel() == n,
              "w_scale must be float32 [N]");
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n,
                "bias must be float32 [N]");
    bp = bias->data_ptr<float>();
  }
  at::Tensor y = at::empty({m, n}, acc.options().dtype(out_dtype));
  if (out_dtype == at::kFloat) {
    int8_epilogue_impl<float>(acc.data_ptr<int32_t>(), x_scale.data_ptr<float>(), w_scale.data_ptr<float>(), bp,
                              y.data_ptr<float>(), m, n);
  } else {
    TORCH_CHECK(out_dtype == at::kBFloat16, "out_dtype must be float32 or bfloat16");
    int8_epilogue_impl<uint16_t>(acc.data_ptr<int32_t>(), x_scale.data_ptr<float>(), w_scale.data_ptr<float>(), bp,
                                 raw<at::BFloat16>(y), m, n);
  }
  return y;
}

// ---- GGUF Q8_0 linear: int8 weights in blocks of 32 with a float scale each, kept as stored ----
//
// As llama.cpp multiplies Q8_0: the activations are quantized per block of 32 too (an int8 code and a
// scale per block), each block's dot product is an exact int32 sum (VNNI vpdpbusd on unsigned codes
// q + 128, less 128 * the block's weight sum), and the blocks are summed in float in k order:
// y = sum_b float(dot_b) * (w_scale_b * x_scale_b). Every (row, output) takes exactly these operations in
// this order whatever tile it falls in, so a row's result does not depend on the other rows.
//
// Weights are packed for the kernel once (int8_block_pack in Python): 16 outputs x 4 consecutive k per
// 64-byte vector, [N / 16][K / 4][16][4]; scales and the 128 * sum corrections as [N / 16][K / 32][16].

bool int8_block_linear_available() {
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  return true;
#else
  return false;
#endif
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr int64_t Q8_BLOCK = 32;

// x [M, K] -> unsigned codes (q + 128) [M, K] and scales [M, K / 32]: per block q = rne(x * 127 / amax).
template <typename T>
void quantize_blocks_u8(const T* x, int64_t ldx, uint8_t* xu, float* xs, int64_t m, int64_t k) {
  const int64_t nb = k / Q8_BLOCK;
  at::parallel_for(0, m, grain_rows(k), [&](int64_t begin, int64_t end) {
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127), bias = _mm512_set1_epi32(128);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t b = 0; b < nb; ++b) {
        const T* src = x + r * ldx + b * Q8_BLOCK;
        __m512 v[2];
        for (int h = 0; h < 2; ++h) {
          if constexpr (std::is_same_v<T, float>) {
            v[h] = _mm512_loadu_ps(src + 16 * h);
          } else {
            const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 16 * h));
            v[h] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
          }
        }
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
        xs[r * nb + b] = amax > 0.f ? amax / 127.f : 1.f;
        const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        for (int h = 0; h < 2; ++h) {
          __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(v[h], inv));
          c = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(c, lo), hi), bias);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(xu + r * k + b * Q8_BLOCK + 16 * h), _mm512_cvtepi32_epi8(c));
        }
      }
    }
  });
}

// R rows x C vectors of 16 outputs. wp/ws/corr point at the first vector's data; vectors are
// `k * 16` bytes (codes) and `nb * 16` elements (scales, corrections) apart.
template <typename Y, int R, int C>
void q8_tile(const uint8_t* xu, const float* xs, int64_t k, const int8_t* wp, const float* ws, const int32_t* corr,
             Y* y, int64_t ldy, int64_t cols) {
  const int64_t nb = k / Q8_BLOCK;
  __m512 facc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) facc[r][c] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512i acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
    for (int64_t kk = 0; kk < Q8_BLOCK / 4; ++kk) {
      const int64_t k4 = b * (Q8_BLOCK / 4) + kk;
      __m512i w[C];
      for (int c = 0; c < C; ++c) w[c] = _mm512_loadu_si512(wp + c * k * 16 + k4 * 64);
      for (int r = 0; r < R; ++r) {
        int32_t four;
        std::memcpy(&four, xu + r * k + k4 * 4, 4);
        const __m512i xb = _mm512_set1_epi32(four);
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xb, w[c]);
      }
    }
    for (int c = 0; c < C; ++c) {
      const __m512i cv = _mm512_loadu_si512(corr + c * nb * 16 + b * 16);
      const __m512 wv = _mm512_loadu_ps(ws + c * nb * 16 + b * 16);
      for (int r = 0; r < R; ++r) {
        const __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][c], cv));
        facc[r][c] = _mm512_fmadd_ps(f, _mm512_mul_ps(wv, _mm512_set1_ps(xs[r * nb + b])), facc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      const int64_t valid = std::min<int64_t>(16, cols - 16 * c);
      if (valid <= 0) continue;
      alignas(64) float tmp[16];
      _mm512_store_ps(tmp, facc[r][c]);
      for (int64_t j = 0; j < valid; ++j) y[r * ldy + 16 * c + j] = from_float<Y>(tmp[j]);
    }
}

template <typename Y>
void q8_linear_impl(const uint8_t* xu, const float* xs, int64_t m, int64_t k, const int8_t* wp, const float* ws,
                    const int32_t* corr, int64_t n, Y* y) {
  const int64_t nb = k / Q8_BLOCK, vecs = (n + 15) / 16;
  constexpr int64_t VECS_PER_TASK = 4, ROWS_PER_TASK = 64;
  const int64_t groups = (vecs + VECS_PER_TASK - 1) / VECS_PER_TASK, row_blocks = (m + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
  at::parallel_for(0, groups * row_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t rb = task / groups, g = task % groups;
      const int64_t r_end = std::min(m, (rb + 1) * ROWS_PER_TASK);
      const int64_t v_end = std::min(vecs, (g + 1) * VECS_PER_TASK);
      for (int64_t r0 = rb * ROWS_PER_TASK; r0 < r_end; r0 += 4) {
        const int64_t rows = std::min<int64_t>(4, r_end - r0);
        const int64_t step = rows == 1 ? 4 : 2;  // vectors per tile
        for (int64_t v0 = g * VECS_PER_TASK; v0 < v_end; v0 += step) {
          const int64_t nv = std::min(step, v_end - v0);
          const uint8_t* xr = xu + r0 * k;
          const float* sr = xs + r0 * nb;
          const int8_t* w = wp + v0 * k * 16;
          const float* s = ws + v0 * nb * 16;
          const int32_t* cr = corr + v0 * nb * 16;
          Y* yr = y + r0 * n + v0 * 16;
          const int64_t cols = std::min(n - v0 * 16, nv * 16);
#define PAGODA_Q8_TILE(RR, CC) q8_tile<Y, RR, CC>(xr, sr, k, w, s, cr, yr, n, cols)
          if (rows == 1) {
            if (nv == 4) PAGODA_Q8_TILE(1, 4);
            else if (nv == 3) PAGODA_Q8_TILE(1, 3);
            else if (nv == 2) PAGODA_Q8_TILE(1, 2);
            else PAGODA_Q8_TILE(1, 1);
          } else if (nv == 2) {
            if (rows == 4) PAGODA_Q8_TILE(4, 2);
            else if (rows == 3) PAGODA_Q8_TILE(3, 2);
            else PAGODA_Q8_TILE(2, 2);
          } else {
            if (rows == 4) PAGODA_Q8_TILE(4, 1);
            else if (rows == 3) PAGODA_Q8_TILE(3, 1);
            else PAGODA_Q8_TILE(2, 1);
          }
#undef PAGODA_Q8_TILE
        }
      }
    }
  });
}
#endif

// x [M, K] (float32 or bfloat16, K a multiple of 32) times packed Q8_0 weights -> [M, N] in out_dtype.
at::Tensor int8_block_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                             const at::Tensor& correction, int64_t out_features, at::ScalarType out_dtype) {
  check_cpu(x, "x");
  TORCH_CHECK(int8_block_linear_available(), "int8_block_linear needs AVX-512 VNNI (built without it)");
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [M, K] with contiguous rows");
  const int64_t m = x.size(0), k = x.size(1), n = out_features, vecs = (n + 15) / 16;
  TORCH_CHECK(k % Q8_BLOCK == 0, "int8_block_linear: K must be a multiple of 32, got ", k);
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.is_contiguous() && packed.numel() == vecs * 16 * k,
              "packed codes must be contiguous int8 [ceil(N / 16), K / 4, 16, 4]");
  TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous() &&
              w_scale.numel() == vecs * 16 * (k / Q8_BLOCK), "w_scale must be contiguous float32 [N / 16, K / 32, 16]");
  TORCH_CHECK(correction.scalar_type() == at::kInt && correction.is_contiguous() &&
              correction.numel() == vecs * 16 * (k / Q8_BLOCK), "correction must be contiguous int32 [N / 16, K / 32, 16]");
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16, "out_dtype must be float32 or bfloat16");
  at::Tensor y = at::empty({m, n}, x.options().dtype(out_dtype));
  if (m == 0) return y;
  at::Tensor xu = at::empty({m, k}, x.options().dtype(at::kByte));
  at::Tensor xs = at::empty({m, k / Q8_BLOCK}, x.options().dtype(at::kFloat));
  PAGODA_DISPATCH(x.scalar_type(), "int8_block_linear", [&] {
    quantize_blocks_u8<typename Raw<scalar_t>::type>(raw<scalar_t>(x), x.stride(0), xu.data_ptr<uint8_t>(),
                                                     xs.data_ptr<float>(), m, k);
  });
  const int8_t* wp = packed.data_ptr<int8_t>();
  if (out_dtype == at::kFloat) {
    q8_linear_impl<float>(xu.data_ptr<uint8_t>(), xs.data_ptr<float>(), m, k, wp, w_scale.data_ptr<float>(),
                          correction.data_ptr<int32_t>(), n, y.data_ptr<float>());
  } else {
    q8_linear_impl<uint16_t>(xu.data_ptr<uint8_t>(), xs.data_ptr<float>(), m, k, wp, w_scale.data_ptr<float>(),
                             correction.data_ptr<int32_t>(), n, raw<at::BFloat16>(y));
  }
  return y;
#else
  return x;
#endif
}

// ---- GGUF K-quant linear: unsigned codes per sub-block of 16 or 32 with a float scale and offset ----
//
// Every GGUF block format Pagoda keeps packed on this path is w = code * scale + offset per sub-block (Q4_K,
// Q5_K: 32 weights, codes 0..15 / 0..31, scale d * sc and offset -dmin * m; Q6_K: 16 weights, codes 0..63,
// scale d * sc and offset -32 d * sc; Q4_0, Q4_1 and Q8_0 parts of a mixed fused layer likewise), all exact in
// float32. The activations are quantized per sub-block too (int8 codes, a scale, and the codes' sum), so one
// sub-block's contribution is xs * (scale * dot + offset * xsum) with dot and xsum exact int32 sums (VNNI
// vpdpbusd: unsigned weight codes times signed activation codes), and the sub-blocks add up in float in k
// order. Every (row, output) takes exactly these operations whatever tile it falls in: batch invariant.
//
// Codes are packed as for Q8_0, [N / 16][K / 4][16][4]; scales and offsets [N / 16][K / block][16].

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
// x [M, K] -> signed codes rne(x * 127 / amax) [M, K], scales amax / 127 and code sums [M, K / block].
template <typename T>
void quantize_subblocks_s8(const T* x, int64_t ldx, int64_t block, int8_t* xq, float* xs, int32_t* xsum, int64_t m,
                           int64_t k) {
  const int64_t nb = k / block, halves = block / 16;
  at::parallel_for(0, m, grain_rows(k), [&](int64_t begin, int64_t end) {
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t b = 0; b < nb; ++b) {
        const T* src = x + r * ldx + b * block;
        __m512 v[2];
        __m512 amax = _mm512_setzero_ps();
        for (int64_t h = 0; h < halves; ++h) {
          if constexpr (std::is_same_v<T, float>) {
            v[h] = _mm512_loadu_ps(src + 16 * h);
          } else {
            const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 16 * h));
            v[h] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
          }
          amax = _mm512_max_ps(amax, _mm512_abs_ps(v[h]));
        }
        const float a = _mm512_reduce_max_ps(amax);
        xs[r * nb + b] = a > 0.f ? a / 127.f : 1.f;
        const __m512 inv = _mm512_set1_ps(a > 0.f ? 127.f / a : 0.f);
        __m512i sum = _mm512_setzero_si512();
        for (int64_t h = 0; h < halves; ++h) {
          __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(v[h], inv));
          c = _mm512_min_epi32(_mm512_max_epi32(c, lo), hi);
          sum = _mm512_add_epi32(sum, c);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + r * k + b * block + 16 * h), _mm512_cvtepi32_epi8(c));
        }
        xsum[r * nb + b] = _mm512_reduce_add_epi32(sum);
      }
    }
  });
}

// R rows x C vectors of 16 outputs; wp/ws/wo point at the first vector's data, vectors `k * 16` bytes (codes)
// and `nb * 16` floats (scales, offsets) apart.
template <typename Y, int R, int C, int BLOCK>
void kq_tile(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t k, const uint8_t* wp, const float* ws,
             const float* wo, Y* y, int64_t ldy, int64_t cols) {
  const int64_t nb = k / BLOCK;
  __m512 facc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) facc[r][c] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512i acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
    for (int64_t kk = 0; kk < BLOCK / 4; ++kk) {
      const int64_t k4 = b * (BLOCK / 4) + kk;
      __m512i w[C];
      for (int c = 0; c < C; ++c) w[c] = _mm512_loadu_si512(wp + c * k * 16 + k4 * 64);
      for (int r = 0; r < R; ++r) {
        int32_t four;
        std::memcpy(&four, xq + r * k + k4 * 4, 4);
        const __m512i xb = _mm512_set1_epi32(four);
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], w[c], xb);
      }
    }
    for (int c = 0; c < C; ++c) {
      const __m512 sv = _mm512_loadu_ps(ws + c * nb * 16 + b * 16);
      const __m512 ov = _mm512_loadu_ps(wo + c * nb * 16 + b * 16);
      for (int r = 0; r < R; ++r) {
        const __m512 off = _mm512_mul_ps(ov, _mm512_set1_ps(static_cast<float>(xsum[r * nb + b])));
        const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][c]), sv, off);
        facc[r][c] = _mm512_fmadd_ps(f, _mm512_set1_ps(xs[r * nb + b]), facc[r][c]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      const int64_t valid = std::min<int64_t>(16, cols - 16 * c);
      if (valid <= 0) continue;
      alignas(64) float tmp[16];
      _mm512_store_ps(tmp, facc[r][c]);
      for (int64_t j = 0; j < valid; ++j) y[r * ldy + 16 * c + j] = from_float<Y>(tmp[j]);
    }
}

template <typename Y, int BLOCK>
void kq_linear_impl(const int8_t* xq, const float* xs, const int32_t* xsum, int64_t m, int64_t k, const uint8_t* wp,
                    const float* ws, const float* wo, int64_t n, Y* y) {
  const int64_t nb = k / BLOCK, vecs = (n + 15) / 16;
  constexpr int64_t VECS_PER_TASK = 4, ROWS_PER_TASK = 64;
  const int64_t groups = (vecs + VECS_PER_TASK - 1) / VECS_PER_TASK, row_blocks = (m + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
  at::parallel_for(0, groups * row_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t rb = task / groups, g = task % groups;
      const int64_t r_end = std::min(m, (rb + 1) * ROWS_PER_TASK);
      const int64_t v_end = std::min(vecs, (g + 1) * VECS_PER_TASK);
      for (int64_t r0 = rb * ROWS_PER_TASK; r0 < r_end; r0 += 4) {
        const int64_t rows = std::min<int64_t>(4, r_end - r0);
        const int64_t step = rows == 1 ? 4 : 2;  // vectors per tile
        for (int64_t v0 = g * VECS_PER_TASK; v0 < v_end; v0 += step) {
          const int64_t nv = std::min(step, v_end - v0);
          const int8_t* xr = xq + r0 * k;
          const float* sr = xs + r0 * nb;
          const int32_t* qr = xsum + r0 * nb;
          const uint8_t* w = wp + v0 * k * 16;
          const float* s = ws + v0 * nb * 16;
          const float* o = wo + v0 * nb * 16;
          Y* yr = y + r0 * n + v0 * 16;
          const int64_t cols = std::min(n - v0 * 16, nv * 16);
#define PAGODA_KQ_TILE(RR, CC) kq_tile<Y, RR, CC, BLOCK>(xr, sr, qr, k, w, s, o, yr, n, cols)
          if (rows == 1) {
            if (nv == 4) PAGODA_KQ_TILE(1, 4);
            else if (nv == 3) PAGODA_KQ_TILE(1, 3);
            else if (nv == 2) PAGODA_KQ_TILE(1, 2);
            else PAGODA_KQ_TILE(1, 1);
          } else if (nv == 2) {
            if (rows == 4) PAGODA_KQ_TILE(4, 2);
            else if (rows == 3) PAGODA_KQ_TILE(3, 2);
            else PAGODA_KQ_TILE(2, 2);
          } else {
            if (rows == 4) PAGODA_KQ_TILE(4, 1);
            else if (rows == 3) PAGODA_KQ_TILE(3, 1);
            else PAGODA_KQ_TILE(2, 1);
          }
#undef PAGODA_KQ_TILE
        }
      }
    }
  });
}
#endif

// x [M, K] (float32 or bfloat16) times packed K-quant codes with `block` (16 or 32) weights per scale and
// offset -> [M, N] in out_dtype.
at::Tensor kquant_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                         const at::Tensor& w_offset, int64_t block, int64_t out_features, at::ScalarType out_dtype) {
  check_cpu(x, "x");
  TORCH_CHECK(int8_block_linear_available(), "kquant_linear needs AVX-512 VNNI (built without it)");
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  TORCH_CHECK(block == 16 || block == 32, "kquant_linear: block must be 16 or 32, got ", block);
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be [M, K] with contiguous rows");
  const int64_t m = x.size(0), k = x.size(1), n = out_features, vecs = (n + 15) / 16, nb = k / block;
  TORCH_CHECK(k % 32 == 0, "kquant_linear: K must be a multiple of 32, got ", k);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.numel() == vecs * 16 * k,
              "packed codes must be contiguous uint8 [ceil(N / 16), K / 4, 16, 4]");
  for (const at::Tensor* t : {&w_scale, &w_offset})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == vecs * 16 * nb,
                "w_scale and w_offset must be contiguous float32 [ceil(N / 16), K / block, 16]");
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16, "out_dtype must be float32 or bfloat16");
  at::Tensor y = at::empty({m, n}, x.options().dtype(out_dtype));
  if (m == 0) return y;
  at::Tensor xq = at::empty({m, k}, x.options().dtype(at::kChar));
  at::Tensor xs = at::empty({m, nb}, x.options().dtype(at::kFloat));
  at::Tensor xsum = at::empty({m, nb}, x.options().dtype(at::kInt));
  PAGODA_DISPATCH(x.scalar_type(), "kquant_linear", [&] {
    quantize_subblocks_s8<typename Raw<scalar_t>::type>(raw<scalar_t>(x), x.stride(0), block, xq.data_ptr<int8_t>(),
                                                        xs.data_ptr<float>(), xsum.data_ptr<int32_t>(), m, k);
  });
  auto run = [&](auto* out, auto block_tag) {
    using Y = std::remove_pointer_t<decltype(out)>;
    kq_linear_impl<Y, decltype(block_tag)::value>(xq.data_ptr<int8_t>(), xs.data_ptr<float>(),
                                                  xsum.data_ptr<int32_t>(), m, k, packed.data_ptr<uint8_t>(),
                                                  w_scale.data_ptr<float>(), w_offset.data_ptr<float>(), n, out);
  };
  using B16 = std::integral_constant<int, 16>;
  using B32 = std::integral_constant<int, 32>;
  if (out_dtype == at::kFloat) {
    if (block == 16) run(y.data_ptr<float>(), B16{}); else run(y.data_ptr<float>(), B32{});
  } else {
    if (block == 16) run(raw<at::BFloat16>(y), B16{}); else run(raw<at::BFloat16>(y), B32{});
  }
  return y;
#else
  return x;
#endif
}

// ---- Paged attention over a quantized KV cache (kv_cache_dtype "int8" / "fp8") ----
//
// Each cached (token, head) row is head_dim codes (int8, or float8 E4M3 bits) then a float16 scale: the
// row's value is codes * scale. The same algorithm as decode_task (one query row per task, scores key by
// key, a float32 softmax, values key by key), with the scale applied once per key (to the dot product) and
// once per value (to the probability). Every query is one row over its own causal context in one fixed
// order, so prefill chunks, prefix-cache hits and the other rows of a step do not change its result.

// 16 codes -> 16 floats (unscaled). E4M3 bits become float16 bits with the same exponent field and
// mantissa: the float16 value is the E4M3 value times 2^-8 (subnormals included); the 256 is folded into
// the row's scale by the caller.
inline f32x16 load16_codes(const int8_t* p) {
  const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  f32x16 out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}
inline f32x16 load16_codes(const uint8_t* p) {
  const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i sign = _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8);
  const __m256i rest = _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7F)), 7);
  const __m512 v = _mm512_cvtph_ps(_mm256_or_si256(sign, rest));
  f32x16 out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}
template <typename C> constexpr float code_factor() { return std::is_same_v<C, int8_t> ? 1.f : 256.f; }

template <typename C>
inline float row_scale(const C* row, int64_t d) {
  uint16_t half;
  std::memcpy(&half, row + d, 2);
  return _cvtsh_ss(half) * code_factor<C>();
}

template <typename T, typename C, int CHUNKS>
void decode_task_q(T* out, int64_t osh, const T* q, int64_t qsh, const C* kh, const C* vh, const int64_t* table,
                   int64_t len, int64_t group, int64_t block_size, float scale, std::vector<float>& scores) {
  constexpr int64_t d = 16 * CHUNKS, row = d + 2;
  f32x16 qv[MAX_GROUP][CHUNKS], acc[MAX_GROUP][CHUNKS] = {};
  for (int64_t g = 0; g < group; ++g)
    for (int c = 0; c < CHUNKS; ++c) qv[g][c] = load16(q + g * qsh + c * 16) * scale;
  scores.resize(group * len);
  float* sc = scores.data();
  for (int64_t j = 0; j < len; ++j) {
    const C* kr = kh + (table[j / block_size] * block_size + j % block_size) * row;
    prefetch_next_block(kh, table, j, len, block_size, row);
    f32x16 k[CHUNKS];
    for (int c = 0; c < CHUNKS; ++c) k[c] = load16_codes(kr + c * 16);
    const float ks = row_scale(kr, d);
    for (int64_t g = 0; g < group; ++g) {
      f32x16 dot = qv[g][0] * k[0];
      for (int c = 1; c < CHUNKS; ++c) dot += qv[g][c] * k[c];
      sc[g * len + j] = sum16(dot) * ks;
    }
  }
  softmax_rows(sc, group, len);
  for (int64_t j = 0; j < len; ++j) {
    const C* vr = vh + (table[j / block_size] * block_size + j % block_size) * row;
    prefetch_next_block(vh, table, j, len, block_size, row);
    f32x16 v[CHUNKS];
    for (int c = 0; c < CHUNKS; ++c) v[c] = load16_codes(vr + c * 16);
    const float vs = row_scale(vr, d);
    for (int64_t g = 0; g < group; ++g) {
      const float p = sc[g * len + j] * vs;
      for (int c = 0; c < CHUNKS; ++c) acc[g][c] += p * v[c];
    }
  }
  for (int64_t g = 0; g < group; ++g)
    for (int64_t i = 0; i < d; ++i) out[g * osh + i] = from_float<T>(acc[g][i / 16][i % 16]);
}

template <typename T, typename C>
void decode_impl_q(T* out, const T* q, const C* kc, const C* vc, const int64_t* tables, const int64_t* lens,
                   const int64_t* table_of, int64_t seqs, int64_t hq, int64_t hk, int64_t d, int64_t block_size,
                   int64_t table_stride, int64_t head_stride, int64_t qst, int64_t qsh, int64_t ost, int64_t osh,
                   float scale) {
  const int64_t group = hq / hk;
  auto table_row = [=](int64_t s) { return table_of ? table_of[s] : s; };
  at::parallel_for(0, seqs * hk, 1, [=](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / hk, h = task % hk;
      T* o = out + s * ost + h * group * osh;
      const T* qs = q + s * qst + h * group * qsh;
      const int64_t* table = tables + table_row(s) * table_stride;
      const C* kh = kc + h * head_stride;
      const C* vh = vc + h * head_stride;
      switch (d / 16) {
        case 1: decode_task_q<T, C, 1>(o, osh, qs, qsh, kh, vh, table, lens[s], group, block_size, scale, scores); break;
        case 2: decode_task_q<T, C, 2>(o, osh, qs, qsh, kh, vh, table, lens[s], group, block_size, scale, scores); break;
        case 3: decode_task_q<T, C, 3>(o, osh, qs, qsh, kh, vh, table, lens[s], group, block_size, scale, scores); break;
        case 4: decode_task_q<T, C, 4>(o, osh, qs, qsh, kh, vh, table, lens[s], group, block_size, scale, scores); break;
        case 5: decode_task_q<T, C, 5>(o, osh, qs, qsh, kh, vh, table, lens[s], group, block_size, scale, scores); break;
        case 6: decode_task_q<T, C, 6>(o, osh, qs, qsh, kh, vh, table, lens[s], group, block_size, scale, scores); break;
        default: decode_task_q<T, C, 8>(o, osh, qs, qsh, kh, vh, table, lens[s], group, block_size, scale, scores); break;
      }
    }
  });
}

// One (token, head) row -> codes and a float16 scale, as pagoda.attention.quantized_kv.quantize: the scale
// max(amax / qmax, 2^-24) rounded up to float16, codes = rne(x / scale) (int8, clamped to +-127) or
// E4M3(clamp(x / scale, +-448)).
template <typename T, typename C>
void quantize_kv_row(const T* x, C* row, int64_t d) {
  constexpr bool INT8 = std::is_same_v<C, int8_t>;
  constexpr float QMAX = INT8 ? 127.f : 448.f;
  float amax = 0.f;
  for (int64_t i = 0; i < d; ++i) amax = std::max(amax, std::fabs(to_float(x[i])));
  const float exact = std::max(amax / QMAX, 5.9604644775390625e-08f);  // 2^-24
  c10::Half half(exact);
  if (static_cast<float>(half) < exact) half = c10::Half(static_cast<uint16_t>(half.x + 1), c10::Half::from_bits());
  const float scale = static_cast<float>(half);
  for (int64_t i = 0; i < d; ++i) {
    const float v = to_float(x[i]) / scale;
    if constexpr (INT8) {
      row[i] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, std::nearbyint(v))));
    } else {
      row[i] = c10::Float8_e4m3fn(std::min(448.f, std::max(-448.f, v))).x;
    }
  }
  std::memcpy(row + d, &half.x, 2);
}

template <typename T, typename C>
void cache_write_quantized_impl(const T* k, const T* v, C* kc, C* vc, const int64_t* slots, int64_t tokens,
                                int64_t hk, int64_t d, int64_t kst, int64_t ksh, int64_t vst, int64_t vsh,
                                int64_t head_stride) {
  at::parallel_for(0, tokens, grain_rows(8 * hk * d), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;  // padding token: nothing to store
      for (int64_t h = 0; h < hk; ++h) {
        quantize_kv_row(k + t * kst + h * ksh, kc + h * head_stride + slot * (d + 2), d);
        quantize_kv_row(v + t * vst + h * vsh, vc + h * head_stride + slot * (d + 2), d);
      }
    }
  });
}

// Writes k/v [T, Hkv, D] (float32 / bfloat16) quantized into caches [Hkv, blocks, block, D + 2] (int8 or
// float8_e4m3fn rows) at slot_mapping.
void write_kv_cache_quantized_(const at::Tensor& k, const at::Tensor& v, at::Tensor k_cache, at::Tensor v_cache,
                               const at::Tensor& slot_mapping) {
  check_cpu(k, "k");
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes() && k.stride(2) == 1 && v.stride(2) == 1 &&
              k.scalar_type() == v.scalar_type(), "k and v must be [T, Hkv, D] with a contiguous head dim");
  const int64_t d = k.size(2);
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.dim() == 4 &&
              v_cache.sizes() == k_cache.sizes() && k_cache.size(0) == k.size(1) && k_cache.size(3) == d + 2,
              "caches must be contiguous [Hkv, blocks, block, D + 2]");
  TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type() &&
              (k_cache.scalar_type() == at::kChar || k_cache.scalar_type() == at::kFloat8_e4m3fn),
              "quantized caches must be int8 or float8_e4m3fn");
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong && slot_mapping.numel() == k.size(0), "slot_mapping: int64 [T]");
  const at::Tensor slots = slot_mapping.contiguous();
  const bool is_int8 = k_cache.scalar_type() == at::kChar;
  PAGODA_DISPATCH(k.scalar_type(), "write_kv_cache_quantized_", [&] {
    using T = typename Raw<scalar_t>::type;
    auto call = [&](auto* kc, auto* vc) {
      cache_write_quantized_impl<T>(raw<scalar_t>(k), raw<scalar_t>(v), kc, vc, slots.data_ptr<int64_t>(), k.size(0),
                                    k.size(1), d, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
                                    k_cache.stride(0));
    };
    if (is_int8) {
      call(static_cast<int8_t*>(k_cache.data_ptr()), static_cast<int8_t*>(v_cache.data_ptr()));
    } else {
      call(static_cast<uint8_t*>(k_cache.data_ptr()), static_cast<uint8_t*>(v_cache.data_ptr()));
    }
  });
}

// As paged_attention_rows, over caches [Hkv, blocks, block, D + 2] of int8 or float8_e4m3fn rows (codes,
// then a float16 scale). head_dim must be 16, 32, 48, 64, 80, 96 or 128 and the group at most 16.
void paged_attention_rows_quantized(at::Tensor out, const at::Tensor& q, const at::Tensor& k_cache,
                                    const at::Tensor& v_cache, const at::Tensor& block_tables,
                                    const at::Tensor& seq_lens, const c10::optional<at::Tensor>& table_of,
                                    double scale) {
  check_cpu(q, "q");
  TORCH_CHECK(q.dim() == 3 && out.sizes() == q.sizes() && q.stride(2) == 1 && out.stride(2) == 1,
              "q and out must be [S, Hq, D] with a contiguous head dim");
  const int64_t d = q.size(2);
  TORCH_CHECK(d % 16 == 0 && (d / 16 <= 6 || d == 128), "quantized KV attention: head_dim ", d, " unsupported");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.dim() == 4 &&
              v_cache.sizes() == k_cache.sizes() && k_cache.size(3) == d + 2,
              "caches must be contiguous [Hkv, blocks, block, D + 2]");
  TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type() &&
              (k_cache.scalar_type() == at::kChar || k_cache.scalar_type() == at::kFloat8_e4m3fn),
              "quantized caches must be int8 or float8_e4m3fn");
  TORCH_CHECK(q.size(1) % k_cache.size(0) == 0 && q.size(1) / k_cache.size(0) <= MAX_GROUP,
              "query heads must be a multiple of KV heads, at most 16 per KV head");
  TORCH_CHECK(out.scalar_type() == q.scalar_type(), "q and out must share a dtype");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && block_tables.dim() == 2 && block_tables.stride(1) == 1,
              "block_tables: int64 [S, blocks]");
  TORCH_CHECK(seq_lens.scalar_type() == at::kLong && seq_lens.numel() >= q.size(0), "seq_lens: int64 [rows]");
  at::Tensor rows_table;
  if (table_of.has_value()) {
    rows_table = table_of->contiguous();
    TORCH_CHECK(rows_table.scalar_type() == at::kLong && rows_table.numel() == q.size(0), "table_of: int64 [rows]");
  } else {
    TORCH_CHECK(block_tables.size(0) >= q.size(0), "block_tables must have a row per query");
  }
  const int64_t* table_ptr = table_of.has_value() ? rows_table.data_ptr<int64_t>() : nullptr;
  const at::Tensor lens = seq_lens.contiguous();
  const int64_t block_size = k_cache.size(2);
  for (int64_t s = 0; s < q.size(0); ++s) {
    const int64_t t = table_ptr ? table_ptr[s] : s;
    TORCH_CHECK(t >= 0 && t < block_tables.size(0), "row ", s, " names block table ", t, " of ", block_tables.size(0));
    TORCH_CHECK(lens.data_ptr<int64_t>()[s] <= block_tables.size(1) * block_size,
                "sequence ", s, " is longer than its block table");
  }
  const bool is_int8 = k_cache.scalar_type() == at::kChar;
  PAGODA_DISPATCH(q.scalar_type(), "paged_attention_rows_quantized", [&] {
    using T = typename Raw<scalar_t>::type;
    auto call = [&](auto* kc, auto* vc) {
      decode_impl_q<T>(raw<scalar_t>(out), raw<scalar_t>(q), kc, vc, block_tables.data_ptr<int64_t>(),
                       lens.data_ptr<int64_t>(), table_ptr, q.size(0), q.size(1), k_cache.size(0), d, block_size,
                       block_tables.stride(0), k_cache.stride(0), q.stride(0), q.stride(1), out.stride(0),
                       out.stride(1), static_cast<float>(scale));
    };
    if (is_int8) {
      call(static_cast<const int8_t*>(k_cache.data_ptr()), static_cast<const int8_t*>(v_cache.data_ptr()));
    } else {
      call(static_cast<const uint8_t*>(k_cache.data_ptr()), static_cast<const uint8_t*>(v_cache.data_ptr()));
    }
  });
}

}  // namespace

TORCH_LIBRARY(pagoda, m) {
  m.def("fused_add_rms_norm_(Tensor(a!) x, Tensor(b!) residual, Tensor weight, float eps) -> ()");
  m.def("rotary_embedding_(Tensor positions, Tensor(a!) q, Tensor(b!) k, Tensor cos, Tensor sin) -> ()");
  m.def("write_kv_cache_(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slot_mapping) -> ()");
  m.def("paged_decode_attention(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor seq_lens, float scale) -> ()");
  m.def("paged_attention_rows(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
        "Tensor seq_lens, Tensor? table_of, float scale) -> ()");
  m.def("silu_and_mul(Tensor x) -> Tensor");
  m.def("gemv_bf16(Tensor x, Tensor weight) -> Tensor");
  m.def("apply_token_bitmask_(Tensor(a!) logits, Tensor bitmask) -> ()");
  m.def("invariant_linear_available() -> bool", &invariant_linear_available);
  m.def("invariant_linear(Tensor x, Tensor weight, Tensor scale, Tensor offset, int out_features, "
        "ScalarType out_dtype) -> Tensor");
  m.def("lora_add_(Tensor(a!) y, Tensor x, Tensor a, Tensor bt, Tensor row_slots, int[] part_outs, "
        "Tensor slot_widths) -> ()");
  m.def("quantize_rows_int8(Tensor x, Tensor? col_scale=None) -> (Tensor, Tensor)");
  m.def("int8_scaled_epilogue(Tensor acc, Tensor x_scale, Tensor w_scale, Tensor? bias, ScalarType out_dtype) "
        "-> Tensor");
  m.def("int8_block_linear_available() -> bool", &int8_block_linear_available);
  m.def("write_kv_cache_quantized_(Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
        "Tensor slot_mapping) -> ()");
  m.def("paged_attention_rows_quantized(Tensor(a!) out, Tensor q, Tensor k_cache, Tensor v_cache, "
        "Tensor block_tables, Tensor seq_lens, Tensor? table_of, float scale) -> ()");
  m.def("int8_block_linear(Tensor x, Tensor packed, Tensor w_scale, Tensor correction, int out_features, "
        "ScalarType out_dtype) -> Tensor");
  m.def("kquant_linear(Tensor x, Tensor packed, Tensor w_scale, Tensor w_offset, int block, int out_features, "
        "ScalarType out_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(pagoda, CPU, m) {
  m.impl("fused_add_rms_norm_", &fused_add_rms_norm_);
  m.impl("rotary_embedding_", &rotary_embedding_);
  m.impl("write_kv_cache_", &write_kv_cache_);
  m.impl("paged_decode_attention", &paged_decode_attention);
  m.impl("paged_attention_rows", &paged_attention_rows);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("gemv_bf16", &gemv_bf16);
  m.impl("apply_token_bitmask_", &apply_token_bitmask_);
  m.impl("invariant_linear", &invariant_linear);
  m.impl("lora_add_", &lora_add_);
  m.impl("quantize_rows_int8", &quantize_rows_int8);
  m.impl("int8_scaled_epilogue", &int8_scaled_epilogue);
  m.impl("int8_block_linear", &int8_block_linear);
  m.impl("kquant_linear", &kquant_linear);
  m.impl("paged_attention_rows_quantized", &paged_attention_rows_quantized);
  m.impl("write_kv_cache_quantized_", &write_kv_cache_quantized_);
}
