// Linear layers over quantized weights (quantization/formats.py): matmul.h's products with each 16-value chunk of
// a weight row dequantized in registers (scale * q, then + offset, as the reference rounds it) right before it is
// multiplied. The outputs are bit for bit those of the float kernel on the dequantized weights, while only the
// quantized bytes stream from memory (int8: a quarter of float32, 4-bit: an eighth, plus the scales).
#include "matmul.h"

namespace mk {
namespace {

template <class T> int run_int8(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg x = MK_ARG(0), values = MK_ARG(1), scales = MK_ARG(2), y = MK_ARG(3);
  const int64_t K = x.dim(-1), N = values.dim(0), groups = scales.dim(-1);
  const int64_t group = groups > 0 && K % groups == 0 ? K / groups : 0;
  if (values.dim(1) != K || group < kLanes || (group & (group - 1)) != 0) return kBadShape;  // 16, 32, 64, ...
  FloatRows<T> rows(x.as<T>(), x.numel());
  const QuantWeight w{values.data, scales.as<float>(), nullptr, 8, __builtin_ctzll(group)};
  run_product(plain_product<T>(rows.data, WeightRef<T>{nullptr, &w}, nullptr, y.as<T>(), x.numel() / K, N, K));
  return kOk;
}

template <class T> int run_int4(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg x = MK_ARG(0), packed = MK_ARG(1), scales = MK_ARG(2), offsets = MK_ARG(3), y = MK_ARG(4);
  const int64_t K = x.dim(-1), N = packed.dim(0);
  if (packed.dim(1) * 2 != K || K % kGroup4 != 0 || scales.dim(-1) != K / kGroup4 || offsets.dim(-1) != K / kGroup4)
    return kBadShape;
  FloatRows<T> rows(x.as<T>(), x.numel());
  const QuantWeight w{packed.data, scales.as<float>(), offsets.as<float>(), 4, 5};
  run_product(plain_product<T>(rows.data, WeightRef<T>{nullptr, &w}, nullptr, y.as<T>(), x.numel() / K, N, K));
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
