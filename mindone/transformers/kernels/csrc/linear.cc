// Linear layers for decoding rows (matmul.h): one projection, q, k and v in one pass over x, and the whole
// gated MLP, down(act(x @ gate^T) * (x @ up^T)).
#include <vector>

#include "matmul.h"
#include "norm.h"

namespace mk {
namespace {

template <class T> int run_linear(void **params, int *ndims, int64_t **shapes, const char **dtypes, bool has_bias) {
  Arg x = MK_ARG(0), w = MK_ARG(1);
  const T *bias = has_bias ? MK_ARG(2).as<T>() : nullptr;
  Arg y = MK_ARG(has_bias ? 3 : 2);
  int64_t K = x.dim(-1), N = w.dim(0);
  FloatRows<T> rows(x.as<T>(), x.numel());
  run_product(plain_product<T>(rows.data, WeightRef<T>::of(w), bias, y.as<T>(), x.numel() / K, N, K));
  return kOk;
}

// q, k and v projections of the same rows in one pass: (x, wq, wk, wv[, bq, bk, bv]) -> (q, k, v)
template <class T> int run_qkv(void **params, int *ndims, int64_t **shapes, const char **dtypes, bool has_bias) {
  Arg x = MK_ARG(0);
  const int64_t K = x.dim(-1), M = x.numel() / K, outputs = has_bias ? 7 : 4;
  FloatRows<T> rows(x.as<T>(), x.numel());
  Product<T> products[3];
  for (int i = 0; i < 3; i++) {
    Arg w = MK_ARG(1 + i), y = MK_ARG(outputs + i);
    const T *bias = has_bias ? MK_ARG(4 + i).as<T>() : nullptr;
    products[i] = plain_product<T>(rows.data, WeightRef<T>::of(w), bias, y.as<T>(), M, w.dim(0), K);
  }
  run_products(products, 3);
  return kOk;
}

// The whole gated MLP over rows already in float32: down(act(x gate^T) * (x up^T)) into y. The hidden rows stay in
// a scratch buffer, rounded to T as the composed ops round them.
template <class T> void gated_mlp(const float *x, int64_t M, int64_t K, WeightRef<T> gate, WeightRef<T> up, const Arg &down,
                                  int act, T *y) {
  const int64_t I = down.dim(1);
  std::unique_ptr<float[]> fallback;
  T *hidden = reinterpret_cast<T *>(reused_scratch(1, (M * I * static_cast<int64_t>(sizeof(T)) + 3) / 4, fallback));
  std::vector<float> gates(M <= kFewRows ? M * I : 0), ups(gates.size());  // scratch of the few-row tiles only
  run_product(gated_product<T>(x, gate, up, hidden, M, I, K, act, gates.data(), ups.data()));
  FloatRows<T> hidden_rows(hidden, M * I);
  run_product(plain_product<T>(hidden_rows.data, WeightRef<T>::of(down), nullptr, y, M, down.dim(0), I));
}

// gate and up of (gate, up) or, packed (Phi-3's gate_up_proj, float only), of gate's rows then up's.
template <class T> void gate_and_up(const Arg &gate, const Arg *up, const Arg &down, WeightRef<T> &g, WeightRef<T> &u) {
  g = WeightRef<T>::of(gate);
  u = up != nullptr ? WeightRef<T>::of(*up) : WeightRef<T>{gate.as<T>() + down.dim(1) * gate.dim(-1), nullptr};
}

// (x, gate, up, down, act) or, packed, (x, gate_up, down, act) -> down(act(x gate^T) * (x up^T))
template <class T> int run_mlp(void **params, int *ndims, int64_t **shapes, const char **dtypes, bool packed) {
  Arg x = MK_ARG(0), gate = MK_ARG(1), up = MK_ARG(2);
  int i = packed ? 2 : 3;
  Arg down = MK_ARG(i++);
  int act = static_cast<int>(MK_ARG(i++).as<float>()[0]);
  const int64_t K = x.dim(-1), M = x.numel() / K;
  WeightRef<T> g, u;
  gate_and_up(gate, packed ? nullptr : &up, down, g, u);
  FloatRows<T> rows(x.as<T>(), x.numel());
  gated_mlp(rows.data, M, K, g, u, down, act, MK_ARG(i).as<T>());
  return kOk;
}

// The post-attention residual add and norm, then the MLP: (x, residual, norm_w, norm_cfg, gate[, up], down, act)
// -> (x + residual, mlp(rms_norm(x + residual)))
template <class T> int run_mlp_block(void **params, int *ndims, int64_t **shapes, const char **dtypes, bool packed) {
  Arg x = MK_ARG(0), gate = MK_ARG(4), up = MK_ARG(5);
  int i = packed ? 5 : 6;
  Arg down = MK_ARG(i++);
  int act = static_cast<int>(MK_ARG(i++).as<float>()[0]);
  const int64_t K = x.dim(-1), M = x.numel() / K;
  WeightRef<T> g, u;
  gate_and_up(gate, packed ? nullptr : &up, down, g, u);
  std::vector<T> normed(M * K);
  add_and_norm(x.as<T>(), MK_ARG(1).as<T>(), MK_ARG(2).as<T>(), norm_config(MK_ARG(3)), MK_ARG(i).as<T>(),
               normed.data(), M, K);
  FloatRows<T> rows(normed.data(), normed.size());
  gated_mlp(rows.data, M, K, g, u, down, act, MK_ARG(i + 1).as<T>());
  return kOk;
}

}  // namespace
}  // namespace mk

