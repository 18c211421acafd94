// Attention with the rotary embedding, the optional per-head q/k RMSNorm and the key/value cache write fused in.
//
// Layouts: projections arrive as [B, S, heads * D] (or q, k, v packed in one [B, S, (H + 2 KV) * D] tensor, as
// Phi-3's qkv_proj and GPT-2's c_attn produce them); caches are [B, KV, L, D]; the additive mask is
// [1 or B, 1, S, L] with the dtype's minimum (or -inf) where a key is not visible; the output is [B, S, H * D].
// Grouped-query attention: query head h reads key/value head h / (H / KV).
//
// Numerics follow the composed ops (layers.eager_attention): scores = q.k * scaling, then the soft-cap
// tanh(s / cap) * cap, then the mask, softmax in float32. Masked keys are skipped, which is exact because the
// composed softmax gives them weight 0; a query with no visible key averages all L values, as the composed
// softmax over equal scores does.
#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "gemm.h"
#include "matmul.h"
#include "norm.h"

namespace mk {
namespace {

struct Config {
  float scaling, softcap;
  int64_t rotary_dim;
  float norm_eps;  // 0: no q/k norm
  bool unit_offset;
  bool packed;
  int64_t heads, kv_heads;
};

Config config_of(const Arg &cfg) {
  const float *c = cfg.as<float>();
  return Config{c[0], c[1], static_cast<int64_t>(c[2]), c[3], c[4] != 0.0f, c[5] != 0.0f,
                static_cast<int64_t>(c[6]), static_cast<int64_t>(c[7])};
}

template <class T> constexpr float masked_below() {
  return std::is_same_v<T, float> ? -std::numeric_limits<float>::max() : -65504.0f;
}

// One head vector from the projection: q/k norm (cast to T, as the norm cell returns T), rotary (rounded to T,
// as the composed rotation produces T), into float32.
template <class T> struct HeadPrep {
  const T *cos, *sin;  // [Bc, S, D] with Bc 1 or B
  int64_t cos_batch_stride, S, D;
  const T *norm_w;
  Config c;

  void operator()(const T *src, int64_t b, int64_t s, float *dst) const {
    for (int64_t i = 0; i < D; i++) dst[i] = to_float(src[i]);
    if (c.norm_eps > 0.0f && norm_w != nullptr) {
      float ss = 0.0f;
      for (int64_t i = 0; i < D; i++) ss += dst[i] * dst[i];
      float scale = 1.0f / std::sqrt(ss / static_cast<float>(D) + c.norm_eps);
      for (int64_t i = 0; i < D; i++) {
        float normed = dst[i] * scale;
        dst[i] = c.unit_offset ? to_float(static_cast<T>(normed * (1.0f + to_float(norm_w[i]))))
                               : to_float(static_cast<T>(to_float(norm_w[i]) * to_float(static_cast<T>(normed))));
      }
    }
    if (c.rotary_dim > 0) {
      const T *cs = cos + b * cos_batch_stride + s * D, *sn = sin + b * cos_batch_stride + s * D;
      const int64_t half = c.rotary_dim / 2;
      float x[D];
      std::memcpy(x, dst, sizeof(float) * D);
      for (int64_t i = 0; i < D; i++) {
        float rotated = i < half ? -x[i + half] : (i < c.rotary_dim ? x[i - half] : 0.0f);
        dst[i] = to_float(static_cast<T>(x[i] * to_float(cs[i]) + rotated * to_float(sn[i])));
      }
    }
  }
};

// Where q, k and v of token (b, s) start in the projection tensors.
template <class T> struct Projections {
  const T *q, *k, *v;
  int64_t S, D, H, KV;
  bool packed;
  int64_t q_row() const { return packed ? (H + 2 * KV) * D : H * D; }
  int64_t kv_row() const { return packed ? (H + 2 * KV) * D : KV * D; }
  const T *query(int64_t b, int64_t s, int64_t h) const { return q + (b * S + s) * q_row() + h * D; }
  const T *key(int64_t b, int64_t s, int64_t g) const {
    return (packed ? q + H * D : k) + (b * S + s) * kv_row() + g * D;
  }
  const T *value(int64_t b, int64_t s, int64_t g) const {
    return (packed ? q + (H + KV) * D : v) + (b * S + s) * kv_row() + g * D;
  }
};

// The attention itself over caches [B, KV, L, D], for queries already prepared in float32 [B, S, H, D].
template <class T> struct Attend {
  const float *q;
  const T *keys, *values;
  const T *mask;  // [Bm, 1, S, L]
  int64_t mask_batch_stride;
  T *out;  // [B, S, H * D]
  int64_t B, S, H, KV, L, D;
  Config c;

  static constexpr int64_t kQueryBlock = 16;

  int64_t tasks() const { return B * KV * ((S + kQueryBlock - 1) / kQueryBlock); }

  void run_task(int64_t task, std::vector<float> &kt, std::vector<float> &scores) const {
    const int64_t blocks = (S + kQueryBlock - 1) / kQueryBlock;
    const int64_t b = task / (KV * blocks), g = (task / blocks) % KV, s0 = (task % blocks) * kQueryBlock;
    const int64_t s1 = std::min(S, s0 + kQueryBlock);
    const T *kb = keys + (b * KV + g) * L * D, *vb = values + (b * KV + g) * L * D;
    const T *mb = mask + b * mask_batch_stride;
    const float floor = masked_below<T>();
    // Keys beyond the last one any of these queries sees are never read.
    int64_t seen = 0;
    for (int64_t s = s0; s < s1; s++)
      for (int64_t j = L - 1; j >= seen; j--)
        if (to_float(mb[s * L + j]) > floor) { seen = j + 1; break; }
    const int64_t padded = (seen + kLanes - 1) / kLanes * kLanes;
    kt.assign(D * padded, 0.0f);  // keys transposed [D, padded]: scores vectorise over keys
    for (int64_t j = 0; j < seen; j++)
      for (int64_t d = 0; d < D; d++) kt[d * padded + j] = to_float(kb[j * D + d]);
    scores.resize(padded);
    const int64_t group = H / KV;
    for (int64_t s = s0; s < s1; s++) {
      const T *mrow = mb + s * L;
      int64_t first = 0, last = -1;
      for (int64_t j = 0; j < seen; j++)
        if (to_float(mrow[j]) > floor) { if (last < 0) first = j; last = j; }
      for (int64_t h = g * group; h < (g + 1) * group; h++) {
        T *o = out + ((b * S + s) * H + h) * D;
        if (last < 0) average_values(vb, o);
        else attend_row(q + ((b * S + s) * H + h) * D, kt.data(), padded, vb, mrow, first, last, scores.data(), o);
      }
    }
  }

  void average_values(const T *vb, T *o) const {
    for (int64_t d = 0; d < D; d++) {
      float acc = 0.0f;
      for (int64_t j = 0; j < L; j++) acc += to_float(vb[j * D + d]);
      o[d] = static_cast<T>(acc / static_cast<float>(L));
    }
  }

  void attend_row(const float *qv, const float *kt, int64_t padded, const T *vb, const T *mrow, int64_t first,
                  int64_t last, float *sc, T *o) const {
    const float floor = masked_below<T>();
    const int64_t j0 = first / kLanes * kLanes;
    // scores for key blocks [j0, last], four blocks at a time for independent accumulators
    int64_t j = j0;
    for (; j + 4 * kLanes <= last + 1; j += 4 * kLanes) {
      vf a0{}, a1{}, a2{}, a3{};
      for (int64_t d = 0; d < D; d++) {
        vf qd = splat(qv[d]);
        const float *row = kt + d * padded + j;
        a0 += qd * loadv(row), a1 += qd * loadv(row + kLanes), a2 += qd * loadv(row + 2 * kLanes), a3 += qd * loadv(row + 3 * kLanes);
      }
      storev(sc + j, a0), storev(sc + j + kLanes, a1), storev(sc + j + 2 * kLanes, a2), storev(sc + j + 3 * kLanes, a3);
    }
    for (; j <= last; j += kLanes) {
      vf a{};
      for (int64_t d = 0; d < D; d++) a += splat(qv[d]) * loadv(kt + d * padded + j);
      storev(sc + j, a);
    }
    float maximum = -std::numeric_limits<float>::infinity();
    for (int64_t i = first; i <= last; i++) {
      float m = to_float(mrow[i]);
      if (m <= floor) { sc[i] = -std::numeric_limits<float>::infinity(); continue; }
      float s = sc[i] * c.scaling;
      if (c.softcap != 0.0f) s = std::tanh(s / c.softcap) * c.softcap;
      s += m;
      sc[i] = s;
      maximum = std::max(maximum, s);
    }
    float total = 0.0f;
    int64_t i = first;
    for (; i + kLanes <= last + 1; i += kLanes) {
      vf e = vexp(loadv(sc + i) - maximum);
      e = loadv(sc + i) == -std::numeric_limits<float>::infinity() ? vf{} : e;
      storev(sc + i, e);
      total += hsum(e);
    }
    for (; i <= last; i++) {
      sc[i] = sc[i] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(sc[i] - maximum);
      total += sc[i];
    }
    float acc[D];
    std::fill(acc, acc + D, 0.0f);
    for (int64_t jj = first; jj <= last; jj++) {
      float p = sc[jj];
      if (p == 0.0f) continue;
      const T *vr = vb + jj * D;
      int64_t d = 0;
      for (; d + kLanes <= D; d += kLanes) storev(acc + d, loadv(acc + d) + p * loadv(vr + d));
      for (; d < D; d++) acc[d] += p * to_float(vr[d]);
    }
    const float inv = 1.0f / total;
    for (int64_t d = 0; d < D; d++) o[d] = static_cast<T>(acc[d] * inv);
  }

  void run() const {
    if (S >= kBlockedQueries) return run_blocked();
    parallel_for(tasks(), 1, [this](int64_t begin, int64_t end) {
      std::vector<float> kt, scores;
      for (int64_t t = begin; t < end; t++) run_task(t, kt, scores);
    });
  }

  // ---- many queries (prompts): blocked score matrices
  //
  // A task is one key/value head and a block of queries: its rows are (query, head of the group) pairs, about 48.
  // The keys of every (row, key/value head) are transposed once ([D][keys], shared by the tasks), the task's
  // queries once ([D][rows]); a register-blocked kernel computes 8 rows x 48 keys of scores at a time. The
  // softmax runs over each row's scores in float32 (two passes: maximum, then exp and sum), and a second kernel
  // accumulates 6 rows x 64 dimensions of probabilities times values, normalised at the end. Only keys up to the
  // last one a row of the task sees are computed; masked keys get probability 0, as in attend_row.
  static constexpr int64_t kBlockedQueries = 8;  // from this many query tokens per row
  static constexpr int kScoreRows = 8, kScoreVectors = 3, kValueRows = 6, kValueVectors = 4;
  static constexpr int64_t kScoreKeys = kScoreVectors * kLanes;

  struct Blocked {
    std::vector<int64_t> first, last;  // visible key range of each mask row [Bm * S]; last < 0: none
    std::vector<int64_t> seen;         // keys read by row b: 1 + its last visible key over all queries
    float *kt;                         // keys transposed, [B, KV] x [D][stride] (a buffer the thread keeps)
    std::unique_ptr<float[]> fallback;
    int64_t stride, rows_per_block, queries_per_block, blocks;
  };

  void run_blocked() const {
    Blocked bk;
    const int64_t Bm = mask_batch_stride == 0 ? 1 : B;
    const float floor = masked_below<T>();
    bk.first.assign(Bm * S, 0), bk.last.assign(Bm * S, -1);
    parallel_for(Bm * S, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; r++) {
        const T *mrow = mask + (r / S) * mask_batch_stride + (r % S) * L;
        int64_t j = L - 1;
        while (j >= 0 && !(to_float(mrow[j]) > floor)) j--;
        bk.last[r] = j;
        if (j < 0) continue;
        int64_t i = 0;
        while (!(to_float(mrow[i]) > floor)) i++;
        bk.first[r] = i;
      }
    });
    bk.seen.assign(B, 0);
    for (int64_t b = 0; b < B; b++)
      for (int64_t s = 0; s < S; s++) bk.seen[b] = std::max(bk.seen[b], bk.last[(Bm == 1 ? 0 : b) * S + s] + 1);
    int64_t widest = *std::max_element(bk.seen.begin(), bk.seen.end());
    bk.stride = (widest + kLanes - 1) / kLanes * kLanes + kScoreKeys;  // room for a task's last 48-key chunk
    bk.kt = reused_scratch(3, B * KV * D * bk.stride, bk.fallback);
    // keys transposed, 16 at a time (zeros past `seen`, up to stride)
    const int64_t key_blocks = bk.stride / kLanes;
    parallel_for(B * KV * key_blocks, 16, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; t++) {
        const int64_t bg = t / key_blocks, j0 = (t % key_blocks) * kLanes, b = bg / KV;
        const T *kb = keys + bg * L * D + j0 * D;
        const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(kLanes, bk.seen[b] - j0));
        transpose_rows([&](int j, int64_t d) { return loadv(kb + j * D + d); },
                       [&](int j, int64_t d) { return to_float(kb[j * D + d]); }, rows, D, bk.stride,
                       bk.kt + bg * D * bk.stride + j0);
      }
    });
    const int64_t group = H / KV;
    bk.queries_per_block = std::max<int64_t>(1, 48 / group);
    bk.blocks = (S + bk.queries_per_block - 1) / bk.queries_per_block;
    bk.rows_per_block = bk.queries_per_block * group;
    // Tasks taken one at a time by whichever thread is free, the longest (the last queries of a causal mask) first.
    const int64_t tasks = B * KV * bk.blocks;
    std::atomic<int64_t> next{0};
    parallel_for(num_threads(), 1, [&](int64_t, int64_t) {
      std::vector<float> qt, scores;
      for (int64_t i = next++; i < tasks; i = next++) {
        const int64_t block = bk.blocks - 1 - i / (B * KV), bg = i % (B * KV);
        blocked_task(bk, bg * bk.blocks + block, qt, scores);
      }
    });
  }

  void blocked_task(const Blocked &bk, int64_t task, std::vector<float> &qt, std::vector<float> &sc) const {
    const int64_t group = H / KV, Bm = mask_batch_stride == 0 ? 1 : B;
    const int64_t bg = task / bk.blocks, b = bg / KV, g = bg % KV;
    const int64_t s0 = (task % bk.blocks) * bk.queries_per_block, s1 = std::min(S, s0 + bk.queries_per_block);
    const int64_t R = (s1 - s0) * group, Rp = (R + kScoreRows - 1) / kScoreRows * kScoreRows;
    const int64_t *first = bk.first.data() + (Bm == 1 ? 0 : b) * S, *last = bk.last.data() + (Bm == 1 ? 0 : b) * S;
    const T *vb = values + bg * L * D, *mb = mask + b * mask_batch_stride;
    auto query_of = [&](int64_t r) { return s0 + r / group; };
    auto out_of = [&](int64_t r) { return out + ((b * S + query_of(r)) * H + g * group + r % group) * D; };
    // the task's key range: the union of its rows' visible ranges
    int64_t lo = L, hi = 0;
    for (int64_t s = s0; s < s1; s++)
      if (last[s] >= 0) lo = std::min(lo, first[s]), hi = std::max(hi, last[s] + 1);
    if (hi == 0) {  // no row sees a key
      for (int64_t r = 0; r < R; r++) average_values(vb, out_of(r));
      return;
    }
    lo = lo / kLanes * kLanes;
    const int64_t W = (hi - lo + kScoreKeys - 1) / kScoreKeys * kScoreKeys;
    // queries transposed [D][Rp]
    qt.assign(D * Rp, 0.0f);
    for (int64_t r = 0; r < R; r++) {
      const float *qv = q + ((b * S + query_of(r)) * H + g * group + r % group) * D;
      for (int64_t d = 0; d < D; d++) qt[d * Rp + r] = qv[d];
    }
    sc.resize(Rp * W);
    const float *kt = bk.kt + bg * D * bk.stride + lo;
    for (int64_t r0 = 0; r0 < Rp; r0 += kScoreRows)
      for (int64_t c = 0; c < W; c += kScoreKeys) score_block(qt.data() + r0, Rp, kt + c, bk.stride, sc.data() + r0 * W + c, W);
    // softmax of each row over [lo, lo + W): masked or out-of-range keys get 0
    std::vector<float> inverse(R);
    for (int64_t r = 0; r < R; r++) {
      const int64_t s = query_of(r);
      if (last[s] < 0) continue;
      inverse[r] = 1.0f / softmax_row(sc.data() + r * W, W, lo, first[s], last[s], mb + s * L);
    }
    // probabilities times values, rows of one query block in tiles of 6
    for (int64_t r0 = 0; r0 < R; r0 += kValueRows) {
      const int64_t n = std::min<int64_t>(kValueRows, R - r0);
      int64_t j0 = L, j1 = 0;
      for (int64_t r = r0; r < r0 + n; r++) {
        const int64_t s = query_of(r);
        if (last[s] >= 0) j0 = std::min(j0, first[s]), j1 = std::max(j1, last[s] + 1);
      }
      const float *p[kValueRows];
      T *o[kValueRows];
      for (int i = 0; i < kValueRows; i++) {
        const int64_t r = r0 + (i < n ? i : 0);
        p[i] = sc.data() + r * W - lo;  // indexed by absolute key
        o[i] = out_of(r);
      }
      if (j0 < j1) value_block(p, vb, j0, j1, o, inverse.data() + r0, n);
      for (int64_t r = r0; r < r0 + n; r++)
        if (last[query_of(r)] < 0) average_values(vb, out_of(r));
    }
  }

  // sc[i][v * 16 + lane] for 8 rows (qt columns, stride Rp) and 48 keys (kt columns, stride `stride`).
  void score_block(const float *qt, int64_t Rp, const float *kt, int64_t stride, float *sc, int64_t W) const {
    vf acc[kScoreRows][kScoreVectors];
    for (int i = 0; i < kScoreRows; i++)
      for (int v = 0; v < kScoreVectors; v++) acc[i][v] = vf{};
    for (int64_t d = 0; d < D; d++) {
      vf kv[kScoreVectors];
      for (int v = 0; v < kScoreVectors; v++) kv[v] = loadv(kt + d * stride + v * kLanes);
      const float *qd = qt + d * Rp;
#pragma GCC unroll 8
      for (int i = 0; i < kScoreRows; i++)
        for (int v = 0; v < kScoreVectors; v++) acc[i][v] += kv[v] * qd[i];
    }
    for (int i = 0; i < kScoreRows; i++)
      for (int v = 0; v < kScoreVectors; v++) storev(sc + i * W + v * kLanes, acc[i][v]);
  }

  // Scores of keys lo.. (W of them) into unnormalised probabilities in place; returns their sum.
  float softmax_row(float *row, int64_t W, int64_t lo, int64_t first, int64_t last, const T *mrow) const {
    const float floor = masked_below<T>(), minus_inf = -std::numeric_limits<float>::infinity();
    vi lane;
    for (int l = 0; l < kLanes; l++) lane[l] = l;
    vf maximum = splat(minus_inf);
    const int64_t end = last + 1 - lo;  // scores past it are not visible
    for (int64_t c = 0; c < W; c += kLanes) {
      if (c >= end) {
        storev(row + c, vf{});
        continue;
      }
      const int64_t j = lo + c, n = std::min<int64_t>(kLanes, last + 1 - j);
      vf m = n == kLanes ? loadv(mrow + j) : loadn(mrow + j, n);
      vi index = lane + static_cast<int32_t>(j);
      auto visible = (index >= static_cast<int32_t>(first)) & (index <= static_cast<int32_t>(last)) & (m > floor);
      vf s = loadv(row + c) * c_scaling();
      if (c_softcap() != 0.0f)
        for (int l = 0; l < kLanes; l++) s[l] = std::tanh(s[l] / c_softcap()) * c_softcap();
      s = visible ? s + m : splat(minus_inf);
      storev(row + c, s);
      maximum = vmax(maximum, s);
    }
    const float top = hmax(maximum);
    vf total = vf{};
    for (int64_t c = 0; c < std::min(W, (end + kLanes - 1) / kLanes * kLanes); c += kLanes) {
      // exp below e^-80 is 0: it is nothing next to the maximum's 1 in float32, and the near-denormal products
      // it would feed the value kernel are slow (an additive mask of -1e30 instead of the dtype's minimum: 32x)
      vf d = loadv(row + c) - top;
      vf e = d < -80.0f ? vf{} : vexp(d);
      storev(row + c, e);
      total += e;
    }
    return hsum(total);
  }
  float c_scaling() const { return c.scaling; }
  float c_softcap() const { return c.softcap; }

  // o[i] = inverse[i] * sum over keys j0..j1-1 of p[i][j] * value j, for n (<= 6) rows; 64 dimensions at a time.
  void value_block(const float *const *p, const T *vb, int64_t j0, int64_t j1, T *const *o, const float *inverse,
                   int64_t n) const {
    int64_t d0 = 0;
    for (; d0 + kValueVectors * kLanes <= D; d0 += kValueVectors * kLanes) value_chunk<kValueVectors>(p, vb, j0, j1, d0, o, inverse, n);
    for (; d0 + kLanes <= D; d0 += kLanes) value_chunk<1>(p, vb, j0, j1, d0, o, inverse, n);
    for (; d0 < D; d0++)  // head sizes that are not a multiple of 16
      for (int64_t i = 0; i < n; i++) {
        float acc = 0.0f;
        for (int64_t j = j0; j < j1; j++) acc += p[i][j] * to_float(vb[j * D + d0]);
        o[i][d0] = static_cast<T>(acc * inverse[i]);
      }
  }

  template <int DV>
  void value_chunk(const float *const *p, const T *vb, int64_t j0, int64_t j1, int64_t d0, T *const *o,
                   const float *inverse, int64_t n) const {
    vf acc[kValueRows][DV];
    for (int i = 0; i < kValueRows; i++)
      for (int v = 0; v < DV; v++) acc[i][v] = vf{};
    const float *rows[kValueRows];
    for (int i = 0; i < kValueRows; i++) rows[i] = p[i];
    for (int64_t j = j0; j < j1; j++) {
      vf vv[DV];
      for (int v = 0; v < DV; v++) vv[v] = loadv(vb + j * D + d0 + v * kLanes);
#pragma GCC unroll 6
      for (int i = 0; i < kValueRows; i++)
        for (int v = 0; v < DV; v++) acc[i][v] += vv[v] * rows[i][j];
    }
    for (int64_t i = 0; i < n; i++)
      for (int v = 0; v < DV; v++) storev(o[i] + d0 + v * kLanes, acc[i][v] * inverse[i]);
  }
};

