// A whole pre-norm decoder layer for decoding rows in one launch: the attention block (attention.cc), then the
// MLP block (linear.cc) on its outputs. Inside a compiled graph each launch after a kernel that streamed megabytes
// of weights costs tens of microseconds of runtime work, so a layer as one kernel instead of two saves one of them.
#include <vector>

#include "matmul.h"

extern "C" int AttentionBlock(MK_ARGS);
extern "C" int MlpBlock(MK_ARGS);
extern "C" int MlpBlockPacked(MK_ARGS);

namespace {

constexpr int kAttentionInputs = 21;

int run_layer(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, bool packed) {
  const int mlp_inputs = packed ? 5 : 6;  // norm_w, norm_cfg, gate[_up], [up,] down, act
  if (nparam != kAttentionInputs + mlp_inputs + 2) return mk::kBadArity;
  mk::Arg hidden = MK_ARG(0);
  if (shapes[7][0] != hidden.dim(-1)) return mk::kBadShape;  // o_proj must map back to the hidden size
  const int64_t size = mk::dtype_of(dtypes[0]) == mk::DType::F16 ? 2 : 4;
  std::vector<float> scratch((2 * hidden.numel() * size + 3) / 4);
  void *stream = scratch.data(), *attended = reinterpret_cast<char *>(scratch.data()) + hidden.numel() * size;

  // The attention block: its inputs, then its two outputs (the residual stream and the attention) in scratch.
  void *a_params[kAttentionInputs + 2];
  int a_ndims[kAttentionInputs + 2];
  int64_t *a_shapes[kAttentionInputs + 2];
  const char *a_dtypes[kAttentionInputs + 2];
  for (int i = 0; i < kAttentionInputs; i++)
    a_params[i] = params[i], a_ndims[i] = ndims[i], a_shapes[i] = shapes[i], a_dtypes[i] = dtypes[i];
  void *a_outputs[2] = {stream, attended};
  for (int i = 0; i < 2; i++) {
    int j = kAttentionInputs + i;
    a_params[j] = a_outputs[i], a_ndims[j] = ndims[0], a_shapes[j] = shapes[0], a_dtypes[j] = dtypes[0];
  }
  int status = AttentionBlock(kAttentionInputs + 2, a_params, a_ndims, a_shapes, a_dtypes, nullptr, nullptr);
  if (status != mk::kOk) return status;

  // The MLP block over (attention, residual stream), writing the layer's two outputs.
  const int count = 2 + mlp_inputs + 2;
  std::vector<void *> m_params(count);
  std::vector<int> m_ndims(count);
  std::vector<int64_t *> m_shapes(count);
  std::vector<const char *> m_dtypes(count);
  void *m_inputs[2] = {attended, stream};
  for (int i = 0; i < 2; i++) m_params[i] = m_inputs[i], m_ndims[i] = ndims[0], m_shapes[i] = shapes[0], m_dtypes[i] = dtypes[0];
  for (int i = 0; i < mlp_inputs + 2; i++) {
    int j = kAttentionInputs + i;
    m_params[2 + i] = params[j], m_ndims[2 + i] = ndims[j], m_shapes[2 + i] = shapes[j], m_dtypes[2 + i] = dtypes[j];
  }
  auto mlp = packed ? MlpBlockPacked : MlpBlock;
  return mlp(count, m_params.data(), m_ndims.data(), m_shapes.data(), m_dtypes.data(), nullptr, nullptr);
}

// The layer's weights as slices of one buffer, in PackedWeight order (layers.PackedWeights.ORDER).
enum PackedWeight { kInNorm, kQ, kK, kV, kO, kBq, kBk, kBv, kBo, kQNorm, kKNorm, kPostNorm, kGate, kUp, kDown, kWeights };
constexpr int kPackedInputs = 14;

// Each weight as a DecoderLayer argument: a float slice of the buffer, a QuantWeight over slices of it, or a
// 1-element placeholder for a weight the layer does not have.
struct LayerWeights {
  void *data[kWeights];
  int ndims[kWeights];
  int64_t shapes[kWeights][2];
  const char *dtypes[kWeights];
  bool present[kWeights];
  mk::QuantWeight quant[kWeights];
};

alignas(8) static const char kPlaceholder[8] = {};

void absent(LayerWeights &lw, int w) {
  lw.data[w] = const_cast<char *>(kPlaceholder), lw.ndims[w] = 1, lw.shapes[w][0] = 1, lw.present[w] = false;
}

// Float buffer: layout (offset, rows, cols) per weight in elements; offset -1 marks a weight the layer does not
// have, cols 0 a vector.
int float_layout(const mk::Arg &weights, const mk::Arg &layout, const char *dtype, int64_t size, LayerWeights &lw) {
  if (layout.numel() != 3 * kWeights) return mk::kBadShape;
  const int64_t *entries = layout.as<int64_t>();
  for (int w = 0; w < kWeights; w++) {
    const int64_t offset = entries[3 * w], rows = entries[3 * w + 1], cols = entries[3 * w + 2];
    if (offset < 0) {
      absent(lw, w);
      continue;
    }
    if (offset + rows * (cols > 0 ? cols : 1) > weights.numel()) return mk::kBadShape;
    lw.data[w] = static_cast<char *>(weights.data) + offset * size, lw.present[w] = true, lw.dtypes[w] = dtype;
    lw.ndims[w] = cols > 0 ? 2 : 1, lw.shapes[w][0] = rows, lw.shapes[w][1] = cols;
  }
  return mk::kOk;
}

// Byte buffer: layout (kind, data, scales, offsets, rows, cols, group_shift) per weight, offsets in bytes; kind -1
// absent, 0 float (of the activations' dtype), 8 int8 groups, 4 4-bit groups.
constexpr int kQuantEntry = 7;

int quant_layout(const mk::Arg &weights, const mk::Arg &layout, const char *dtype, int64_t size, LayerWeights &lw) {
  if (layout.numel() != kQuantEntry * kWeights) return mk::kBadShape;
  const int64_t *entries = layout.as<int64_t>();
  char *base = static_cast<char *>(weights.data);
  for (int w = 0; w < kWeights; w++) {
    const int64_t *e = entries + kQuantEntry * w;
    const int64_t kind = e[0], rows = e[4], cols = e[5];
    if (kind < 0) {
      absent(lw, w);
      continue;
    }
    const int64_t count = rows * (cols > 0 ? cols : 1);
    const int64_t bytes = kind == 0 ? count * size : kind == 8 ? count : count / 2;
    if (e[1] < 0 || e[1] + bytes > weights.numel() || e[2] < 0 || e[3] < 0 || e[2] >= weights.numel() ||
        e[3] >= weights.numel())
      return mk::kBadShape;
    lw.present[w] = true, lw.ndims[w] = cols > 0 ? 2 : 1, lw.shapes[w][0] = rows, lw.shapes[w][1] = cols;
    if (kind == 0) {
      lw.data[w] = base + e[1], lw.dtypes[w] = dtype;
      continue;
    }
    if ((kind != 8 && kind != 4) || cols % mk::kLanes != 0) return mk::kBadShape;
    lw.quant[w] = mk::QuantWeight{base + e[1], reinterpret_cast<const float *>(base + e[2]),
                                  reinterpret_cast<const float *>(base + e[3]), static_cast<int>(kind), e[6]};
    lw.data[w] = &lw.quant[w], lw.dtypes[w] = mk::kQuantTag;
  }
  return mk::kOk;
}

int run_packed_layer(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, bool quantized) {
  if (nparam != kPackedInputs + 2) return mk::kBadArity;
  mk::Arg weights = MK_ARG(2), layout = MK_ARG(3);
  const int64_t size = mk::dtype_of(dtypes[0]) == mk::DType::F16 ? 2 : 4;
  LayerWeights lw;
  int status = quantized ? quant_layout(weights, layout, dtypes[0], size, lw) : float_layout(weights, layout, dtypes[0], size, lw);
  if (status != mk::kOk) return status;
  const bool packed_mlp = !lw.present[kUp];
  if (quantized && (packed_mlp || (lw.dtypes[kGate] == mk::kQuantTag) != (lw.dtypes[kUp] == mk::kQuantTag) ||
                    (lw.dtypes[kGate] == mk::kQuantTag && lw.quant[kGate].bits != lw.quant[kUp].bits)))
    return mk::kBadShape;  // gate and up run in one tile: one format for both
  int64_t placeholder_shape[1] = {1};
  // The DecoderLayer inputs: (source input, or -1 - weight index) for each position, then the two outputs.
  const int mlp_weights[] = {-1 - kGate, -1 - kUp, -1 - kDown};
  std::vector<int> sources = {0, 1, -1 - kInNorm, 4, -1 - kQ, -1 - kK, -1 - kV, -1 - kO, -1 - kBq, -1 - kBk, -1 - kBv,
                              -1 - kBo, 8, 9, -1 - kQNorm, -1 - kKNorm, 10, 11, 12, 13, 7, -1 - kPostNorm, 5};
  for (int source : mlp_weights)
    if (!(packed_mlp && source == -1 - kUp)) sources.push_back(source);
  sources.push_back(6);
  sources.push_back(kPackedInputs);
  sources.push_back(kPackedInputs + 1);
  const int count = static_cast<int>(sources.size());
  std::vector<void *> l_params(count);
  std::vector<int> l_ndims(count);
  std::vector<int64_t *> l_shapes(count);
  std::vector<const char *> l_dtypes(count);
  for (int i = 0; i < count; i++) {
    int source = sources[i];
    if (source >= 0) {
      l_params[i] = params[source], l_ndims[i] = ndims[source], l_shapes[i] = shapes[source], l_dtypes[i] = dtypes[source];
    } else {
      int w = -1 - source;
      l_params[i] = lw.data[w], l_ndims[i] = lw.ndims[w];
      l_shapes[i] = lw.present[w] ? lw.shapes[w] : placeholder_shape;
      l_dtypes[i] = lw.present[w] ? lw.dtypes[w] : dtypes[0];
    }
  }
  return run_layer(count, l_params.data(), l_ndims.data(), l_shapes.data(), l_dtypes.data(), packed_mlp);
}

// Every decoder layer of a model in one launch: inside a compiled graph, the runtime takes ~0.1 ms to start the
// kernel that follows one which streamed megabytes of weights, once per layer when each layer is a kernel.
constexpr int kStackInputs = 10, kPerLayer = 4;

int run_stack(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  const int layers = (nparam - kStackInputs - 2) / kPerLayer;
  if (layers < 1 || kStackInputs + kPerLayer * layers + 2 != nparam) return mk::kBadArity;
  const int residual_out = nparam - 2, out = nparam - 1;
  // WeightsLayer's inputs: (hidden, residual, weights, layout, in_cfg, post_cfg, act, attn_cfg, cos, sin, k_cache,
  // v_cache, cache_position, mask) and its two outputs, which may be its hidden and residual inputs (each layer
  // reads them before it writes): every layer after the first runs in place on the stack's outputs.
  const int shared[] = {0, 1, -1, -1, 2, 3, 4, 5, 6, 7, -1, -1, 8, 9, residual_out, out};
  for (int layer = 0; layer < layers; layer++) {
    const int first = kStackInputs + kPerLayer * layer;
    int sources[kPackedInputs + 2];
    for (int i = 0; i < kPackedInputs + 2; i++) sources[i] = shared[i];
    sources[2] = first, sources[3] = first + 1, sources[10] = first + 2, sources[11] = first + 3;
    if (layer > 0) sources[0] = out, sources[1] = residual_out;
    void *l_params[kPackedInputs + 2];
    int l_ndims[kPackedInputs + 2];
    int64_t *l_shapes[kPackedInputs + 2];
    const char *l_dtypes[kPackedInputs + 2];
    for (int i = 0; i < kPackedInputs + 2; i++) {
      const int s = sources[i];
      l_params[i] = params[s], l_ndims[i] = ndims[s], l_shapes[i] = shapes[s], l_dtypes[i] = dtypes[s];
    }
    if (layer > 0) l_dtypes[0] = l_dtypes[1] = dtypes[0];
    const bool quantized = mk::dtype_of(dtypes[first]) != mk::dtype_of(dtypes[0]);  // a byte buffer
    int status = run_packed_layer(kPackedInputs + 2, l_params, l_ndims, l_shapes, l_dtypes, quantized);
    if (status != mk::kOk) return status;
  }
  return mk::kOk;
}

}  // namespace

