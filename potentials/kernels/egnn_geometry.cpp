// Fused EGNN edge geometry on the CPU: per edge, from its vector v (3) and length r, the Bessel
// radial basis, the polynomial cutoff envelope and the real spherical harmonics of v / r, and
// in the backward pass the gradients of v and r from theirs. The same functions as
// mlff.potentials.layers.BesselBasis, PolynomialEnvelope and harmonics.real_harmonics:
//
//   rad[b] = prefactor * sin(freq[b] * r / cutoff) / max(r, 1e-9)
//   env    = max(1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2), 0) for x = r / cutoff
//            < 1, else 0
//   Y[k]   = sum over the monomials [u_a, u_a u_b, u_a u_b u_c] of u = v / r times the harmonic
//            matrix[., k], given by its non-zero entries (terms, coefficients)
//
// Edges are independent: OpenMP threads split them evenly. Computed in double whatever T is.

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

// sin and cos of x (|x| up to about 1e5) to about one unit in the last place, written so that
// loops calling it vectorise: x = j pi/2 + y (three-part pi/2), Cephes polynomials on
// |y| <= pi/4, the quadrant j mod 4 picks and signs them
inline void sincos_vec(double x, double& s, double& c) {
  double j = std::nearbyint(x * 0.63661977236758134308);
  double y = ((x - j * 1.5707963267341256e+00) - j * 6.077100506506192e-11) -
             j * 2.0222662487959506e-21;
  double z = y * y;
  double sp = 1.58962301576546568060e-10;
  sp = sp * z - 2.50507477628578072866e-8;
  sp = sp * z + 2.75573136213857245213e-6;
  sp = sp * z - 1.98412698295895385996e-4;
  sp = sp * z + 8.33333333332211858878e-3;
  sp = sp * z - 1.66666666666666307295e-1;
  double sy = y + y * z * sp;
  double cp = -1.13585365213876817300e-11;
  cp = cp * z + 2.08757008419747316778e-9;
  cp = cp * z - 2.75573141792967388112e-7;
  cp = cp * z + 2.48015872888517045348e-5;
  cp = cp * z - 1.38888888888730564116e-3;
  cp = cp * z + 4.16666666666665929218e-2;
  double cy = 1.0 - 0.5 * z + z * z * cp;
  int64_t q = static_cast<int64_t>(j) & 3;
  double swap_s = (q & 1) ? cy : sy;
  double swap_c = (q & 1) ? sy : cy;
  s = (q & 2) ? -swap_s : swap_s;
  c = ((q + 1) & 2) ? -swap_c : swap_c;
}

struct Geometry {
  int n_basis;
  const double* frequencies;  // (n_basis)
  double cutoff, prefactor;
  int p;                  // envelope order
  int order;              // harmonics' highest degree (0: none)
  int M;                  // harmonics per edge
  int n_terms;            // non-zero coefficients of the harmonics in the monomials
  const int64_t* terms;   // (n_terms, 2): monomial row, harmonic
  const double* coefficients;  // (n_terms)
};

inline double ipow(double x, int n) {
  double result = 1.0;
  for (int k = 0; k < n; ++k) result *= x;
  return result;
}

constexpr int kMonomials = 39;
constexpr int kLanes = 8;  // edges per vector block