template <class T> HeadPrep<T> head_prep(const Arg &cos, const Arg &sin, const Arg &norm_w, int64_t S, int64_t D,
                                         const Config &c) {
  int64_t stride = cos.numel() >= S * D ? (cos.numel() / (S * D) > 1 ? S * D : 0) : 0;
  return HeadPrep<T>{cos.as<T>(), sin.as<T>(), stride, S, D, norm_w.numel() == D ? norm_w.as<T>() : nullptr, c};
}

// Queries of every token prepared (norm, rotary) into float32 [B, S, H, D] (a buffer the calling thread keeps).
template <class T> float *prepare_queries(const Projections<T> &p, const HeadPrep<T> &prep, int64_t B,
                                          std::unique_ptr<float[]> &fallback) {
  float *q = reused_scratch(2, B * p.S * p.H * p.D, fallback);
  parallel_for(B * p.S * p.H, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      int64_t b = i / (p.S * p.H), s = (i / p.H) % p.S, h = i % p.H;
      prep(p.query(b, s, h), b, s, q + i * p.D);
    }
  });
  return q;
}

// Keys (norm, rotary) and values of every token written into [B, KV, L, D] buffers at slot(b, s).
template <class T, class Slot>
void write_keys_values(const Projections<T> &p, const HeadPrep<T> &kprep, int64_t B, int64_t L, T *kc, T *vc, Slot slot) {
  float tmp[p.D];
  for (int64_t b = 0; b < B; b++)
    for (int64_t s = 0; s < p.S; s++)
      for (int64_t g = 0; g < p.KV; g++) {
        int64_t offset = ((b * p.KV + g) * L + slot(b, s)) * p.D;
        kprep(p.key(b, s, g), b, s, tmp);
        for (int64_t d = 0; d < p.D; d++) kc[offset + d] = static_cast<T>(tmp[d]);
        std::memcpy(vc + offset, p.value(b, s, g), sizeof(T) * p.D);
      }
}

