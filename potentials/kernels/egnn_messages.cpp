// Fused EGNN message block on the CPU: forward and backward of one layer's edge sums, edge by
// edge per centre atom, with no per-edge intermediate written to memory.
//
// For every edge e = (i <- j) of a centre atom i (edges sorted by centre; atom i owns edges
// ptr[i] .. ptr[i+1]):
//
//   pre = c[i] + nb[j] + Wr rad[e]              (F)   first message layer, h_i and h_j per atom
//   x   = silu(pre)
//   z   = W2 x + b2
//   u   = silu(z)
//   s   = sigmoid(g . u + gb)                         attention gate
//   m   = u * s * env[e]                              the message
//   agg[i]     += m                             (F)
//   dens[i, k] += Y[e, k] * m                   (M, F)   sums along the edge directions
//
// The backward pass recomputes pre, z, u and s from the inputs (cheaper than storing them: the
// per-edge tensors then never leave the cache) and gives the gradients of c, nb, rad, env and Y
// from those of agg and dens. Weight gradients are not computed (inference only).
//
// Plain C++ with no Python or torch headers: built once per machine by mlff.potentials.fused
// and called through ctypes. Threads are OpenMP's: linked against libgomp.so.1, the library
// shares the OpenMP runtime (and its thread pool) that torch has already loaded.

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int kRows = 4;  // edges per register tile

template <typename T>
struct Weights {
  const T* WrT;  // (B, F): the radial block's weight, transposed
  const T* W2T;  // (F, F): the second message layer's weight, transposed (in, out)
  const T* W2;   // (F, F): the same weight as stored (out, in)
  const T* b2;   // (F)
  const T* g;    // (F): gate weight
  T gb;          // gate bias (read from its tensor once per call)
  int B;         // radial features (basis + edge features)
  int M;         // harmonics (0: no direction sums)
};

// exp(x) in float to about one unit in the last place, written so that the compiler vectorises
// the loops that call it (no libm call): x = n ln2 + r with |r| <= ln2 / 2, a Taylor polynomial
// of r, and 2^n put into the exponent bits. x is clamped to where exp(x) stays a finite normal
// number.
inline float exp_vec(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693145751953125f - n * 1.42860682030941723e-06f;
  float p = 1.0f / 40320;
  p = p * r + 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
}

inline float sigmoid(float v) { return 1.0f / (1.0f + exp_vec(-v)); }

// In double, exp(-v) = 2^n P(r) / Q(r) with the [6/6] Pade approximant of exp on
// |r| <= ln2 / 2 (error below 1e-18). P and Q share their even and odd parts, so
// sigmoid = Q / (Q + 2^n P) costs seven multiply-adds and the one division, where a Taylor
// series as in the float exp needs thirteen terms (timed alone: 10 % off the double kernel)
inline double sigmoid(double v) {
  double x = std::min(std::max(-v, -700.0), 700.0);
  double n = std::floor(x * 1.44269504088896340736 + 0.5);
  double r = x - n * 0.693147180369123816490 - n * 1.90821492927058770002e-10;
  double r2 = r * r;
  double even = 1.0 + r2 * (5.0 / 44.0 + r2 * (1.0 / 792.0 + r2 * (1.0 / 665280.0)));
  double odd = r * (0.5 + r2 * (1.0 / 66.0 + r2 * (1.0 / 15840.0)));
  double scale = __builtin_bit_cast(double, (static_cast<int64_t>(n) + 1023) << 52);
  double q = even - odd;
  return q / (q + scale * (even + odd));
}

template <typename T, int F>
inline T dot(const T* a, const T* b) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int f = 0; f < F; ++f) sum += a[f] * b[f];
  return sum;
}

// out[r] += sum_k in(r, k) * weights[k] for the kRows rows of a tile: weights (K, F) row-major,
// in(r, k) the row's k-th input. Rows go in groups whose accumulators fit in 16 of the 32
// 512-bit registers (all four rows in float up to F = 64, two in double), which stay there
// over k: more would spill every step.
template <typename T, int F, typename Input>
inline void add_row_products(T (&out)[kRows][F], const T* weights, int K, Input in) {
  constexpr int kVectors = (F * static_cast<int>(sizeof(T)) + 63) / 64;  // registers per row
  constexpr int kGroup = std::max(1, std::min(kRows, 16 / kVectors));
  static_assert(kRows % kGroup == 0, "row groups tile the rows");
  for (int r0 = 0; r0 < kRows; r0 += kGroup) {
    T acc[kGroup][F];  // local: the compiler can keep it in registers (out may alias weights)
    for (int r = 0; r < kGroup; ++r)
      for (int f = 0; f < F; ++f) acc[r][f] = out[r0 + r][f];
    for (int k = 0; k < K; ++k) {
      const T* wk = weights + static_cast<int64_t>(k) * F;
      for (int r = 0; r < kGroup; ++r) {
        T a = in(r0 + r, k);
#pragma omp simd
        for (int f = 0; f < F; ++f) acc[r][f] += a * wk[f];
      }
    }
    for (int r = 0; r < kGroup; ++r)
      for (int f = 0; f < F; ++f) out[r0 + r][f] = acc[r][f];
  }
}

