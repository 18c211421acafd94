// Matrix products for the few-row activations of decoding, shared by the linear and attention kernels (more than
// kFewRows rows go to gemm.h's blocked product):
// y = x @ w^T with w in Hugging Face's (out, in) layout, optionally with a bias, or gated,
// y = act(x @ gate^T) * (x @ up^T), with gate and up computed in one pass.
//
// Each output is a dot product over K, so every weight row is streamed once per call whatever the number of x
// rows: tiles of MR x rows by NR weight rows keep MR * NR vector accumulators in registers. Weight rows are
// split across the pool's threads, which is what makes batch-1 decoding use the memory bandwidth of both cores.
#pragma once

#include <memory>
#include <type_traits>

#include "common.h"

namespace mk {

enum Activation { kSilu = 0, kGeluTanh = 1, kGeluErf = 2, kRelu = 3 };

// act(g) * u for n gate and up values, 16 at a time. silu(g) = g / (1 + exp(-g)); the tanh-approximated GELU
// 0.5 g (1 + tanh(c)) equals g / (1 + exp(-2c)); the exact (erf) GELU has no vector form here.
template <class T> inline void activate_times(const float *g, const float *u, T *out, int64_t n, int act) {
  int64_t i = 0;
  if (act != kGeluErf) {
    for (; i + kLanes <= n; i += kLanes) {
      vf gv = loadv(g + i), a;
      if (act == kSilu) a = gv / (1.0f + vexp(-gv));
      else if (act == kGeluTanh) a = gv / (1.0f + vexp(-1.5957691216057308f * (gv + 0.044715f * gv * gv * gv)));
      else a = vmax(gv, vf{});
      storev(out + i, a * loadv(u + i));
    }
  }
  for (; i < n; i++) {
    float v = g[i], a;
    switch (act) {
      case kSilu: a = v / (1.0f + std::exp(-v)); break;
      case kGeluTanh: a = v / (1.0f + std::exp(-1.5957691216057308f * (v + 0.044715f * v * v * v))); break;
      case kGeluErf: a = 0.5f * v * (1.0f + std::erf(v * 0.7071067811865476f)); break;
      default: a = v > 0.0f ? v : 0.0f;
    }
    out[i] = static_cast<T>(a * u[i]);
  }
}

constexpr int64_t kPrefetch = 256;  // floats ahead in each weight row

// out[i][j] = dot(x row i, w row j) for MR rows of x (stride K) and NR weight rows, prefetching the rows `ahead`
// (at the same k: these rows kPrefetch values further on, or the next tile's rows).
template <int MR, int NR, class TW>
inline void dot_tile(const float *x, const TW *const *w, const TW *const *ahead, int64_t K, float (&out)[MR][NR]) {
  vf acc[MR][NR];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) acc[i][j] = vf{};
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    vf wv[NR];
    for (int j = 0; j < NR; j++) {
      wv[j] = loadv(w[j] + k);
      __builtin_prefetch(ahead[j] + k);
    }
    for (int i = 0; i < MR; i++) {
      vf xv = loadv(x + i * K + k);
      for (int j = 0; j < NR; j++) acc[i][j] += xv * wv[j];
    }
  }
  if (k < K) {
    vf wv[NR];
    for (int j = 0; j < NR; j++) wv[j] = loadn(w[j] + k, K - k);
    for (int i = 0; i < MR; i++) {
      vf xv = loadn(x + i * K + k, K - k);
      for (int j = 0; j < NR; j++) acc[i][j] += xv * wv[j];
    }
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) out[i][j] = hsum(acc[i][j]);
}

// A quantized weight [N, K] (quantization/formats.py): int8 values with a scale per group of 2^group_shift, or
// 4-bit values (two per byte, a group's 16 bytes holding values 0-15 in their low nibbles and 16-31 in their high
// ones) with a scale and an offset per group of 32.
struct QuantWeight {
  const void *values;
  const float *scales, *offsets;
  int bits;
  int64_t group_shift;
};