// Keys and values of the projections into the caches at `pos`, then attention of the queries over the caches.
// `pos` holds S slots shared by every row, or B * S: each row's own (rows of a continuous batch sit at different
// lengths).
template <class T>
int cached_attention(const Projections<T> &p, int64_t B, const Arg &cos, const Arg &sin, const Arg &qn, const Arg &kn,
                     const Arg &kc, const Arg &vc, const Arg &pos, const Arg &mask, const Config &c, T *out) {
  const int64_t S = p.S, KV = kc.dim(1), L = kc.dim(2), D = kc.dim(3);
  const bool per_row = pos.numel() == B * S && B > 1;
  if (KV != c.kv_heads || D != p.D || c.heads % KV != 0 || (pos.numel() != S && !per_row) || mask.dim(-1) != L)
    return kBadShape;
  HeadPrep<T> qprep = head_prep<T>(cos, sin, qn, S, D, c), kprep = head_prep<T>(cos, sin, kn, S, D, c);
  const int32_t *slots = pos.as<int32_t>();
  for (int64_t i = 0; i < pos.numel(); i++)
    if (slots[i] < 0 || slots[i] >= L) return kBadShape;
  const int64_t row_stride = per_row ? S : 0;
  write_keys_values(p, kprep, B, L, kc.as<T>(), vc.as<T>(),
                    [slots, row_stride](int64_t b, int64_t s) { return slots[b * row_stride + s]; });
  std::unique_ptr<float[]> fallback;
  const float *queries = prepare_queries(p, qprep, B, fallback);
  int64_t mask_stride = mask.dim(0) == 1 ? 0 : S * L;
  Attend<T>{queries, kc.as<T>(), vc.as<T>(), mask.as<T>(), mask_stride, out, B, S, c.heads, KV, L, D, c}.run();
  return kOk;
}

