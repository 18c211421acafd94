// RMSNorm (norm.h) and LayerNorm over the last axis, alone or fused with the residual add before them.
#include "norm.h"

namespace mk {
namespace {

template <class T> void layer_norm(const T *x, const T *residual, const T *w, const T *b, T *sum, T *out,
                                   int64_t rows, int64_t d, float eps) {
  parallel_for(rows, 64, [&](int64_t begin, int64_t end) {
    float h[d];
    for (int64_t r = begin; r < end; r++) {
      float mean = 0.0f;
      for (int64_t i = 0; i < d; i++) {
        float v = to_float(x[r * d + i]);
        if (residual != nullptr) {
          T added = static_cast<T>(v + to_float(residual[r * d + i]));
          sum[r * d + i] = added;
          v = to_float(added);
        }
        h[i] = v;
        mean += v;
      }
      mean /= static_cast<float>(d);
      float var = 0.0f;
      for (int64_t i = 0; i < d; i++) var += (h[i] - mean) * (h[i] - mean);
      float scale = 1.0f / std::sqrt(var / static_cast<float>(d) + eps);
      for (int64_t i = 0; i < d; i++) {
        out[r * d + i] = static_cast<T>((h[i] - mean) * scale * to_float(w[i]) + to_float(b[i]));
      }
    }
  });
}

template <class T> int run_rms(void **params, int *ndims, int64_t **shapes, const char **dtypes, bool fused_add) {
  Arg x = MK_ARG(0);
  int i = 1;
  const T *residual = fused_add ? MK_ARG(i++).as<T>() : nullptr;
  const T *w = MK_ARG(i++).as<T>();
  NormConfig c = norm_config(MK_ARG(i++));
  T *sum = fused_add ? MK_ARG(i++).as<T>() : nullptr;
  T *out = MK_ARG(i).as<T>();
  int64_t d = x.dim(-1);
  rms_norm(x.as<T>(), residual, w, sum, out, x.numel() / d, d, c);
  return kOk;
}

template <class T> int run_ln(void **params, int *ndims, int64_t **shapes, const char **dtypes, bool fused_add) {
  Arg x = MK_ARG(0);
  int i = 1;
  const T *residual = fused_add ? MK_ARG(i++).as<T>() : nullptr;
  const T *w = MK_ARG(i++).as<T>();
  const T *b = MK_ARG(i++).as<T>();
  float eps = MK_ARG(i++).as<float>()[0];
  T *sum = fused_add ? MK_ARG(i++).as<T>() : nullptr;
  T *out = MK_ARG(i).as<T>();
  int64_t d = x.dim(-1);
  layer_norm(x.as<T>(), residual, w, b, sum, out, x.numel() / d, d, eps);
  return kOk;
}


}  // namespace
}  // namespace mk

using namespace mk;

// RmsNorm(x, weight, cfg[eps, unit_offset]) -> y
MK_KERNEL RmsNorm(MK_ARGS) {
  if (nparam != 4) return kBadArity;
  MK_DISPATCH(dtypes[0], run_rms, (params, ndims, shapes, dtypes, false));
}

// AddRmsNorm(x, residual, weight, cfg) -> (x + residual, rms_norm(x + residual))
MK_KERNEL AddRmsNorm(MK_ARGS) {
  if (nparam != 6) return kBadArity;
  MK_DISPATCH(dtypes[0], run_rms, (params, ndims, shapes, dtypes, true));
}

// LayerNorm(x, weight, bias, eps[1]) -> y
MK_KERNEL LayerNorm(MK_ARGS) {
  if (nparam != 5) return kBadArity;
  MK_DISPATCH(dtypes[0], run_ln, (params, ndims, shapes, dtypes, false));
}

// AddLayerNorm(x, residual, weight, bias, eps[1]) -> (x + residual, layer_norm(x + residual))
MK_KERNEL AddLayerNorm(MK_ARGS) {
  if (nparam != 7) return kBadArity;
  MK_DISPATCH(dtypes[0], run_ln, (params, ndims, shapes, dtypes, true));
}