// pre, x = silu(pre), z, u = silu(z), their sigmoids and the gate s of `rows` (<= kRows) edges
// starting at edge e of a centre atom whose first-layer part is c_i. Rows past `rows` repeat the
// last edge (their results are not used).
template <typename T, int F>
struct Tile {
  T pre[kRows][F], sp[kRows][F];  // pre-activation and sigmoid(pre)
  T z[kRows][F], sz[kRows][F];    // second layer's output and sigmoid(z)
  T u[kRows][F];                  // silu(z)
  T s[kRows];                     // gate
  T weight[kRows];                // s * envelope
  int rows;

  void forward(int n_rows, int64_t e, const T* c_i, const T* nb, const int64_t* nbr,
               const T* rad, const T* env, const Weights<T>& w) {
    rows = n_rows;
    const T* nbj[kRows];
    const T* rad_r[kRows];
    for (int r = 0; r < kRows; ++r) {
      int64_t edge = e + std::min(r, rows - 1);
      nbj[r] = nb + nbr[edge] * F;
      rad_r[r] = rad + edge * w.B;
    }
    for (int r = 0; r < kRows; ++r) {
#pragma omp simd
      for (int f = 0; f < F; ++f) pre[r][f] = c_i[f] + nbj[r][f];
    }
    add_row_products<T, F>(pre, w.WrT, w.B, [&](int r, int b) { return rad_r[r][b]; });
    T x[kRows][F];
    for (int r = 0; r < kRows; ++r) {
#pragma omp simd
      for (int f = 0; f < F; ++f) {
        sp[r][f] = sigmoid(pre[r][f]);
        x[r][f] = pre[r][f] * sp[r][f];
        z[r][f] = w.b2[f];
      }
    }
    add_row_products<T, F>(z, w.W2T, F, [&](int r, int k) { return x[r][k]; });
    for (int r = 0; r < kRows; ++r) {
#pragma omp simd
      for (int f = 0; f < F; ++f) {
        sz[r][f] = sigmoid(z[r][f]);
        u[r][f] = z[r][f] * sz[r][f];
      }
      s[r] = sigmoid(w.gb + dot<T, F>(u[r], w.g));
      weight[r] = r < rows ? s[r] * env[e + r] : T(0);
    }
  }
};

template <typename T, int F>
void forward(int64_t first, int64_t end, const int64_t* ptr, const int64_t* nbr, const T* c,
             const T* nb, const T* rad, const T* env, const T* Y, const Weights<T>& w, T* agg,
             T* dens) {
  const int M = w.M;
  Tile<T, F> t;
  for (int64_t i = first; i < end; ++i) {
    T* agg_i = agg + i * F;
    T* dens_i = M ? dens + i * M * F : nullptr;
    std::fill(agg_i, agg_i + F, T(0));
    if (M) std::fill(dens_i, dens_i + static_cast<int64_t>(M) * F, T(0));
    for (int64_t e = ptr[i]; e < ptr[i + 1]; e += kRows) {
      t.forward(static_cast<int>(std::min<int64_t>(kRows, ptr[i + 1] - e)), e, c + i * F, nb,
                nbr, rad, env, w);
      T m[kRows][F];  // the messages (zero past the tile's rows)
      for (int r = 0; r < kRows; ++r) {
#pragma omp simd
        for (int f = 0; f < F; ++f) m[r][f] = t.u[r][f] * t.weight[r];
      }
#pragma omp simd
      for (int f = 0; f < F; ++f) agg_i[f] += (m[0][f] + m[1][f]) + (m[2][f] + m[3][f]);
      for (int k = 0; k < M; ++k) {
        T y[kRows];
        for (int r = 0; r < kRows; ++r) y[r] = Y[(e + std::min(r, t.rows - 1)) * M + k];
        T* d = dens_i + k * F;
#pragma omp simd
        for (int f = 0; f < F; ++f)
          d[f] += (y[0] * m[0][f] + y[1] * m[1][f]) + (y[2] * m[2][f] + y[3] * m[3][f]);
      }
    }
  }
}