template <class T> int run_cached(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg q = MK_ARG(0), k = MK_ARG(1), v = MK_ARG(2);
  Config c = config_of(MK_ARG(11));
  Projections<T> p{q.as<T>(), k.as<T>(), v.as<T>(), q.dim(1), MK_ARG(7).dim(3), c.heads, c.kv_heads, c.packed};
  return cached_attention(p, q.dim(0), MK_ARG(3), MK_ARG(4), MK_ARG(5), MK_ARG(6), MK_ARG(7), MK_ARG(8), MK_ARG(9),
                          MK_ARG(10), c, MK_ARG(12).as<T>());
}

// A bias input is a real bias when it has one value per output, a 1-element placeholder otherwise.
template <class T> const T *bias_or_null(const Arg &bias, int64_t outputs) {
  return bias.numel() == outputs ? bias.as<T>() : nullptr;
}

// The whole attention of decoding rows: the input norm (with the residual add), q, k, v projections, the cached
// attention and the output projection. Outputs the residual stream and the attention's output.
template <class T> int run_block(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg hidden = MK_ARG(0), residual = MK_ARG(1), wq = MK_ARG(4), wk = MK_ARG(5), wv = MK_ARG(6), wo = MK_ARG(7);
  Arg kc = MK_ARG(16);
  Config c = config_of(MK_ARG(20));
  const int64_t B = hidden.dim(0), S = hidden.dim(1), K = hidden.dim(2), M = B * S, D = kc.dim(3);
  const int64_t q_size = c.heads * D, kv_size = c.kv_heads * D;
  if (wo.dim(1) != q_size) return kBadShape;
  std::vector<T> normed(M * K);
  add_and_norm(hidden.as<T>(), residual.numel() == M * K ? residual.as<T>() : nullptr, MK_ARG(2).as<T>(),
               norm_config(MK_ARG(3)), MK_ARG(21).as<T>(), normed.data(), M, K);
  FloatRows<T> rows(normed.data(), normed.size());
  std::vector<T> q(M * (c.packed ? q_size + 2 * kv_size : q_size)), k(c.packed ? 0 : M * kv_size), v(k.size());
  using W = WeightRef<T>;
  if (c.packed) {  // Phi-3's qkv_proj: one weight, one projection, sliced by Projections
    const int64_t n = q_size + 2 * kv_size;
    run_product(plain_product<T>(rows.data, W::of(wq), bias_or_null<T>(MK_ARG(8), n), q.data(), M, n, K));
  } else {
    Product<T> products[3] = {
        plain_product<T>(rows.data, W::of(wq), bias_or_null<T>(MK_ARG(8), q_size), q.data(), M, q_size, K),
        plain_product<T>(rows.data, W::of(wk), bias_or_null<T>(MK_ARG(9), kv_size), k.data(), M, kv_size, K),
        plain_product<T>(rows.data, W::of(wv), bias_or_null<T>(MK_ARG(10), kv_size), v.data(), M, kv_size, K)};
    run_products(products, 3);
  }
  Projections<T> p{q.data(), k.data(), v.data(), S, D, c.heads, c.kv_heads, c.packed};
  std::vector<T> attended(M * q_size);
  int status = cached_attention(p, B, MK_ARG(12), MK_ARG(13), MK_ARG(14), MK_ARG(15), kc, MK_ARG(17), MK_ARG(18),
                                MK_ARG(19), c, attended.data());
  if (status != kOk) return status;
  FloatRows<T> attended_rows(attended.data(), attended.size());
  run_product(plain_product<T>(attended_rows.data, W::of(wo), bias_or_null<T>(MK_ARG(11), wo.dim(0)), MK_ARG(22).as<T>(),
                            M, wo.dim(0), q_size));
  return kOk;
}

