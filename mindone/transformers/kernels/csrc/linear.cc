// Linear layers for decoding rows (matmul.h): one projection, q, k and v in one pass over x, and the whole
// gated MLP, down(act(x @ gate^T) * (x @ up^T)).
#include <vector>

#include "matmul.h"

namespace mk {
namespace {

template <class T> int run_linear(void **params, int *ndims, int64_t **shapes, const char **dtypes, bool has_bias) {
  Arg x = MK_ARG(0), w = MK_ARG(1);
  const T *bias = has_bias ? MK_ARG(2).as<T>() : nullptr;
  Arg y = MK_ARG(has_bias ? 3 : 2);
  int64_t K = x.dim(-1), N = w.dim(0);
  FloatRows<T> rows(x.as<T>(), x.numel());
  run_product(Product<T>{rows.data, w.as<T>(), nullptr, bias, y.as<T>(), x.numel() / K, N, K, -1});
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
    products[i] = Product<T>{rows.data, w.as<T>(), nullptr, bias, y.as<T>(), M, w.dim(0), K, -1};
  }
  run_products(products, 3);
  return kOk;
}

// The whole gated MLP: down(act(x gate^T) * (x up^T)); the hidden rows stay in a scratch buffer, rounded to T
// as the composed ops round them.
template <class T> int run_mlp(void **params, int *ndims, int64_t **shapes, const char **dtypes, bool packed) {
  Arg x = MK_ARG(0), gate = MK_ARG(1);
  int i = 2;
  const T *up = packed ? nullptr : MK_ARG(i++).as<T>();
  Arg down = MK_ARG(i++);
  int act = static_cast<int>(MK_ARG(i++).as<float>()[0]);
  Arg y = MK_ARG(i);
  const int64_t K = x.dim(-1), M = x.numel() / K, I = down.dim(1);
  if (packed) up = gate.as<T>() + I * K;
  std::vector<T> hidden(M * I);
  FloatRows<T> rows(x.as<T>(), x.numel());
  run_product(Product<T>{rows.data, gate.as<T>(), up, nullptr, hidden.data(), M, I, K, act});
  FloatRows<T> hidden_rows(hidden.data(), M * I);
  run_product(Product<T>{hidden_rows.data, down.as<T>(), nullptr, nullptr, y.as<T>(), M, down.dim(0), I, -1});
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