// out[r][0..N) = sum_f a[r][f] * b[f][0..N) for the kRows rows of a (F) and b (F, N): four
// independent accumulators, so the sums over f do not wait on each other
template <typename T, int F, int N>
inline void rows_times(const T (&a)[kRows][F], const T* b, T (&out)[kRows][N]) {
  T acc0[N] = {}, acc1[N] = {}, acc2[N] = {}, acc3[N] = {};
  for (int f = 0; f < F; ++f) {
    const T* bf = b + f * N;
    T a0 = a[0][f], a1 = a[1][f], a2 = a[2][f], a3 = a[3][f];
#pragma omp simd
    for (int k = 0; k < N; ++k) {
      acc0[k] += a0 * bf[k];
      acc1[k] += a1 * bf[k];
      acc2[k] += a2 * bf[k];
      acc3[k] += a3 * bf[k];
    }
  }
  for (int k = 0; k < N; ++k) {
    out[0][k] = acc0[k];
    out[1][k] = acc1[k];
    out[2][k] = acc2[k];
    out[3][k] = acc3[k];
  }
}
static_assert(kRows == 4, "rows_times unrolls four rows");

constexpr int kHarmonics = 16;  // harmonics per edge, at most (degrees 1..3: 15)
constexpr int kBasis = 16;      // radial features up to which their gradient is one small product

template <typename T, int F>
void backward(int64_t first, int64_t end, const int64_t* ptr, const int64_t* nbr, const T* c,
              const T* nb, const T* rad, const T* env, const T* Y, const Weights<T>& w,
              const T* g_agg, const T* g_dens, T* g_c, T* g_nb, T* g_rad, T* g_env, T* g_Y) {
  const int M = w.M;
  const int B = w.B;
  Tile<T, F> t;
  T gz[kRows][F], gx[kRows][F];
  T gdT[F][kHarmonics];  // the atom's density gradient, transposed and padded
  T Wr[F * kBasis];      // the radial weight (F, B), padded to kBasis columns
  for (int f = 0; f < F; ++f)
    for (int b = 0; b < kBasis; ++b) Wr[f * kBasis + b] = b < B ? w.WrT[b * F + f] : T(0);
  for (int64_t i = first; i < end; ++i) {
    const T* ga = g_agg + i * F;
    const T* gd = M ? g_dens + i * M * F : nullptr;
    T* gc_i = g_c + i * F;
    std::fill(gc_i, gc_i + F, T(0));
    if (M) {
      for (int f = 0; f < F; ++f)
        for (int k = 0; k < kHarmonics; ++k) gdT[f][k] = k < M ? gd[k * F + f] : T(0);
    }
    for (int64_t e = ptr[i]; e < ptr[i + 1]; e += kRows) {
      t.forward(static_cast<int>(std::min<int64_t>(kRows, ptr[i + 1] - e)), e, c + i * F, nb,
                nbr, rad, env, w);
      // gradient of each message: ga + sum_k Y_k gd_k
      T gm[kRows][F];
      for (int r = 0; r < kRows; ++r) {
#pragma omp simd
        for (int f = 0; f < F; ++f) gm[r][f] = ga[f];
      }
      for (int k = 0; k < M; ++k) {
        T y[kRows];
        for (int r = 0; r < kRows; ++r) y[r] = Y[(e + std::min(r, t.rows - 1)) * M + k];
        const T* d = gd + k * F;
        for (int r = 0; r < kRows; ++r) {
#pragma omp simd
          for (int f = 0; f < F; ++f) gm[r][f] += y[r] * d[f];
        }
      }
      // gradient of the harmonics: gd_k . m = (gd_k . u) s env, for all k at once
      if (M) {
        T du[kRows][kHarmonics];
        rows_times<T, F, kHarmonics>(t.u, &gdT[0][0], du);
        for (int r = 0; r < t.rows; ++r)
          for (int k = 0; k < M; ++k) g_Y[(e + r) * M + k] = du[r][k] * t.weight[r];
      }
      for (int r = 0; r < kRows; ++r) {
        T q = dot<T, F>(gm[r], t.u[r]);
        T ev = r < t.rows ? env[e + r] : T(0);
        if (r < t.rows) g_env[e + r] = q * t.s[r];
        T direct = t.s[r] * ev;
        T through_gate = q * ev * t.s[r] * (T(1) - t.s[r]);
#pragma omp simd
        for (int f = 0; f < F; ++f) {
          T gu = gm[r][f] * direct + through_gate * w.g[f];
          gz[r][f] = gu * t.sz[r][f] * (T(1) + t.z[r][f] * (T(1) - t.sz[r][f]));
          gx[r][f] = T(0);
        }
      }
      add_row_products<T, F>(gx, w.W2, F, [&](int r, int o) { return gz[r][o]; });
      T gpre[kRows][F];
      for (int r = 0; r < kRows; ++r) {
#pragma omp simd
        for (int f = 0; f < F; ++f)
          gpre[r][f] = gx[r][f] * t.sp[r][f] * (T(1) + t.pre[r][f] * (T(1) - t.sp[r][f]));
      }
      for (int r = 0; r < t.rows; ++r) {
        T* gnb_j = g_nb + nbr[e + r] * F;
#pragma omp simd
        for (int f = 0; f < F; ++f) {
          gc_i[f] += gpre[r][f];
          gnb_j[f] += gpre[r][f];
        }
      }
      if (B <= kBasis) {  // gpre times the radial weight (F, B), padded to kBasis columns
        T dr[kRows][kBasis];
        rows_times<T, F, kBasis>(gpre, Wr, dr);
        for (int r = 0; r < t.rows; ++r)
          for (int b = 0; b < B; ++b) g_rad[(e + r) * B + b] = dr[r][b];
      } else {
        for (int r = 0; r < t.rows; ++r)
          for (int b = 0; b < B; ++b)
            g_rad[(e + r) * B + b] = dot<T, F>(gpre[r], w.WrT + static_cast<int64_t>(b) * F);
      }
    }
  }
}

