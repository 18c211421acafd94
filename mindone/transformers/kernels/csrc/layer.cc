// A whole pre-norm decoder layer for decoding rows in one launch: the attention block (attention.cc), then the
// MLP block (linear.cc) on its outputs. Inside a compiled graph each launch after a kernel that streamed megabytes
// of weights costs tens of microseconds of runtime work, so a layer as one kernel instead of two saves one of them.
#include <vector>

#include "common.h"

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

}  // namespace

// DecoderLayer(the AttentionBlock inputs, post_norm_w, post_norm_cfg, gate, up, down, act)
//   -> (the residual stream after the attention, the MLP's output): the layer's output is their sum
MK_KERNEL DecoderLayer(MK_ARGS) { return run_layer(nparam, params, ndims, shapes, dtypes, false); }

// DecoderLayerPacked: the same with gate and up stacked (Phi-3's gate_up_proj)
MK_KERNEL DecoderLayerPacked(MK_ARGS) { return run_layer(nparam, params, ndims, shapes, dtypes, true); }