using namespace mk;

// Linear(x[..., K], w[N, K]) -> x @ w^T
MK_KERNEL Linear(MK_ARGS) {
  if (nparam != 3) return kBadArity;
  MK_DISPATCH(dtypes[0], run_linear, (params, ndims, shapes, dtypes, false));
}

// LinearBias(x[..., K], w[N, K], b[N]) -> x @ w^T + b
MK_KERNEL LinearBias(MK_ARGS) {
  if (nparam != 4) return kBadArity;
  MK_DISPATCH(dtypes[0], run_linear, (params, ndims, shapes, dtypes, true));
}

// Qkv(x[..., K], wq[Nq, K], wk[Nk, K], wv[Nv, K]) -> (x @ wq^T, x @ wk^T, x @ wv^T)
MK_KERNEL Qkv(MK_ARGS) {
  if (nparam != 7) return kBadArity;
  MK_DISPATCH(dtypes[0], run_qkv, (params, ndims, shapes, dtypes, false));
}

// QkvBias(x, wq, wk, wv, bq, bk, bv) -> (x @ wq^T + bq, x @ wk^T + bk, x @ wv^T + bv)
MK_KERNEL QkvBias(MK_ARGS) {
  if (nparam != 10) return kBadArity;
  MK_DISPATCH(dtypes[0], run_qkv, (params, ndims, shapes, dtypes, true));
}

// Mlp(x[..., K], gate[I, K], up[I, K], down[K2, I], act[1]) -> down(act(x @ gate^T) * (x @ up^T))
MK_KERNEL Mlp(MK_ARGS) {
  if (nparam != 6) return kBadArity;
  MK_DISPATCH(dtypes[0], run_mlp, (params, ndims, shapes, dtypes, false));
}

// MlpPacked(x, gate_up[2I, K], down[K2, I], act[1]) -> the same with gate and up stacked in one weight
MK_KERNEL MlpPacked(MK_ARGS) {
  if (nparam != 5) return kBadArity;
  MK_DISPATCH(dtypes[0], run_mlp, (params, ndims, shapes, dtypes, true));
}

// MlpBlock(x, residual, norm_w, norm_cfg, gate, up, down, act) -> (x + residual, Mlp(rms_norm(x + residual)))
MK_KERNEL MlpBlock(MK_ARGS) {
  if (nparam != 10) return kBadArity;
  MK_DISPATCH(dtypes[0], run_mlp_block, (params, ndims, shapes, dtypes, false));
}

// MlpBlockPacked(x, residual, norm_w, norm_cfg, gate_up, down, act) -> the same with gate and up stacked
MK_KERNEL MlpBlockPacked(MK_ARGS) {
  if (nparam != 9) return kBadArity;
  MK_DISPATCH(dtypes[0], run_mlp_block, (params, ndims, shapes, dtypes, true));
}