template <typename T>
Weights<T> weights(const T* WrT, const T* W2T, const T* W2, const T* b2, const T* g, const T* gb,
                   int B, int M) {
  return Weights<T>{WrT, W2T, W2, b2, g, *gb, B, M};
}

}  // namespace

// One range of centre atoms per thread: atoms cuts[p] .. cuts[p + 1] go to thread p, which in
// the backward pass adds its neighbour gradients into its own g_nb + p * n_rows * F.
#define MLFF_PARALLEL(CALL)                                       \
  _Pragma("omp parallel for num_threads(n_parts) schedule(static, 1)") \
  for (int p = 0; p < n_parts; ++p) {                             \
    int64_t first = cuts[p], end = cuts[p + 1];                   \
    CALL;                                                         \
  }

#define MLFF_DISPATCH(F, CALL) \
  if (M > kHarmonics) return 2; \
  switch (F) {                 \
    case 16: {                 \
      constexpr int kF = 16;   \
      MLFF_PARALLEL(CALL)      \
      return 0;                \
    }                          \
    case 32: {                 \
      constexpr int kF = 32;   \
      MLFF_PARALLEL(CALL)      \
      return 0;                \
    }                          \
    case 64: {                 \
      constexpr int kF = 64;   \
      MLFF_PARALLEL(CALL)      \
      return 0;                \
    }                          \
    case 128: {                \
      constexpr int kF = 128;  \
      MLFF_PARALLEL(CALL)      \
      return 0;                \
    }                          \
    default:                   \
      return 1;                \
  }

#define MLFF_ENTRY_POINTS(T, SUFFIX)                                                             \
  extern "C" int mlff_messages_forward_##SUFFIX(                                                 \
      const int64_t* cuts, int n_parts, const int64_t* ptr, const int64_t* nbr, int F, int B,    \
      int M, const T* c, const T* nb, const T* rad, const T* env, const T* Y, const T* WrT,      \
      const T* W2T, const T* W2, const T* b2, const T* g, const T* gb, T* agg, T* dens) {          \
    Weights<T> w = weights<T>(WrT, W2T, W2, b2, g, gb, B, M);                                    \
    MLFF_DISPATCH(F, (forward<T, kF>(first, end, ptr, nbr, c, nb, rad, env, Y, w, agg, dens)))   \
  }                                                                                              \
  extern "C" int mlff_messages_backward_##SUFFIX(                                                \
      const int64_t* cuts, int n_parts, const int64_t* ptr, const int64_t* nbr, int F, int B,    \
      int M, const T* c, const T* nb, const T* rad, const T* env, const T* Y, const T* WrT,      \
      const T* W2T, const T* W2, const T* b2, const T* g, const T* gb, const T* g_agg,          \
      const T* g_dens, T* g_c, int64_t n_rows, T* g_nb, T* g_rad, T* g_env, T* g_Y) {           \
    Weights<T> w = weights<T>(WrT, W2T, W2, b2, g, gb, B, M);                                    \
    MLFF_DISPATCH(F, (backward<T, kF>(first, end, ptr, nbr, c, nb, rad, env, Y, w, g_agg,        \
                                      g_dens, g_c, g_nb + p * n_rows * kF, g_rad, g_env, g_Y)))  \
  }

MLFF_ENTRY_POINTS(float, f32)
MLFF_ENTRY_POINTS(double, f64)