constexpr int64_t kGroup4 = 32;
typedef int8_t vi8 __attribute__((vector_size(16)));
typedef uint8_t vu8 __attribute__((vector_size(16)));

// Keeps a product from being fused with the add that follows (an FMA rounds once, the reference twice).
inline vf rounded(vf v) {
  asm volatile("" : "+v"(v));
  return v;
}

// Bytes to floats through int32 lanes: GCC turns a direct byte-to-float conversion, and a signed byte-to-int one,
// into one instruction per lane; a zero extension vectorises, so signed bytes are offset by 128 and back.
inline vf to_floats(vu8 v) { return __builtin_convertvector(__builtin_convertvector(v, vi), vf); }
inline vf to_floats(vi8 v) {
  vi biased = __builtin_convertvector(reinterpret_cast<vu8 &>(v) ^ 0x80, vi) - 128;
  return __builtin_convertvector(biased, vf);
}

// Weight rows read 16 values at a time, dequantized in registers: scale * q (+ offset), rounded as the reference.
struct Int8Rows {
  const int8_t *values;
  const float *scales;
  int64_t K, group_shift;
  Int8Rows(const QuantWeight &w, int64_t K)
      : values(static_cast<const int8_t *>(w.values)), scales(w.scales), K(K), group_shift(w.group_shift) {}
  const int8_t *row(int64_t n) const { return values + n * K; }
  vf chunk(int64_t n, const int8_t *q, int64_t k) const {
    vi8 v;
    std::memcpy(&v, q + k, sizeof v);
    return to_floats(v) * scales[((n * K) >> group_shift) + (k >> group_shift)];
  }
};

struct Int4Rows {
  const uint8_t *packed;
  const float *scales, *offsets;
  int64_t K;
  Int4Rows(const QuantWeight &w, int64_t K)
      : packed(static_cast<const uint8_t *>(w.values)), scales(w.scales), offsets(w.offsets), K(K) {}
  const uint8_t *row(int64_t n) const { return packed + n * (K / 2); }
  vf chunk(int64_t n, const uint8_t *bytes, int64_t k) const {
    const int64_t g = k / kGroup4, at = n * (K / kGroup4) + g;
    vu8 b;
    std::memcpy(&b, bytes + g * (kGroup4 / 2), sizeof b);
    vu8 q = (k % kGroup4) == 0 ? (b & 15) : (b >> 4);
    return rounded(to_floats(q) * scales[at]) + offsets[at];
  }
};

// dot_tile over quantized rows: row j is row n[j] of src[j] (K a multiple of 16). The accumulation is dot_tile's,
// so the outputs are bit for bit the float tile's on the dequantized weights.
template <int MR, int NR, class Rows>
inline void quant_dot_tile(const float *x, const Rows *const *src, const int64_t *n, int64_t K, float (&out)[MR][NR]) {
  vf acc[MR][NR];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) acc[i][j] = vf{};
  decltype(src[0]->row(0)) w[NR];
  for (int j = 0; j < NR; j++) w[j] = src[j]->row(n[j]);
  for (int64_t k = 0; k < K; k += kLanes) {
    vf wv[NR];
    for (int j = 0; j < NR; j++) wv[j] = src[j]->chunk(n[j], w[j], k);
    for (int i = 0; i < MR; i++) {
      vf xv = loadv(x + i * K + k);
      for (int j = 0; j < NR; j++) acc[i][j] += xv * wv[j];
    }
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) out[i][j] = hsum(acc[i][j]);
}

// One product: plain (y = x w^T + bias) or gated (y = act(x gate^T) * (x up^T)), over float or quantized weights.
template <class T> struct Product {
  const float *x;  // [M, K] in float32
  const T *w;      // plain: [N, K]; gated: the gate rows (null when quantized)
  const T *up;     // gated only
  const T *bias;   // plain only, may be null
  T *y;            // [M, N]
  int64_t M, N, K;
  int act;         // gated only; -1 for a plain product
  float *gates = nullptr, *ups = nullptr;  // gated only: [M, N] scratch for the two products before the activation
  const QuantWeight *wq = nullptr, *upq = nullptr;  // quantized weights in place of w and up
};

