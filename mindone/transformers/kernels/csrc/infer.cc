// Output shapes and dtypes, computed in C++ when MindSpore compiles a graph (`<Kernel>InferShape` /
// `<Kernel>InferType`, found by name). Python-side infer functions would not do: graphs that MindSpore finishes
// compiling at run time (a whole-model forward in GRAPH_MODE) can only call C++ infer functions.
// Every kernel's outputs have the first input's dtype. std::vector has the same layout under both libstdc++ ABIs.
#include <cstdint>
#include <vector>

namespace {
enum TypeId : int {};  // MindSpore's type ids: only passed through
struct AotExtra;       // unused

using Shape = std::vector<int64_t>;
using Shapes = std::vector<Shape>;

Shape shape_of(int *ndims, int64_t **shapes, int i) { return Shape(shapes[i], shapes[i] + ndims[i]); }

Shape with_last(Shape shape, int64_t last) {
  shape.back() = last;
  return shape;
}
}  // namespace

#define MK_INFER __attribute__((visibility("default")))
// Two outputs shaped like input 0 (a residual stream and a result of the same width).
#define MK_TWO_LIKE_INPUT0(kernel)                                                        \
  extern "C" MK_INFER Shapes kernel##InferShape(int *ndims, int64_t **shapes, AotExtra *) { \
    return Shapes(2, shape_of(ndims, shapes, 0));                                         \
  }
// x [..., K] against the weight rows of input 1 ([N, ...]) -> [..., N]
#define MK_ROWS_OF_INPUT1(kernel)                                                        \
  extern "C" MK_INFER Shape kernel##InferShape(int *ndims, int64_t **shapes, AotExtra *) { \
    return with_last(shape_of(ndims, shapes, 0), shapes[1][0]);                          \
  }
#define MK_SAME_TYPE(kernel) \
  extern "C" MK_INFER TypeId kernel##InferType(std::vector<TypeId> types, AotExtra *) { return types[0]; }
#define MK_SAME_TYPES(kernel, outputs)                                                     \
  extern "C" MK_INFER std::vector<TypeId> kernel##InferType(std::vector<TypeId> types, AotExtra *) { \
    return std::vector<TypeId>(outputs, types[0]);                                         \
  }

extern "C" {
MK_INFER Shape RmsNormInferShape(int *ndims, int64_t **shapes, AotExtra *) { return shape_of(ndims, shapes, 0); }
MK_INFER Shape LayerNormInferShape(int *ndims, int64_t **shapes, AotExtra *) { return shape_of(ndims, shapes, 0); }
// q [B, S, H * D] -> the same
MK_INFER Shape CachedAttentionInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return shape_of(ndims, shapes, 0);
}
// packed [B, S, (H + 2 KV) * D] with the key cache (input 7) [B, KV, L, D] -> [B, S, H * D]
MK_INFER Shape CachedAttentionPackedInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return with_last(shape_of(ndims, shapes, 0), shapes[0][2] - 2 * shapes[7][1] * shapes[7][3]);
}
// q, k, v: x [..., K] against each weight
MK_INFER Shapes QkvInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  Shape x = shape_of(ndims, shapes, 0);
  return Shapes{with_last(x, shapes[1][0]), with_last(x, shapes[2][0]), with_last(x, shapes[3][0])};
}
MK_INFER Shapes QkvBiasInferShape(int *ndims, int64_t **shapes, AotExtra *extra) {
  return QkvInferShape(ndims, shapes, extra);
}
// down [K2, I] is input 3 (input 2 when gate and up are packed)
MK_INFER Shape MlpInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return with_last(shape_of(ndims, shapes, 0), shapes[3][0]);
}
MK_INFER Shape MlpPackedInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return with_last(shape_of(ndims, shapes, 0), shapes[2][0]);
}
// (the residual stream: hidden's shape, [B, S, wo rows]); wo is input 7
MK_INFER Shapes AttentionBlockInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  Shape hidden = shape_of(ndims, shapes, 0);
  return Shapes{hidden, with_last(hidden, shapes[7][0])};
}
// (x's shape, [..., down rows]); down is input 6 (5 packed)
MK_INFER Shapes MlpBlockInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  Shape x = shape_of(ndims, shapes, 0);
  return Shapes{x, with_last(x, shapes[6][0])};
}
MK_INFER Shapes MlpBlockPackedInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  Shape x = shape_of(ndims, shapes, 0);
  return Shapes{x, with_last(x, shapes[5][0])};
}
MK_INFER Shapes RopeQkInferShape(int *ndims, int64_t **shapes, AotExtra *) {
  return Shapes{shape_of(ndims, shapes, 0), shape_of(ndims, shapes, 1)};
}
MK_INFER Shape AttentionInferShape(int *ndims, int64_t **shapes, AotExtra *) { return shape_of(ndims, shapes, 0); }
}

MK_TWO_LIKE_INPUT0(AddRmsNorm)
MK_TWO_LIKE_INPUT0(AddLayerNorm)
MK_TWO_LIKE_INPUT0(DecoderLayer)  // (residual stream, MLP output)
MK_TWO_LIKE_INPUT0(DecoderLayerPacked)
MK_TWO_LIKE_INPUT0(WeightsLayer)
MK_TWO_LIKE_INPUT0(QuantWeightsLayer)
MK_TWO_LIKE_INPUT0(DecoderStack)
MK_ROWS_OF_INPUT1(Linear)
MK_ROWS_OF_INPUT1(LinearBias)
MK_ROWS_OF_INPUT1(QLinear8)
MK_ROWS_OF_INPUT1(QLinear4)

MK_SAME_TYPE(RmsNorm)
MK_SAME_TYPE(LayerNorm)
MK_SAME_TYPES(AddRmsNorm, 2)
MK_SAME_TYPES(AddLayerNorm, 2)
MK_SAME_TYPE(Linear)
MK_SAME_TYPE(LinearBias)
MK_SAME_TYPE(CachedAttention)
MK_SAME_TYPE(CachedAttentionPacked)
MK_SAME_TYPES(RopeQk, 2)
MK_SAME_TYPES(Qkv, 3)
MK_SAME_TYPES(QkvBias, 3)
MK_SAME_TYPE(Mlp)
MK_SAME_TYPE(MlpPacked)
MK_SAME_TYPE(Attention)
MK_SAME_TYPES(AttentionBlock, 2)
MK_SAME_TYPES(MlpBlock, 2)
MK_SAME_TYPES(MlpBlockPacked, 2)
MK_SAME_TYPES(DecoderLayer, 2)
MK_SAME_TYPES(DecoderLayerPacked, 2)
MK_SAME_TYPES(WeightsLayer, 2)
MK_SAME_TYPES(QuantWeightsLayer, 2)
MK_SAME_TYPES(DecoderStack, 2)
MK_SAME_TYPE(QLinear8)
MK_SAME_TYPE(QLinear4)