// Queries and keys normed and rotated in their projection layout [B, S, heads * D].
template <class T> int run_rope(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg q = MK_ARG(0), k = MK_ARG(1), cos = MK_ARG(2), sin = MK_ARG(3), qn = MK_ARG(4), kn = MK_ARG(5);
  Config c = config_of(MK_ARG(6));
  Arg qo = MK_ARG(7), ko = MK_ARG(8);
  const int64_t B = q.dim(0), S = q.dim(1), D = q.dim(2) / c.heads;
  if (q.dim(2) != c.heads * D || k.dim(2) != c.kv_heads * D) return kBadShape;
  HeadPrep<T> qprep = head_prep<T>(cos, sin, qn, S, D, c), kprep = head_prep<T>(cos, sin, kn, S, D, c);
  float tmp[D];
  auto rotate_all = [&](const Arg &in, const Arg &out, int64_t heads, const HeadPrep<T> &prep) {
    const T *src = in.as<T>();
    T *dst = out.as<T>();
    for (int64_t b = 0; b < B; b++)
      for (int64_t s = 0; s < S; s++)
        for (int64_t h = 0; h < heads; h++) {
          int64_t offset = ((b * S + s) * heads + h) * D;
          prep(src + offset, b, s, tmp);
          for (int64_t d = 0; d < D; d++) dst[offset + d] = static_cast<T>(tmp[d]);
        }
  };
  rotate_all(q, qo, c.heads, qprep);
  rotate_all(k, ko, c.kv_heads, kprep);
  return kOk;
}

