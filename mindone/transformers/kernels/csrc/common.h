// Shared by every kernel: the MindSpore AOT entry signature, dtype-generic SIMD loads and stores (GCC vector
// extensions, so -march=native picks AVX-512, AVX2 or NEON), a vectorised exp, and a small thread pool.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

#define MK_KERNEL extern "C" __attribute__((visibility("default"))) int
#define MK_ARGS int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra

namespace mk {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(64)));
typedef _Float16 vh __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

// Status codes returned to MindSpore (it raises "Return value ... is N"); the Python side checks shapes first.
enum Status { kOk = 0, kBadArity = 1, kBadDtype = 2, kBadShape = 3 };

// Quant marks an argument a kernel built itself (WeightsLayer): its data is a matmul.h QuantWeight descriptor.
enum class DType { F32, F16, Quant, Other };
constexpr const char *kQuantTag = "mk_quant";
inline DType dtype_of(const char *name) {
  if (std::strcmp(name, "float32") == 0) return DType::F32;
  if (std::strcmp(name, "float16") == 0) return DType::F16;
  if (std::strcmp(name, kQuantTag) == 0) return DType::Quant;
  return DType::Other;
}

// Tensor argument i of an AOT call: inputs first, then outputs.
struct Arg {
  void *data;
  const int64_t *shape;
  int ndim;
  DType dtype;
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
  }
  int64_t dim(int i) const { return shape[i < 0 ? ndim + i : i]; }
  template <class T> T *as() const { return static_cast<T *>(data); }
};
inline Arg arg(int i, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  return Arg{params[i], shapes[i], ndims[i], dtype_of(dtypes[i])};
}
#define MK_ARG(i) mk::arg(i, params, ndims, shapes, dtypes)

inline vf splat(float v) { return vf{} + v; }
inline vf loadv(const float *p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline vf loadv(const _Float16 *p) { vh h; std::memcpy(&h, p, sizeof h); return __builtin_convertvector(h, vf); }
inline void storev(float *p, vf v) { std::memcpy(p, &v, sizeof v); }
inline void storev(_Float16 *p, vf v) { vh h = __builtin_convertvector(v, vh); std::memcpy(p, &h, sizeof h); }
// The first n (< kLanes) elements; the rest read as zero / are not written.
template <class T> inline vf loadn(const T *p, int64_t n) {
  float t[kLanes] = {};
  for (int64_t i = 0; i < n; i++) t[i] = static_cast<float>(p[i]);
  return loadv(t);
}
template <class T> inline void storen(T *p, vf v, int64_t n) {
  float t[kLanes];
  storev(t, v);
  for (int64_t i = 0; i < n; i++) p[i] = static_cast<T>(t[i]);
}

inline float hsum(vf v) {
  vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf vmin(vf a, vf b) { return a < b ? a : b; }
inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < kLanes; i++) m = v[i] > m ? v[i] : m;
  return m;
}

// exp(x) for every lane, within 2 ulp of expf over the range where expf is normal (Cephes' polynomial).
inline vf vexp(vf x) {
  x = vmin(vmax(x, splat(-87.3365447505f)), splat(88.0f));
  vf fx = x * 1.44269504088896341f + 0.5f;
  vf n = __builtin_convertvector(__builtin_convertvector(fx, vi), vf);
  n -= __builtin_convertvector((n > fx) & 1, vf);  // floor
  x = x - n * 0.693359375f + n * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * (x * x) + x + 1.0f;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  return y * (vf)bits;
}

inline float to_float(float v) { return v; }
inline float to_float(_Float16 v) { return static_cast<float>(v); }

// Runs fn(ctx, begin, end) over [0, n) split into one contiguous range per thread. The calling thread takes
// the first range. Work of fewer than `grain` items per thread, or a pool already busy with another kernel
// (MindSpore may launch kernels from several threads), runs inline on the calling thread.
typedef void (*RangeFn)(void *ctx, int64_t begin, int64_t end);
void parallel_for(int64_t n, int64_t grain, RangeFn fn, void *ctx);
int num_threads();

template <class F> void parallel_for(int64_t n, int64_t grain, F &&body) {
  parallel_for(n, grain, [](void *ctx, int64_t b, int64_t e) { (*static_cast<F *>(ctx))(b, e); }, &body);
}

}  // namespace mk

// Calls fn<float> or fn<_Float16> by the dtype name of the first tensor; other dtypes are refused.
#define MK_DISPATCH(dtype_name, fn, args)                  \
  switch (mk::dtype_of(dtype_name)) {                      \
    case mk::DType::F32: return fn<float> args;            \
    case mk::DType::F16: return fn<_Float16> args;         \
    default: return mk::kBadDtype;                         \
  }