// A weight input: float rows of T, or (dtype Quant) a QuantWeight descriptor.
template <class T> struct WeightRef {
  const T *rows = nullptr;
  const QuantWeight *quant = nullptr;
  static WeightRef of(const Arg &a) {
    return a.dtype == DType::Quant ? WeightRef{nullptr, a.as<const QuantWeight>()} : WeightRef{a.as<const T>(), nullptr};
  }
};

template <class T> Product<T> plain_product(const float *x, WeightRef<T> w, const T *bias, T *y, int64_t M, int64_t N,
                                            int64_t K) {
  Product<T> p{x, w.rows, nullptr, bias, y, M, N, K, -1};
  p.wq = w.quant;
  return p;
}

template <class T> Product<T> gated_product(const float *x, WeightRef<T> gate, WeightRef<T> up, T *y, int64_t M,
                                            int64_t N, int64_t K, int act, float *gates, float *ups) {
  Product<T> p{x, gate.rows, up.rows, nullptr, y, M, N, K, act, gates, ups};
  p.wq = gate.quant, p.upq = up.quant;
  return p;
}

// The tile's dot products over quantized weights (gate and up of one width, checked when the product is built).
template <int MR, int NR, class Rows, class T>
inline void quant_products(const Product<T> &p, int64_t m0, int64_t n0, float (&out)[MR][NR]) {
  const bool gated = p.act >= 0;
  const Rows first(*p.wq, p.K), second(gated ? *p.upq : *p.wq, p.K);
  const Rows *src[NR];
  int64_t n[NR];
  for (int j = 0; j < NR; j++) {
    src[j] = gated && j % 2 == 1 ? &second : &first;
    n[j] = gated ? n0 + j / 2 : n0 + j;
  }
  quant_dot_tile<MR, NR>(p.x + m0 * p.K, src, n, p.K, out);
}

// Output columns [n0, n0 + NR / rows_per_out) for x rows [m0, m0 + MR). `prefetch_next`: this is the last pass
// over these weight rows (the earlier ones left them in L1), so it prefetches the next tile's rows instead, and
// their streaming overlaps this pass's arithmetic (~10% at 8 rows).
template <int MR, int NR, class T> inline void tile(const Product<T> &p, int64_t m0, int64_t n0, bool prefetch_next = false) {
  const bool gated = p.act >= 0;
  float out[MR][NR];
  if (p.wq != nullptr) {
    if (p.wq->bits == 8) quant_products<MR, NR, Int8Rows>(p, m0, n0, out);
    else quant_products<MR, NR, Int4Rows>(p, m0, n0, out);
  } else {
    const int64_t step = gated ? NR / 2 : NR, next = n0 + step + step <= p.N ? n0 + step : n0;
    const T *rows[NR], *ahead[NR];
    for (int j = 0; j < NR; j++) {
      const T *base = gated ? (j % 2 == 0 ? p.w : p.up) : p.w;
      const int64_t n = gated ? n0 + j / 2 : n0 + j, n_next = gated ? next + j / 2 : next + j;
      rows[j] = base + n * p.K;
      ahead[j] = prefetch_next ? base + n_next * p.K : rows[j] + kPrefetch;
    }
    dot_tile<MR, NR>(p.x + m0 * p.K, rows, ahead, p.K, out);
  }
  for (int i = 0; i < MR; i++) {
    T *y = p.y + (m0 + i) * p.N;
    if (gated) {  // the activation runs vectorised once a range of columns is done (columns())
      for (int j = 0; j < NR; j += 2) {
        p.gates[(m0 + i) * p.N + n0 + j / 2] = out[i][j];
        p.ups[(m0 + i) * p.N + n0 + j / 2] = out[i][j + 1];
      }
    } else {
      for (int j = 0; j < NR; j++) {
        float bias = p.bias != nullptr ? to_float(p.bias[n0 + j]) : 0.0f;
        y[n0 + j] = static_cast<T>(out[i][j] + bias);
      }
    }
  }
}