template <class T> int run_attention(void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Arg q = MK_ARG(0), k = MK_ARG(1), v = MK_ARG(2), mask = MK_ARG(3);
  Config c = config_of(MK_ARG(4));
  Arg out = MK_ARG(5);
  const int64_t B = q.dim(0), S = q.dim(1), KV = k.dim(1), L = k.dim(2), D = k.dim(3);
  if (KV != c.kv_heads || c.heads % KV != 0 || mask.dim(-1) != L) return kBadShape;
  std::vector<float> queries(q.numel());
  const T *qs = q.as<T>();
  for (size_t i = 0; i < queries.size(); i++) queries[i] = to_float(qs[i]);
  int64_t mask_stride = mask.dim(0) == 1 ? 0 : S * L;
  Attend<T>{queries.data(), k.as<T>(), v.as<T>(), mask.as<T>(), mask_stride, out.as<T>(), B, S, c.heads, KV, L, D, c}.run();
  return kOk;
}

}  // namespace
}  // namespace mk

using namespace mk;

// CachedAttention(q, k, v, cos, sin, q_norm_w, k_norm_w, k_cache, v_cache, cache_position, mask, cfg) -> out
// Writes the new keys (normed, rotated) and values into the caches in place at cache_position, then attends.
MK_KERNEL CachedAttention(MK_ARGS) {
  if (nparam != 13) return kBadArity;
  MK_DISPATCH(dtypes[0], run_cached, (params, ndims, shapes, dtypes));
}