// DecoderLayer(the AttentionBlock inputs, post_norm_w, post_norm_cfg, gate, up, down, act)
//   -> (the residual stream after the attention, the MLP's output): the layer's output is their sum
MK_KERNEL DecoderLayer(MK_ARGS) { return run_layer(nparam, params, ndims, shapes, dtypes, false); }

// DecoderLayerPacked: the same with gate and up stacked (Phi-3's gate_up_proj)
MK_KERNEL DecoderLayerPacked(MK_ARGS) { return run_layer(nparam, params, ndims, shapes, dtypes, true); }

// WeightsLayer(hidden, residual or [1], weights [n], layout int64 [15 * 3], input_norm_cfg, post_norm_cfg, act,
//   attention_cfg, cos, sin, k_cache, v_cache, cache_position, mask) -> DecoderLayer's outputs, with every weight a
//   slice of one buffer: a graph passes the layer one parameter instead of up to fifteen.
MK_KERNEL WeightsLayer(MK_ARGS) { return run_packed_layer(nparam, params, ndims, shapes, dtypes, false); }

// QuantWeightsLayer: WeightsLayer over a byte buffer holding quantized projections (int8 or 4-bit groups) and float
//   norms and biases, with a layout int64 [15 * 7] of (kind, data, scales, offsets, rows, cols, group_shift)
MK_KERNEL QuantWeightsLayer(MK_ARGS) { return run_packed_layer(nparam, params, ndims, shapes, dtypes, true); }

// DecoderStack(hidden, residual or [1], input_norm_cfg, post_norm_cfg, act, attention_cfg, cos, sin, cache_position,
//   mask, then per layer: weights, layout, k_cache, v_cache) -> the last layer's (residual stream, MLP output): every
//   layer as WeightsLayer (float weights) or QuantWeightsLayer (a uint8 buffer), one launch for all of them
MK_KERNEL DecoderStack(MK_ARGS) { return run_stack(nparam, params, ndims, shapes, dtypes); }
