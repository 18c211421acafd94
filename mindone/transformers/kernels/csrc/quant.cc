// Linear layers over quantized weights (quantization/formats.py). The dot-product tiles of matmul.h, with each
// 16-value chunk of a weight row dequantized in registers (scale * q, then + offset, as the reference rounds it)
// right before it is multiplied: the outputs are bit for bit those of the float kernel on the dequantized
// weights, while only the quantized bytes stream from memory (int8: a quarter of float32, 4-bit: an eighth, plus
// the scales).
#include "matmul.h"

namespace mk {
namespace {

constexpr int kGroup4 = 32;
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

struct Int8Rows {
  const int8_t *values;
  const float *scales;
  int64_t K, group_shift;  // groups of 2^group_shift values
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
  const uint8_t *row(int64_t n) const { return packed + n * (K / 2); }
  vf chunk(int64_t n, const uint8_t *bytes, int64_t k) const {
    const int64_t g = k / kGroup4, at = n * (K / kGroup4) + g;
    vu8 b;
    std::memcpy(&b, bytes + g * (kGroup4 / 2), sizeof b);
    vu8 q = (k % kGroup4) == 0 ? (b & 15) : (b >> 4);
    return rounded(to_floats(q) * scales[at]) + offsets[at];
  }
};

// out[i][j] = dot(x row i, dequantized weight row n0 + j) for MR x rows (stride K) and NR weight rows.
template <int MR, int NR, class Rows>
inline void quant_tile(const float *x, const Rows &rows, int64_t n0, int64_t K, float (&out)[MR][NR]) {
  vf acc[MR][NR];
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) acc[i][j] = vf{};
  decltype(rows.row(0)) w[NR];
  for (int j = 0; j < NR; j++) w[j] = rows.row(n0 + j);
  for (int64_t k = 0; k < K; k += kLanes) {
    vf wv[NR];
    for (int j = 0; j < NR; j++) wv[j] = rows.chunk(n0 + j, w[j], k);
    for (int i = 0; i < MR; i++) {
      vf xv = loadv(x + i * K + k);
      for (int j = 0; j < NR; j++) acc[i][j] += xv * wv[j];
    }
  }
  for (int i = 0; i < MR; i++)
    for (int j = 0; j < NR; j++) out[i][j] = hsum(acc[i][j]);
}

// Output columns [n0, n1) for all x rows: tiles of MR rows by NR weight rows, the rest one by one.
template <int MR, int NR, class T, class Rows>
void quant_columns(const float *x, int64_t M, int64_t K, const Rows &rows, T *y, int64_t N, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) {
    int64_t m = 0;
    for (; m + MR <= M; m += MR) {
      float out[MR][NR];
      quant_tile<MR, NR>(x + m * K, rows, n, K, out);
      for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) y[(m + i) * N + n + j] = static_cast<T>(out[i][j]);
    }
    for (; m < M; m++) {
      float out[1][NR];
      quant_tile<1, NR>(x + m * K, rows, n, K, out);
      for (int j = 0; j < NR; j++) y[m * N + n + j] = static_cast<T>(out[0][j]);
    }
  }
  for (; n < n1; n++)
    for (int64_t m = 0; m < M; m++) {
      float out[1][1];
      quant_tile<1, 1>(x + m * K, rows, n, K, out);
      y[m * N + n] = static_cast<T>(out[0][0]);
    }
}

template <class T, class Rows> void quant_product(const float *x, int64_t M, int64_t K, const Rows &rows, T *y, int64_t N) {
  constexpr int64_t kTile = 8;
  const int64_t tiles = (N + kTile - 1) / kTile;
  parallel_for(tiles, 1 + 32768 / (kTile * K * (M < 4 ? M : 4)), [&](int64_t begin, int64_t end) {
    int64_t n0 = begin * kTile, n1 = end * kTile < N ? end * kTile : N;
    if (M == 1) quant_columns<1, 8>(x, M, K, rows, y, N, n0, n1);
    else quant_columns<4, 4>(x, M, K, rows, y, N, n0, n1);
  });
}

template <class T> int run_int8(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg x = MK_ARG(0), values = MK_ARG(1), scales = MK_ARG(2), y = MK_ARG(3);
  const int64_t K = x.dim(-1), N = values.dim(0), groups = scales.dim(-1);
  const int64_t group = groups > 0 && K % groups == 0 ? K / groups : 0;
  if (values.dim(1) != K || group < kLanes || (group & (group - 1)) != 0) return kBadShape;  // 16, 32, 64, ...
  FloatRows<T> rows(x.as<T>(), x.numel());
  quant_product(rows.data, x.numel() / K, K, Int8Rows{values.as<int8_t>(), scales.as<float>(), K, __builtin_ctzll(group)},
                y.as<T>(), N);
  return kOk;
}

template <class T> int run_int4(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg x = MK_ARG(0), packed = MK_ARG(1), scales = MK_ARG(2), offsets = MK_ARG(3), y = MK_ARG(4);
  const int64_t K = x.dim(-1), N = packed.dim(0);
  if (packed.dim(1) * 2 != K || K % kGroup4 != 0 || scales.dim(-1) != K / kGroup4 || offsets.dim(-1) != K / kGroup4)
    return kBadShape;
  FloatRows<T> rows(x.as<T>(), x.numel());
  quant_product(rows.data, x.numel() / K, K, Int4Rows{packed.as<uint8_t>(), scales.as<float>(), offsets.as<float>(), K},
                y.as<T>(), N);
  return kOk;
}

}  // namespace
}  // namespace mk

using namespace mk;

// QLinear8(x[..., K], values int8 [N, K], scales float32 [N, K / group]) -> x @ (scales * values)^T
MK_KERNEL QLinear8(MK_ARGS) {
  if (nparam != 4) return kBadArity;
  MK_DISPATCH(dtypes[0], run_int8, (params, ndims, shapes, dtypes));
}

// QLinear4(x[..., K], packed uint8 [N, K / 2], scales, offsets float32 [N, K / 32]) -> x @ (scales * q + offsets)^T
MK_KERNEL QLinear4(MK_ARGS) {
  if (nparam != 5) return kBadArity;
  MK_DISPATCH(dtypes[0], run_int4, (params, ndims, shapes, dtypes));
}