template <typename T>
void forward(int64_t first, int64_t end, const T* vec, const T* len, const Geometry& g, T* rad,
             T* env, T* Y) {
  const int p = g.p;
  const double a = -0.5 * (p + 1) * (p + 2), b = double(p) * (p + 2), cc = -0.5 * p * (p + 1);
  for (int64_t e0 = first; e0 < end; e0 += kLanes) {
    int lanes = static_cast<int>(std::min<int64_t>(kLanes, end - e0));
    double r[kLanes], x[kLanes], inv[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      r[l] = l < lanes ? double(len[e0 + l]) : 1.0;
      x[l] = r[l] / g.cutoff;
      inv[l] = 1.0 / std::max(r[l], 1e-9);
    }
    for (int k = 0; k < g.n_basis; ++k) {
      double out[kLanes];
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        double s, c;
        sincos_vec(g.frequencies[k] * x[l], s, c);
        out[l] = g.prefactor * s * inv[l];
      }
      for (int l = 0; l < lanes; ++l) rad[(e0 + l) * g.n_basis + k] = T(out[l]);
    }
    for (int l = 0; l < lanes; ++l) {
      double xl = x[l];
      double value = 1.0 + ipow(xl, p) * (a + xl * (b + xl * cc));
      env[e0 + l] = T(xl < 1.0 ? std::max(value, 0.0) : 0.0);
    }
  }
  if (!g.order) return;
  for (int64_t e = first; e < end; ++e) {
    double inv_r = 1.0 / double(len[e]);
    double u[3] = {vec[3 * e] * inv_r, vec[3 * e + 1] * inv_r, vec[3 * e + 2] * inv_r};
    double mono[kMonomials];
    for (int i = 0; i < 3; ++i) mono[i] = u[i];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) mono[3 + 3 * i + j] = u[i] * u[j];
    for (int i = 0; i < 9; ++i)
      for (int j = 0; j < 3; ++j) mono[12 + 3 * i + j] = mono[3 + i] * u[j];
    double y[kMonomials] = {};
    for (int t = 0; t < g.n_terms; ++t)
      y[g.terms[2 * t + 1]] += g.coefficients[t] * mono[g.terms[2 * t]];
    for (int k = 0; k < g.M; ++k) Y[e * g.M + k] = T(y[k]);
  }
}

template <typename T>
void backward(int64_t first, int64_t end, const T* vec, const T* len, const Geometry& g,
              const T* g_rad, const T* g_env, const T* g_Y, T* g_vec, T* g_len) {
  const int p = g.p;
  const double a = -0.5 * (p + 1) * (p + 2), b = double(p) * (p + 2), cc = -0.5 * p * (p + 1);
  for (int64_t e0 = first; e0 < end; e0 += kLanes) {
    int lanes = static_cast<int>(std::min<int64_t>(kLanes, end - e0));
    double r[kLanes], x[kLanes], inv[kLanes], d_inv[kLanes], grad_r[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      r[l] = l < lanes ? double(len[e0 + l]) : 1.0;
      x[l] = r[l] / g.cutoff;
      inv[l] = 1.0 / std::max(r[l], 1e-9);
      d_inv[l] = r[l] > 1e-9 ? -inv[l] * inv[l] : 0.0;  // d (1 / max(r, 1e-9)) / dr
      grad_r[l] = 0;
    }
    for (int k = 0; k < g.n_basis; ++k) {
      double w = g.frequencies[k], gr[kLanes];
      for (int l = 0; l < kLanes; ++l)
        gr[l] = l < lanes ? double(g_rad[(e0 + l) * g.n_basis + k]) : 0.0;
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        double s, c;
        sincos_vec(w * x[l], s, c);
        double d = g.prefactor * (c * (w / g.cutoff) * inv[l] + s * d_inv[l]);
        grad_r[l] += gr[l] * d;
      }
    }
    for (int l = 0; l < lanes; ++l) {
      double xl = x[l];
      double value = 1.0 + ipow(xl, p) * (a + xl * (b + xl * cc));
      if (xl < 1.0 && value >= 0.0) {
        double slope = ipow(xl, p - 1) * (p * a + xl * ((p + 1) * b + xl * (p + 2) * cc));
        grad_r[l] += double(g_env[e0 + l]) * slope / g.cutoff;
      }
      g_len[e0 + l] = T(grad_r[l]);
      g_vec[3 * (e0 + l)] = g_vec[3 * (e0 + l) + 1] = g_vec[3 * (e0 + l) + 2] = T(0);
    }
  }
  if (!g.order) return;
  for (int64_t e = first; e < end; ++e) {
    double r = double(len[e]), inv_r = 1.0 / r;
    double v[3] = {double(vec[3 * e]), double(vec[3 * e + 1]), double(vec[3 * e + 2])};
    double u[3] = {v[0] * inv_r, v[1] * inv_r, v[2] * inv_r};
    double g_mono[kMonomials] = {};
    for (int t = 0; t < g.n_terms; ++t)
      g_mono[g.terms[2 * t]] += g.coefficients[t] * double(g_Y[e * g.M + g.terms[2 * t + 1]]);
    double g_u[3] = {g_mono[0], g_mono[1], g_mono[2]};
    if (g.order > 1) {
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          double gm = g_mono[3 + 3 * i + j];
          g_u[i] += gm * u[j];
          g_u[j] += gm * u[i];
        }
    }
    if (g.order > 2) {
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
          for (int k = 0; k < 3; ++k) {
            double gm = g_mono[12 + 9 * i + 3 * j + k];
            g_u[i] += gm * u[j] * u[k];
            g_u[j] += gm * u[i] * u[k];
            g_u[k] += gm * u[i] * u[j];
          }
    }
    // u = v / r with r its own input: dv = g_u / r, dr = -(g_u . v) / r^2
    double dot = g_u[0] * v[0] + g_u[1] * v[1] + g_u[2] * v[2];
    for (int i = 0; i < 3; ++i) g_vec[3 * e + i] = T(g_u[i] * inv_r);
    g_len[e] = T(double(g_len[e]) - dot * inv_r * inv_r);
  }
}

}  // namespace