// RopeQk(q [B, S, H * D], k [B, S, KV * D], cos, sin, q_norm_w, k_norm_w, cfg) -> (q, k) normed and rotated
MK_KERNEL RopeQk(MK_ARGS) {
  if (nparam != 9) return kBadArity;
  MK_DISPATCH(dtypes[0], run_rope, (params, ndims, shapes, dtypes));
}

// Attention(q [B, S, H * D], k [B, KV, L, D], v [B, KV, L, D], mask [1 or B, 1, S, L], cfg) -> [B, S, H * D]
MK_KERNEL Attention(MK_ARGS) {
  if (nparam != 6) return kBadArity;
  MK_DISPATCH(dtypes[0], run_attention, (params, ndims, shapes, dtypes));
}

// AttentionBlock(hidden [B, S, K], residual [B, S, K] or [1], norm_w [K], norm_cfg[eps, unit_offset], wq, wk, wv, wo,
//                bq, bk, bv, bo, cos, sin, q_norm_w, k_norm_w, k_cache, v_cache, cache_position, mask, cfg)
//   -> (residual stream [B, S, K], o_proj(attention(rms_norm(stream))) [B, S, wo rows])
// The input norm, projections, cached attention and output projection in one op. A 1-element residual means
// none (the first layer); biases are 1-element placeholders where a layer has none; with cfg's packed flag wq
// holds q, k and v (wk, wv unused).
MK_KERNEL AttentionBlock(MK_ARGS) {
  if (nparam != 23) return kBadArity;
  MK_DISPATCH(dtypes[0], run_block, (params, ndims, shapes, dtypes));
}

// CachedAttentionPacked: the same with q, k and v stacked in input 0 (inputs 1 and 2 unused); a separate entry
// point because its output shape differs (see infer.cc)
MK_KERNEL CachedAttentionPacked(MK_ARGS) { return CachedAttention(nparam, params, ndims, shapes, dtypes, stream, extra); }
