// Matrix products for many rows (prompts, large batches): the same Product as matmul.h (plain y = x w^T + bias, or
// gated y = act(x gate^T) * (x up^T), over float or quantized weights), computed as a blocked GEMM.
//
// The few-row tiles of matmul.h stream every weight row once per call and are bound by memory; with many rows the
// arithmetic dominates and wants register blocking. Here the weights are packed into panels of 32 outputs (float32,
// or dequantized, as [K][32]: gated products put 16 gate rows and the 16 matching up rows in one panel), the x rows
// into tiles of 14 rows ([K][14]), and a micro-kernel keeps a 14 x 32 block of outputs in 28 vector accumulators:
// per k, two vector loads of weights and 14 broadcasts of an x value feed 28 fused multiply-adds, and the block is
// stored as 14 output row segments. Each output is one lane accumulated over k = 0..K-1 in a fixed order, so it does
// not depend on M, on the block it falls in, or on the threads.
//
// Threads split the weight panels; each packs its panels a chunk at a time (kept in L2) and runs every x tile over
// the chunk (a tile stays in L1 while it meets the chunk's panels).
#pragma once

#include <algorithm>
#include <atomic>
#include <vector>

#include "matmul.h"

namespace mk {

constexpr int kTileRows = 14;     // x rows per tile: the broadcast operand
constexpr int64_t kPanel = 32;    // outputs per weight panel (the last one 16 when at most 16 are left)

// One stage of a 16 x 16 transpose: rows a (index bit b clear) and c (bit b set) swap their elements whose column
// has bit b set in a and clear in c. Four stages (b = 8, 4, 2, 1) transpose the block.
#define MK_TRANSPOSE_STAGE(B, a, c)                                                                                 \
  {                                                                                                                 \
    vf lo = __builtin_shufflevector(a, c, MK_LO##B), hi = __builtin_shufflevector(a, c, MK_HI##B);                  \
    a = lo, c = hi;                                                                                                 \
  }
#define MK_LO8 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define MK_HI8 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define MK_LO4 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27
#define MK_HI4 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31
#define MK_LO2 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29
#define MK_HI2 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31
#define MK_LO1 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30
#define MK_HI1 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31

// r[i][c] -> r[c][i]
inline void transpose16(vf (&r)[kLanes]) {
  for (int i = 0; i < 8; i++) MK_TRANSPOSE_STAGE(8, r[i], r[i + 8]);
  for (int i = 0; i < 16; i += 8)
    for (int j = i; j < i + 4; j++) MK_TRANSPOSE_STAGE(4, r[j], r[j + 4]);
  for (int i = 0; i < 16; i += 4)
    for (int j = i; j < i + 2; j++) MK_TRANSPOSE_STAGE(2, r[j], r[j + 2]);
  for (int i = 0; i < 16; i += 2) MK_TRANSPOSE_STAGE(1, r[i], r[i + 1]);
}

// G groups of 16 rows [K] transposed side by side into dst [K][width]: load(g, j, k) gives 16 values k..k+15 of
// row j of group g, scalar(g, j, k) one value (for K % 16). Rows at or past rows[g] are written as zeros. Whole
// output rows of a 32-wide panel are written at once (two halves one after the other would write each cache line
// twice, once per half). With `spill` (width < 16, dst followed by 16 floats of padding) each output row is
// written as a whole vector whose extra lanes land on the next row, which is written after it.
template <int G, class Load, class Scalar>
inline void transpose_groups(Load load, Scalar scalar, const int64_t (&rows)[G], int64_t K, int64_t width, float *dst,
                             bool spill = false) {
  int64_t k = 0;
  vf r[G][kLanes];
  for (; k + kLanes <= K; k += kLanes) {
    for (int g = 0; g < G; g++) {
      for (int j = 0; j < kLanes; j++) r[g][j] = j < rows[g] ? load(g, j, k) : vf{};
      transpose16(r[g]);
    }
    for (int i = 0; i < kLanes; i++)
      for (int g = 0; g < G; g++) {
        if (width >= kLanes || spill) storev(dst + (k + i) * width + g * kLanes, r[g][i]);
        else storen(dst + (k + i) * width, r[g][i], width);
      }
  }
  for (; k < K; k++)
    for (int g = 0; g < G; g++)
      for (int64_t j = 0; j < std::min<int64_t>(width, kLanes); j++)
        dst[k * width + g * kLanes + j] = j < rows[g] ? scalar(g, j, k) : 0.0f;
}

// One group of 16 rows (see transpose_groups).
template <class Load, class Scalar>
inline void transpose_rows(Load load, Scalar scalar, int64_t rows, int64_t K, int64_t width, float *dst,
                           bool spill = false) {
  const int64_t counts[1] = {rows};
  transpose_groups<1>([&](int, int j, int64_t k) { return load(j, k); }, [&](int, int j, int64_t k) { return scalar(j, k); },
                      counts, K, width, dst, spill);
}

// x [M, K] (float32) packed in tiles of 14 rows, each [K][14] with rows beyond M zero, followed by 16 floats of
// padding (written whole, see transpose_groups).
struct PackedRows {
  float *data;
  int64_t M, K;
  int64_t tiles() const { return (M + kTileRows - 1) / kTileRows; }
  static int64_t tile_floats(int64_t K) { return kTileRows * K + kLanes; }
  float *tile(int64_t t) const { return data + t * tile_floats(K); }

  void pack(const float *x, int64_t t) const {
    const int64_t m0 = t * kTileRows;
    const float *src = x + m0 * K;
    transpose_rows([&](int j, int64_t k) { return loadv(src + j * K + k); },
                   [&](int j, int64_t k) { return src[j * K + k]; }, std::min<int64_t>(kTileRows, M - m0), K,
                   kTileRows, tile(t), true);
  }
};

// acc[i][v] = sum over k of x[k][i] * w[k][v * 16 + lane]: a 14 x (16 MV) block of outputs. Each block of 128 k
// accumulates from zero in registers and is then added to the running sums, which keeps the rounding error of long
// rows (K = 1536: 3.5x smaller) near that of MindSpore's MatMul.
constexpr int64_t kBlockK = 128;

// Weight rows of the panels a thread computes next, prefetched into L2 one cache line at a time from inside the
// micro-kernel's k loop while this chunk computes: their packing then reads L2 instead of waiting on memory (the
// weights of a whole model do not stay in cache between prompts). Issued evenly, not in bursts, which overflow
// the core's miss queues.
struct PrefetchQueue {
  static constexpr int kMaxRows = 16 * 32;
  const char *rows[kMaxRows];
  int32_t bytes[kMaxRows];
  int count = 0, row = 0;
  int64_t offset = 0, every = 1 << 30, countdown = 1 << 30;
  void add(const char *start, int64_t size) {
    if (count < kMaxRows && start != nullptr) rows[count] = start, bytes[count++] = static_cast<int32_t>(size);
  }
  int64_t lines() const {
    int64_t n = 0;
    for (int i = 0; i < count; i++) n += (bytes[i] + 63) / 64;
    return n;
  }
  inline void tick() {
    if (--countdown > 0) return;
    countdown = every;
    if (row >= count) return;
    __builtin_prefetch(rows[row] + offset, 0, 2);
    offset += 64;
    if (offset >= bytes[row]) offset = 0, row++;
  }
};

template <int MV, int MR = kTileRows>
inline void gemm_micro(const float *wp, const float *xp, int64_t K, vf (&out)[kTileRows][MV],
                       PrefetchQueue *queue = nullptr) {
  for (int i = 0; i < MR; i++)
    for (int v = 0; v < MV; v++) out[i][v] = vf{};
  for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
    vf acc[MR][MV];  // local, so that the accumulators live in registers
    for (int i = 0; i < MR; i++)
      for (int v = 0; v < MV; v++) acc[i][v] = vf{};
    const int64_t k1 = std::min(K, k0 + kBlockK);
#pragma GCC unroll 4
    for (int64_t k = k0; k < k1; k++) {
      if (queue != nullptr) queue->tick();
      vf wv[MV];
      for (int v = 0; v < MV; v++) wv[v] = loadv(wp + k * MV * kLanes + v * kLanes);
      const float *x = xp + k * kTileRows;
#pragma GCC unroll 14
      for (int i = 0; i < MR; i++)
        for (int v = 0; v < MV; v++) acc[i][v] += wv[v] * x[i];  // a vector times a scalar: an embedded broadcast
    }
    for (int i = 0; i < MR; i++)
      for (int v = 0; v < MV; v++) out[i][v] += acc[i][v];
  }
}

// gemm_micro for the first `rows` rows of a tile only (the last tile of x): no work on its zero rows.
template <int MV> inline void gemm_rows(const float *wp, const float *xp, int64_t K, int64_t rows, vf (&out)[kTileRows][MV]) {
  switch (rows) {
#define MK_ROWS_CASE(r) case r: return gemm_micro<MV, r>(wp, xp, K, out);
    MK_ROWS_CASE(1) MK_ROWS_CASE(2) MK_ROWS_CASE(3) MK_ROWS_CASE(4) MK_ROWS_CASE(5) MK_ROWS_CASE(6) MK_ROWS_CASE(7)
    MK_ROWS_CASE(8) MK_ROWS_CASE(9) MK_ROWS_CASE(10) MK_ROWS_CASE(11) MK_ROWS_CASE(12) MK_ROWS_CASE(13)
#undef MK_ROWS_CASE
    default: return gemm_micro<MV>(wp, xp, K, out);
  }
}

// act(g) for every lane (the activations of activate_times).
inline vf activation(vf g, int act) {
  switch (act) {
    case kSilu: return g / (1.0f + vexp(-g));
    case kGeluTanh: return g / (1.0f + vexp(-1.5957691216057308f * (g + 0.044715f * g * g * g)));
    case kGeluErf: {
      vf a;
      for (int i = 0; i < kLanes; i++) a[i] = 0.5f * g[i] * (1.0f + std::erf(g[i] * 0.7071067811865476f));
      return a;
    }
    default: return vmax(g, vf{});
  }
}

template <class T> struct Gemm {
  const Product<T> *products;
  int count;
  int64_t first_panel[4], panels;
  PackedRows x;

  Gemm(const Product<T> *products, int count, float *packed) : products(products), count(count) {
    panels = 0;
    for (int i = 0; i < count; i++) {
      first_panel[i] = panels;
      panels += (products[i].N + outputs_per_panel(products[i]) - 1) / outputs_per_panel(products[i]);
    }
    x = PackedRows{packed, products[0].M, products[0].K};
  }

  static int64_t outputs_per_panel(const Product<T> &p) { return p.act >= 0 ? kPanel / 2 : kPanel; }

  // Panel q as (product, first output, vectors per k: 2, or 1 for a plain product's last <= 16 outputs).
  int locate(int64_t q, int &i, int64_t &n0) const {
    i = 0;
    while (i + 1 < count && q >= first_panel[i + 1]) i++;
    const Product<T> &p = products[i];
    n0 = (q - first_panel[i]) * outputs_per_panel(p);
    return p.act < 0 && p.N - n0 <= kLanes ? 1 : 2;
  }

  // The panel's weight rows as float32 [K][16 MV] (zero rows past N); gated: 16 gate rows, then their up rows.
  void pack_panel(const Product<T> &p, int64_t n0, int MV, float *dst) const {
    const int64_t K = p.K, width = MV * kLanes;
    if (p.wq == nullptr && MV == 2) {  // both halves in one pass
      const T *w[2];
      int64_t rows[2];
      for (int half = 0; half < 2; half++) {
        const int64_t first = p.act >= 0 ? n0 : n0 + half * kLanes;
        w[half] = (p.act >= 0 && half == 1 ? p.up : p.w) + first * K;
        rows[half] = std::min<int64_t>(kLanes, p.N - first);
      }
      transpose_groups<2>([&](int g, int j, int64_t k) { return loadv(w[g] + j * K + k); },
                          [&](int g, int j, int64_t k) { return to_float(w[g][j * K + k]); }, rows, K, width, dst);
      return;
    }
    for (int half = 0; half < MV; half++) {
      const bool second = p.act >= 0 && half == 1;
      const int64_t first = p.act >= 0 ? n0 : n0 + half * kLanes, rows = std::min<int64_t>(kLanes, p.N - first);
      float *out = dst + half * kLanes;
      if (p.wq != nullptr) {
        const QuantWeight &q = second ? *p.upq : *p.wq;
        if (q.bits == 8) pack_quant(Int8Rows(q, K), first, rows, K, width, out);
        else pack_quant(Int4Rows(q, K), first, rows, K, width, out);
      } else {
        const T *w = (second ? p.up : p.w) + first * K;
        transpose_rows([&](int j, int64_t k) { return loadv(w + j * K + k); },
                       [&](int j, int64_t k) { return to_float(w[j * K + k]); }, rows, K, width, out);
      }
    }
  }

  template <class Rows>
  static void pack_quant(const Rows &q, int64_t first, int64_t rows, int64_t K, int64_t width, float *dst) {
    decltype(q.row(0)) starts[kLanes];
    for (int j = 0; j < rows; j++) starts[j] = q.row(first + j);
    transpose_rows([&](int j, int64_t k) { return q.chunk(first + j, starts[j], k); },
                   [&](int, int64_t) { return 0.0f; }, rows, K, width, dst);  // K is a multiple of 16
  }

  template <int MV>
  void block(const Product<T> &p, int64_t n0, const float *wp, int64_t t, PrefetchQueue *queue) const {
    vf acc[kTileRows][MV];
    const int64_t m0 = t * kTileRows, rows = std::min<int64_t>(kTileRows, p.M - m0);
    if (rows == kTileRows) gemm_micro<MV>(wp, x.tile(t), p.K, acc, queue);
    else gemm_rows<MV>(wp, x.tile(t), p.K, rows, acc);
    if (p.act >= 0) {
      const int64_t cols = std::min<int64_t>(kLanes, p.N - n0);
      for (int64_t i = 0; i < rows; i++) {
        vf h = activation(acc[i][0], p.act) * acc[i][1];
        T *y = p.y + (m0 + i) * p.N + n0;
        if (cols == kLanes) storev(y, h);
        else storen(y, h, cols);
      }
      return;
    }
    vf bias[MV];
    for (int v = 0; v < MV; v++) {
      const int64_t cols = std::min<int64_t>(kLanes, p.N - n0 - v * kLanes);
      bias[v] = p.bias == nullptr || cols <= 0 ? vf{} : cols == kLanes ? loadv(p.bias + n0 + v * kLanes)
                                                                      : loadn(p.bias + n0 + v * kLanes, cols);
    }
    for (int64_t i = 0; i < rows; i++) {
      T *y = p.y + (m0 + i) * p.N + n0;
      for (int v = 0; v < MV; v++) {
        const int64_t cols = std::min<int64_t>(kLanes, p.N - n0 - v * kLanes);
        if (cols == kLanes) storev(y + v * kLanes, acc[i][v] + bias[v]);
        else if (cols > 0) storen(y + v * kLanes, acc[i][v] + bias[v], cols);
      }
    }
  }

  // Panels that fit in ~384 KB of L2 together (a chunk): each x tile meets all of them before the next one.
  int64_t chunk() const { return std::min<int64_t>(kMaxChunk, std::max<int64_t>(1, (384 * 1024 / 4) / (kPanel * x.K))); }
  static constexpr int64_t kMaxChunk = 16;

  // The weight rows of panels [q0, q1) into `queue`.
  void queue_rows(int64_t q0, int64_t q1, PrefetchQueue &queue) const {
    for (int64_t q = q0; q < q1; q++) {
      int i;
      int64_t n0;
      const int MV = locate(q, i, n0);
      const Product<T> &p = products[i];
      for (int j = 0; j < MV * kLanes; j++) {
        const bool second = p.act >= 0 && j >= kLanes;
        const int64_t n = n0 + (p.act >= 0 ? j % kLanes : j);
        if (n >= p.N) continue;
        if (p.wq != nullptr) {
          const QuantWeight &w = second ? *p.upq : *p.wq;
          const int64_t size = w.bits == 8 ? p.K : p.K / 2;
          queue.add(static_cast<const char *>(w.values) + n * size, size);
        } else {
          queue.add(reinterpret_cast<const char *>((second ? p.up : p.w) + n * p.K), p.K * sizeof(T));
        }
      }
    }
  }

  // Panels [c0, c1) (at most a chunk): packed, then every x tile run over them; meanwhile the weights of panels
  // [n0, n1), the thread's next chunk, are prefetched.
  void run_chunk(int64_t c0, int64_t c1, int64_t n0 = 0, int64_t n1 = 0) const {
    const int64_t panel_floats = kPanel * x.K;
    thread_local std::vector<float> packed;
    if (static_cast<int64_t>(packed.size()) < (c1 - c0) * panel_floats) packed.resize((c1 - c0) * panel_floats);
    int index[kMaxChunk], vectors[kMaxChunk];
    int64_t first[kMaxChunk];
    for (int64_t q = c0; q < c1; q++) {
      vectors[q - c0] = locate(q, index[q - c0], first[q - c0]);
      pack_panel(products[index[q - c0]], first[q - c0], vectors[q - c0], packed.data() + (q - c0) * panel_floats);
    }
    PrefetchQueue queue;
    queue_rows(n0, n1, queue);
    // one line every `every` k steps of full tiles, so that the next chunk has arrived when this one ends
    const int64_t steps = (x.M / kTileRows) * (c1 - c0) * x.K, lines = queue.lines();
    queue.every = queue.countdown = lines > 0 ? std::max<int64_t>(1, steps / lines) : (int64_t{1} << 40);
    for (int64_t t = 0; t < x.tiles(); t++)
      for (int64_t q = c0; q < c1; q++) {
        const float *wp = packed.data() + (q - c0) * panel_floats;
        if (vectors[q - c0] == 2) block<2>(products[index[q - c0]], first[q - c0], wp, t, &queue);
        else block<1>(products[index[q - c0]], first[q - c0], wp, t, &queue);
      }
  }
};

// A scratch buffer of n floats kept by the calling thread for its next calls (up to 16M floats): a fresh buffer
// of megabytes per call costs its page faults every time (1% of an 800-token prefill for the packed x alone).
// `slot` tells apart buffers that are live at the same time: 0 packed x (gemm_products), 1 an MLP's hidden rows,
// 2 and 3 attention's queries and transposed keys.
inline float *reused_scratch(int slot, int64_t n, std::unique_ptr<float[]> &fallback) {
  constexpr int64_t kKept = int64_t{1} << 24;
  thread_local std::vector<float> kept[4];
  if (n > kKept) {
    fallback.reset(new float[n]);
    return fallback.get();
  }
  if (static_cast<int64_t>(kept[slot].size()) < n) kept[slot].resize(n);
  return kept[slot].data();
}

// Products of the same x rows (more than kFewRows of them) in one parallel loop over all their weight panels.
template <class T> void gemm_products(const Product<T> *products, int count) {
  const Product<T> &p0 = products[0];
  const int64_t tiles = (p0.M + kTileRows - 1) / kTileRows;
  std::unique_ptr<float[]> fallback;
  Gemm<T> g(products, count, reused_scratch(0, tiles * PackedRows::tile_floats(p0.K), fallback));
  const float *x = p0.x;
  parallel_for(tiles, 4, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; t++) g.x.pack(x, t);
  });
  // Chunks of panels taken one at a time by whichever thread is free (a thread another process holds up delays
  // only the chunk it has); chunks shrink towards the end so that the threads finish together.
  const int64_t threads = num_threads(), chunk = g.chunk();
  std::atomic<int64_t> next{0};
  parallel_for(threads, 1, [&](int64_t, int64_t) {
    // [begin, end) of the next chunk, or false when none is left
    auto claim = [&](int64_t &begin, int64_t &end) {
      int64_t start = next.load(std::memory_order_relaxed), size;
      do {
        if (start >= g.panels) return false;
        size = std::max<int64_t>(1, std::min(chunk, (g.panels - start) / (2 * threads)));
      } while (!next.compare_exchange_weak(start, start + size, std::memory_order_relaxed));
      begin = start, end = start + size;
      return true;
    };
    int64_t begin, end, upcoming_begin = 0, upcoming_end = 0;
    for (bool more = claim(begin, end); more; begin = upcoming_begin, end = upcoming_end) {
      more = claim(upcoming_begin, upcoming_end);  // claimed now, so that its weights stream in during this chunk
      g.run_chunk(begin, end, more ? upcoming_begin : 0, more ? upcoming_end : 0);
    }
  });
}

}  // namespace mk
