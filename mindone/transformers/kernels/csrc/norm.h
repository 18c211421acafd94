// RMSNorm over the last axis, alone or with the residual add before it; shared by the norm kernels and the
// blocks that start with a norm.
//
// The arithmetic follows the composed ops it replaces (composed.rms_norm): normalise in float32; without a unit
// offset cast back to the input dtype and then scale by the weight in that dtype (Llama's order); with a unit
// offset (Gemma) scale by (1 + weight) in float32 and cast last.
#pragma once

#include "common.h"

namespace mk {

struct NormConfig {
  float eps;
  bool unit_offset;
};

inline NormConfig norm_config(const Arg &cfg) {
  const float *c = cfg.as<float>();
  return NormConfig{c[0], c[1] != 0.0f};
}

// Sum of squares of a float32 row.
inline float sum_squares(const float *h, int64_t d) {
  vf acc = vf{};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    vf v = loadv(h + i);
    acc += v * v;
  }
  float s = hsum(acc);
  for (; i < d; i++) s += h[i] * h[i];
  return s;
}

template <class T> inline void rms_row(const float *h, const T *w, T *out, int64_t d, NormConfig c) {
  float scale = 1.0f / std::sqrt(sum_squares(h, d) / static_cast<float>(d) + c.eps);
  for (int64_t i = 0; i < d; i++) {
    float normed = h[i] * scale;
    if (c.unit_offset) {
      out[i] = static_cast<T>(normed * (1.0f + to_float(w[i])));
    } else {
      out[i] = static_cast<T>(to_float(w[i]) * to_float(static_cast<T>(normed)));
    }
  }
}

template <class T> void rms_norm(const T *x, const T *residual, const T *w, T *sum, T *out, int64_t rows,
                                 int64_t d, NormConfig c) {
  parallel_for(rows, 64, [&](int64_t begin, int64_t end) {
    float h[d];
    for (int64_t r = begin; r < end; r++) {
      const T *xr = x + r * d;
      for (int64_t i = 0; i < d; i++) {
        if (residual != nullptr) {
          T added = static_cast<T>(to_float(xr[i]) + to_float(residual[r * d + i]));
          sum[r * d + i] = added;
          h[i] = to_float(added);
        } else {
          h[i] = to_float(xr[i]);
        }
      }
      rms_row(h, w, out + r * d, d, c);
    }
  });
}

// The residual stream and its norm: (hidden + residual, rms_norm(hidden + residual)), or (hidden, rms_norm(hidden))
// without a residual (a model's first layer).
template <class T> void add_and_norm(const T *hidden, const T *residual, const T *w, NormConfig c, T *residual_out,
                                     T *normed, int64_t rows, int64_t d) {
  rms_norm(hidden, residual, w, residual_out, normed, rows, d, c);
  if (residual == nullptr) std::memcpy(residual_out, hidden, sizeof(T) * rows * d);
}

}  // namespace mk
