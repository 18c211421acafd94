// Moving one sequence's keys and values between static caches.
#include "common.h"

using mk::Arg;

namespace {

template <class T> void copy_row(const Arg &dst, const Arg &src, int64_t row, int64_t length) {
  const int64_t heads = dst.dim(1), dst_len = dst.dim(2), src_len = src.dim(2), dim = dst.dim(3);
  for (int64_t g = 0; g < heads; g++)
    std::memcpy(dst.as<T>() + ((row * heads + g) * dst_len) * dim, src.as<T>() + (g * src_len) * dim,
                sizeof(T) * length * dim);
}

}  // namespace

// CopyCacheRow(where int32 [2] = (destination row, length), then (destination, source) per buffer) -> int32 [1]
// Copies slots [0, length) of row 0 of each source cache [1, KV, L', D] into the destination row of its
// destination cache [B, KV, L, D], in place: a prompt prefilled alone joins the rows of a continuous batch.
MK_KERNEL CopyCacheRow(MK_ARGS) {
  if (nparam < 4 || (nparam - 2) % 2 != 0) return mk::kBadArity;
  const Arg where = MK_ARG(0);
  if (where.numel() != 2) return mk::kBadShape;
  const int64_t row = where.as<int32_t>()[0], length = where.as<int32_t>()[1];
  for (int i = 1; i + 1 < nparam - 1; i += 2) {
    const Arg dst = MK_ARG(i), src = MK_ARG(i + 1);
    if (dst.ndim != 4 || src.ndim != 4 || src.dim(0) != 1 || dst.dim(1) != src.dim(1) || dst.dim(3) != src.dim(3) ||
        row < 0 || row >= dst.dim(0) || length < 0 || length > dst.dim(2) || length > src.dim(2) || dst.dtype != src.dtype)
      return mk::kBadShape;
    if (dst.dtype == mk::DType::F32) copy_row<float>(dst, src, row, length);
    else if (dst.dtype == mk::DType::F16) copy_row<_Float16>(dst, src, row, length);
    else return mk::kBadDtype;
  }
  return mk::kOk;
}