// All x rows against output columns [n0, n1), in tiles of NR weight rows (the last ones one at a time).
template <int MR, int NR, class T> void columns(const Product<T> &p, int64_t n0, int64_t n1) {
  const int per_out = p.act >= 0 ? 2 : 1;
  constexpr int kSingle = 1;
  int64_t n = n0;
  for (; n + NR / per_out <= n1; n += NR / per_out) {
    int64_t m = 0;
    for (; m + MR <= p.M; m += MR) tile<MR, NR>(p, m, n, m > 0 && m + MR == p.M);
    for (; m < p.M; m++) tile<1, NR>(p, m, n);
  }
  for (; n < n1; n++)
    for (int64_t m = 0; m < p.M; m++) {
      if (per_out == 2) tile<1, 2>(p, m, n);
      else tile<1, kSingle>(p, m, n);
    }
  if (per_out == 2)
    for (int64_t m = 0; m < p.M; m++)
      activate_times(p.gates + m * p.N + n0, p.ups + m * p.N + n0, p.y + m * p.N + n0, n1 - n0, p.act);
}

// Few x rows: many weight rows per tile (more streams in flight); more rows: a square-ish 4 x 4 tile.
inline int64_t tile_rows(int64_t M) { return M == 1 ? 8 : 4; }

template <class T> int64_t outputs_per_tile(const Product<T> &p) { return tile_rows(p.M) / (p.act >= 0 ? 2 : 1); }

template <class T> void columns_of(const Product<T> &p, int64_t n0, int64_t n1) {
  if (p.M == 1) columns<1, 8>(p, n0, n1);
  else if (p.M == 2) columns<2, 4>(p, n0, n1);
  else if (p.M == 3) columns<3, 4>(p, n0, n1);
  else columns<4, 4>(p, n0, n1);
}

template <class T> void gemm_products(const Product<T> *products, int count);  // gemm.h
constexpr int64_t kFewRows = 8;  // up to this many rows the tiles above; more: gemm.h's blocked product

// Products of the same x rows (q, k and v; or one alone) as one parallel loop over all their tiles.
template <class T> void run_products(const Product<T> *products, int count) {
  if (products[0].M > kFewRows) return gemm_products(products, count);
  int64_t first_tile[4] = {0}, tiles = 0;
  for (int i = 0; i < count; i++) {
    first_tile[i] = tiles;
    tiles += (products[i].N + outputs_per_tile(products[i]) - 1) / outputs_per_tile(products[i]);
  }
  const Product<T> &p0 = products[0];
  const int64_t grain = 1 + 32768 / (tile_rows(p0.M) * p0.K * (p0.M < 4 ? p0.M : 4));
  parallel_for(tiles, grain, [&](int64_t begin, int64_t end) {
    for (int i = 0; i < count; i++) {
      const Product<T> &p = products[i];
      int64_t last_tile = i + 1 < count ? first_tile[i + 1] : tiles;
      int64_t b = begin > first_tile[i] ? begin : first_tile[i], e = end < last_tile ? end : last_tile;
      if (b >= e) continue;
      int64_t step = outputs_per_tile(p), n1 = (e - first_tile[i]) * step;
      columns_of(p, (b - first_tile[i]) * step, n1 < p.N ? n1 : p.N);
    }
  });
}

template <class T> void run_product(const Product<T> &p) { run_products(&p, 1); }

// x in float32: used as is, or converted once into a scratch buffer.
template <class T> struct FloatRows {
  std::unique_ptr<float[]> scratch;
  const float *data;
  FloatRows(const T *x, int64_t n) {
    if constexpr (std::is_same_v<T, float>) {
      data = x;
    } else {
      scratch.reset(new float[n]);
      for (int64_t i = 0; i < n; i++) scratch[i] = to_float(x[i]);
      data = scratch.get();
    }
  }
};

}  // namespace mk

#include "gemm.h"