// Edges first .. end of n_edges split evenly over the OpenMP threads.
#define MLFF_GEOMETRY_PARALLEL(CALL)                                         \
  _Pragma("omp parallel num_threads(n_parts)") {                            \
    int n = omp_threads(), t = omp_thread();                                 \
    int64_t first = n_edges * t / n, end = n_edges * (t + 1) / n;            \
    CALL;                                                                    \
  }

extern "C" int omp_get_num_threads();
extern "C" int omp_get_thread_num();
static inline int omp_threads() { return omp_get_num_threads(); }
static inline int omp_thread() { return omp_get_thread_num(); }

#define MLFF_GEOMETRY_ENTRY_POINTS(T, SUFFIX)                                                   \
  extern "C" int mlff_geometry_forward_##SUFFIX(                                                \
      int64_t n_edges, int n_parts, const T* vec, const T* len, int n_basis,                    \
      const double* frequencies, double cutoff, double prefactor, int p, int order, int M,      \
      int n_terms, const int64_t* terms, const double* coefficients, T* rad, T* env, T* Y) {    \
    Geometry g{n_basis, frequencies, cutoff,  prefactor,                                        \
               p,       order,       M,      n_terms, terms, coefficients};                    \
    MLFF_GEOMETRY_PARALLEL((forward<T>(first, end, vec, len, g, rad, env, Y)))                  \
    return 0;                                                                                   \
  }                                                                                             \
  extern "C" int mlff_geometry_backward_##SUFFIX(                                               \
      int64_t n_edges, int n_parts, const T* vec, const T* len, int n_basis,                    \
      const double* frequencies, double cutoff, double prefactor, int p, int order, int M,      \
      int n_terms, const int64_t* terms, const double* coefficients, const T* g_rad,            \
      const T* g_env, const T* g_Y, T* g_vec, T* g_len) {                                       \
    Geometry g{n_basis, frequencies, cutoff,  prefactor,                                        \
               p,       order,       M,      n_terms, terms, coefficients};                    \
    MLFF_GEOMETRY_PARALLEL((backward<T>(first, end, vec, len, g, g_rad, g_env, g_Y, g_vec,      \
                                        g_len)))                                                \
    return 0;                                                                                   \
  }

MLFF_GEOMETRY_ENTRY_POINTS(float, f32)
MLFF_GEOMETRY_ENTRY_POINTS(double, f64)
