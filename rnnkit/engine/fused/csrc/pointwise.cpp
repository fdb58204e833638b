// Pointwise kernels of the fused engine. Compiled with vectorised math (-ffast-math, so that the
// compiler calls glibc's SIMD exp/tanh); no torch headers, no reductions whose order matters beyond
// float rounding. See pointwise.h for the contracts.
#include "pointwise.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <cstring>

namespace rnnkit {
namespace {

template <typename T>
inline T sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }

template <typename T>
inline T tanh_(T x) { return std::tanh(x); }

// mean and 1/sqrt(var + eps) of x[0..H) (biased variance, as torch's layer norm)
template <typename T>
inline void moments(const T* x, int64_t H, T eps, T& mean, T& rstd) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < H; ++j) sum += x[j];
  const T m = sum / T(H);
  T sq = 0;
#pragma omp simd reduction(+ : sq)
  for (int64_t j = 0; j < H; ++j) sq += (x[j] - m) * (x[j] - m);
  mean = m;
  rstd = T(1) / std::sqrt(sq / T(H) + eps);
}

}  // namespace

template <typename T>
void layer_norm_add(int64_t n, int64_t groups, int64_t H, const T* pre, const T* gain, const T* bias, T* target,
                    int64_t target_stride, T* mean, T* rstd, T eps, bool accumulate) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t k = 0; k < groups; ++k) {
      const T* x = pre + (r * groups + k) * H;
      const T* w = gain + k * H;
      T* out = target + r * target_stride + k * H;
      T m, s;
      moments(x, H, eps, m, s);  // (all of the group read before any of it is written: out may be x)
      mean[r * groups + k] = m;
      rstd[r * groups + k] = s;
      if (accumulate) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) out[j] += (x[j] - m) * s * w[j];
      } else if (bias) {
        const T* b = bias + k * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) out[j] = (x[j] - m) * s * w[j] + b[j];
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) out[j] = (x[j] - m) * s * w[j];
      }
    }
  }
}

template <typename T>
void layer_norm_backward(int64_t n, int64_t groups, int64_t H, const T* grad, int64_t grad_stride,
                         const T* pre, const T* gain, const T* mean, const T* rstd, T* grad_pre, double* grad_gain,
                         double* grad_bias) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t k = 0; k < groups; ++k) {
      const T* dy = grad + r * grad_stride + k * H;
      const T* x = pre + (r * groups + k) * H;
      const T* w = gain + k * H;
      T* dx = grad_pre + (r * groups + k) * H;
      const T m = mean[r * groups + k], s = rstd[r * groups + k];
      if (grad_gain) {
        double* dw = grad_gain + k * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) dw[j] += double(dy[j] * (x[j] - m) * s);
      }
      if (grad_bias) {
        double* db = grad_bias + k * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) db[j] += double(dy[j]);
      }
      // the row's two means in T, like the cell norm's in lstm_backward_row: summing them in double (as this
      // did before) made the whole kernel 1.7x slower (19 vs 11 us a step at 32 rows x 4 x 128, AVX2) for
      // a rounding difference far inside the float32 tolerance the tests hold the engine to
      T sum_a = 0, sum_b = 0;
#pragma omp simd reduction(+ : sum_a, sum_b)
      for (int64_t j = 0; j < H; ++j) {
        const T wdy = dy[j] * w[j];
        sum_a += wdy;
        sum_b += wdy * (x[j] - m) * s;
      }
      const T a = sum_a / T(H), b = sum_b / T(H);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) dx[j] = s * (dy[j] * w[j] - a - (x[j] - m) * s * b);
    }
  }
}

template <typename T>
void lstm_forward_rows(int64_t n, int64_t H, T* act, const T* h_prev, const T* c_prev, T* cell_tilde,
                       T* tanh_c, T* h_next, T* c_next, const T* peephole, const T* cell_gain,
                       const T* cell_bias, T* cell_mean, T* cell_rstd, const T* zone_h, const T* zone_c, T eps) {
  for (int64_t r = 0; r < n; ++r) {
    T* a = act + r * 4 * H;
    const T* cp = c_prev + r * H;
    const T* hp = h_prev + r * H;
    T* ct = cell_tilde + r * H;
    T* tc = tanh_c + r * H;
    T* hn = h_next + r * H;
    if (peephole) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i = sigmoid(a[j] + peephole[j] * cp[j]);
        const T f = sigmoid(a[H + j] + peephole[H + j] * cp[j]);
        const T g = tanh_(a[2 * H + j]);
        const T c = f * cp[j] + i * g;
        a[j] = i;
        a[H + j] = f;
        a[2 * H + j] = g;
        a[3 * H + j] = sigmoid(a[3 * H + j] + peephole[2 * H + j] * c);
        ct[j] = c;
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T i = sigmoid(a[j]);
        const T f = sigmoid(a[H + j]);
        const T g = tanh_(a[2 * H + j]);
        a[j] = i;
        a[H + j] = f;
        a[2 * H + j] = g;
        a[3 * H + j] = sigmoid(a[3 * H + j]);
        ct[j] = f * cp[j] + i * g;
      }
    }
    if (cell_gain) {
      T m, s;
      moments(ct, H, eps, m, s);
      cell_mean[r] = m;
      cell_rstd[r] = s;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) tc[j] = tanh_((ct[j] - m) * s * cell_gain[j] + cell_bias[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) tc[j] = tanh_(ct[j]);
    }
    if (zone_h) {
      const T* zh = zone_h + r * H;
      const T* zc = zone_c + r * H;
      T* cn = c_next + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T h = a[3 * H + j] * tc[j];
        hn[j] = h + zh[j] * (hp[j] - h);
        cn[j] = ct[j] + zc[j] * (cp[j] - ct[j]);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) hn[j] = a[3 * H + j] * tc[j];
    }
  }
}

namespace {

// the elementwise part of one LSTM backward row, with the options fixed at compile time so that the
// loop has no branches and vectorises
// d loss / d h~_t (before zoneout) from d loss / d h_t
template <typename T, bool Zone>
inline T unzoned(T gh, const T* zh, int64_t j) {
  if constexpr (Zone) {
    return gh * (T(1) - zh[j]);
  } else {
    return gh;
  }
}

// the local derivatives are recomputed from the activations act = (i, f, g, o), tanh_c and c_prev
template <typename T, bool Peep, bool CellNorm, bool Zone>
inline void lstm_backward_row(int64_t H, const T* gh, T* gc, const T* act, const T* tc, const T* cp, T* gg,
                              const T* peephole, const T* shown, const T* cell_gain, const T* ct, T m, T s, T a, T b,
                              const T* zh, const T* zc) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = act[j], f = act[H + j], g = act[2 * H + j], o = act[3 * H + j], t = tc[j];
    const T d = unzoned<T, Zone>(gh[j], zh, j);
    T into_cell;
    if constexpr (CellNorm) {
      into_cell = s * (shown[j] * cell_gain[j] - a - (ct[j] - m) * s * b);
    } else {
      into_cell = d * o * (T(1) - t * t);
    }
    T gct;
    if constexpr (Zone) {
      gct = gc[j] * (T(1) - zc[j]) + into_cell;
    } else {
      gct = gc[j] + into_cell;
    }
    const T go = d * t * o * (T(1) - o);
    gg[3 * H + j] = go;
    if constexpr (Peep) gct += go * peephole[2 * H + j];
    const T gi = gct * g * i * (T(1) - i), gf = gct * cp[j] * f * (T(1) - f);
    gg[j] = gi;
    gg[H + j] = gf;
    gg[2 * H + j] = gct * (T(1) - g * g) * i;
    T next;
    if constexpr (Zone) {
      next = gc[j] * zc[j] + gct * f;
    } else {
      next = gct * f;
    }
    if constexpr (Peep) next += gi * peephole[j] + gf * peephole[H + j];
    gc[j] = next;
  }
}

template <typename T, bool Peep, bool CellNorm, bool Zone>
void lstm_backward_impl(int64_t n, int64_t H, const T* grad_h, T* grad_c, T* tanh_c, const T* c_prev,
                        const T* act, T* grad_gates, T* grad_prev, const T* peephole, const T* cell_tilde,
                        const T* cell_gain, const T* cell_bias, const T* cell_mean, const T* cell_rstd, T* grad_shown,
                        double* cell_sums, const T* zone_h, const T* zone_c) {
  for (int64_t r = 0; r < n; ++r) {
    const T* gh = grad_h + r * H;
    T* tc = tanh_c + r * H;
    const T* ar = act + r * 4 * H;
    const T* zh = Zone ? zone_h + r * H : nullptr;
    const T* ct = cell_tilde + r * H;
    T a = 0, b = 0, m = 0, s = 0;
    T* shown = nullptr;
    if constexpr (CellNorm) {  // tanh(c^) recomputed as the forward computed it
      m = cell_mean[r];
      s = cell_rstd[r];
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) tc[j] = tanh_((ct[j] - m) * s * cell_gain[j] + cell_bias[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) tc[j] = tanh_(ct[j]);
    }
    if constexpr (CellNorm) {
      shown = grad_shown + r * H;
#pragma omp simd reduction(+ : a, b)
      for (int64_t j = 0; j < H; ++j) {
        const T d = unzoned<T, Zone>(gh[j], zh, j) * ar[3 * H + j] * (T(1) - tc[j] * tc[j]);  // d loss / d c^
        shown[j] = d;
        a += d * cell_gain[j];
        b += d * cell_gain[j] * (ct[j] - m) * s;
      }
      a /= T(H);
      b /= T(H);
      double* gain_sum = cell_sums;
      double* bias_sum = cell_sums + H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        gain_sum[j] += double(shown[j]) * double((ct[j] - m) * s);
        bias_sum[j] += double(shown[j]);
      }
    }
    lstm_backward_row<T, Peep, CellNorm, Zone>(H, gh, grad_c + r * H, ar, tc, c_prev + r * H, grad_gates + r * 4 * H,
                                               peephole, shown, cell_gain, ct, m, s, a, b, zh,
                                               Zone ? zone_c + r * H : nullptr);
    if constexpr (Zone) {
      T* gp = grad_prev + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) gp[j] += gh[j] * zh[j];
    }
  }
}

}  // namespace

template <typename T>
void lstm_backward_rows(int64_t n, int64_t H, const T* grad_h, T* grad_c, T* tanh_c, const T* c_prev,
                        const T* act, T* grad_gates, T* grad_prev, const T* peephole, const T* cell_tilde,
                        const T* cell_gain, const T* cell_bias, const T* cell_mean, const T* cell_rstd,
                        T* grad_shown, double* cell_sums, const T* zone_h, const T* zone_c) {
  const int which = (peephole ? 4 : 0) + (cell_gain ? 2 : 0) + (zone_h ? 1 : 0);
#define RNNKIT_LSTM_BACKWARD(P, C, Z)                                                                         \
  lstm_backward_impl<T, P, C, Z>(n, H, grad_h, grad_c, tanh_c, c_prev, act, grad_gates, grad_prev, peephole, \
                                 cell_tilde, cell_gain, cell_bias, cell_mean, cell_rstd, grad_shown, cell_sums, \
                                 zone_h, zone_c)
  switch (which) {
    case 0: RNNKIT_LSTM_BACKWARD(false, false, false); break;
    case 1: RNNKIT_LSTM_BACKWARD(false, false, true); break;
    case 2: RNNKIT_LSTM_BACKWARD(false, true, false); break;
    case 3: RNNKIT_LSTM_BACKWARD(false, true, true); break;
    case 4: RNNKIT_LSTM_BACKWARD(true, false, false); break;
    case 5: RNNKIT_LSTM_BACKWARD(true, false, true); break;
    case 6: RNNKIT_LSTM_BACKWARD(true, true, false); break;
    default: RNNKIT_LSTM_BACKWARD(true, true, true); break;
  }
#undef RNNKIT_LSTM_BACKWARD
}

template <typename T>
void gru_forward_rows(int64_t n, int64_t H, T* act, const T* terms, T* n_term, const T* h_prev, T* candidate,
                      T* h_next, const T* zone) {
  for (int64_t r = 0; r < n; ++r) {
    T* a = act + r * 3 * H;
    const T* hp = h_prev + r * H;
    T* hn = h_next + r * H;
    T* out = zone ? candidate + r * H : hn;
    if (terms) {
      const T* u = terms + r * 3 * H;
      T* kept = n_term + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T rr = sigmoid(a[j] + u[j]);
        const T z = sigmoid(a[H + j] + u[H + j]);
        const T nn = tanh_(a[2 * H + j] + rr * u[2 * H + j]);
        a[j] = rr;
        a[H + j] = z;
        a[2 * H + j] = nn;
        kept[j] = u[2 * H + j];
        out[j] = nn + z * (hp[j] - nn);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T nn = tanh_(a[2 * H + j]);
        a[2 * H + j] = nn;
        out[j] = nn + a[H + j] * (hp[j] - nn);
      }
    }
    if (zone) {
      const T* zz = zone + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) hn[j] = out[j] + zz[j] * (hp[j] - out[j]);
    }
  }
}

namespace {

// the part both GRU forms share, per unit: from d loss / d h_t (gh), z, n, h_{t-1} and the zoneout mask zo,
// the z and n pre-activation gradients and d loss / d h_{t-1} along the direct path
template <typename T>
inline void gru_zn_backward(T gh, T z, T nn, T hp, T zo, T& dz, T& dn, T& direct) {
  const T d = gh * (T(1) - zo);  // d loss / d (h before zoneout)
  dz = d * (hp - nn) * z * (T(1) - z);
  dn = d * (T(1) - z) * (T(1) - nn * nn);
  direct = d * z + gh * zo;
}

}  // namespace

namespace {

// Optional per-unit inputs (zoneout masks, recurrent-dropout masks) are template flags, never `p ? p[j] : c` in a
// vectorised loop: GCC compiles that to a masked load (vmaskmovps) from p, and with p null every such load needs
// a fault-suppression microcode assist (page 0 is unmapped): 95% of the GRU backward kernel's samples and ~15% of
// a (256,50,64,128) GRU training step on a Zen 3 EPYC, in the loads right after it.
template <typename T, bool On>
inline T unit_or(const T* p, int64_t j, T otherwise) {
  if constexpr (On) {
    return p[j];
  } else {
    return otherwise;
  }
}

template <typename T, bool Zone>
void gru_backward_after_impl(int64_t n, int64_t H, const T* grad_h, const T* act, const T* h_prev, const T* n_term,
                             const T* zone, T* grad_hidden, T* grad_n, T* grad_prev) {
  for (int64_t r = 0; r < n; ++r) {
    const T* gh = grad_h + r * H;
    const T* a = act + r * 3 * H;
    const T* hp = h_prev + r * H;
    const T* u = n_term + r * H;
    T* g = grad_hidden + r * 3 * H;
    T* gn = grad_n + r * H;
    T* gp = grad_prev + r * H;
    const T* zz = Zone ? zone + r * H : zone;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T rr = a[j];
      T dz, dn, direct;
      gru_zn_backward(gh[j], a[H + j], a[2 * H + j], hp[j], unit_or<T, Zone>(zz, j, T(0)), dz, dn, direct);
      g[j] = dn * u[j] * rr * (T(1) - rr);
      g[H + j] = dz;
      g[2 * H + j] = dn * rr;
      gn[j] = dn;
      gp[j] += direct;
    }
  }
}

template <typename T, bool Zone>
void gru_backward_before_zn_impl(int64_t n, int64_t H, const T* grad_h, const T* act, const T* h_prev,
                                 const T* zone, T* grad_gates, T* grad_prev) {
  for (int64_t r = 0; r < n; ++r) {
    const T* gh = grad_h + r * H;
    const T* a = act + r * 3 * H;
    const T* hp = h_prev + r * H;
    T* g = grad_gates + r * 3 * H;
    T* gp = grad_prev + r * H;
    const T* zz = Zone ? zone + r * H : zone;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T dz, dn, direct;
      gru_zn_backward(gh[j], a[H + j], a[2 * H + j], hp[j], unit_or<T, Zone>(zz, j, T(0)), dz, dn, direct);
      g[H + j] = dz;
      g[2 * H + j] = dn;
      gp[j] += direct;
    }
  }
}

template <typename T, bool Mask>
void gru_backward_before_r_impl(int64_t n, int64_t H, const T* grad_rh, const T* act, const T* h_prev,
                                const T* mask, T* grad_gates, T* grad_prev) {
  for (int64_t r = 0; r < n; ++r) {
    const T* grh = grad_rh + r * H;
    const T* a = act + r * 3 * H;
    const T* hp = h_prev + r * H;
    const T* m = Mask ? mask + r * H : mask;
    T* g = grad_gates + r * 3 * H;
    T* gp = grad_prev + r * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T rr = a[j], keep = unit_or<T, Mask>(m, j, T(1));
      g[j] = grh[j] * hp[j] * keep * rr * (T(1) - rr);
      gp[j] += grh[j] * rr * keep;
    }
  }
}

template <typename T, bool Zone>
void simple_backward_impl(int64_t n, int64_t H, const T* grad_h, const T* act, const T* zone, bool relu,
                          T* grad_pre) {
  for (int64_t r = 0; r < n; ++r) {
    const T* gh = grad_h + r * H;
    const T* a = act + r * H;
    const T* zz = Zone ? zone + r * H : zone;
    T* out = grad_pre + r * H;
    if (relu) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {  // the load unconditional, then a blend (a conditional load is a masked one)
        const T d = gh[j] * (T(1) - unit_or<T, Zone>(zz, j, T(0)));
        out[j] = a[j] > T(0) ? d : T(0);
      }
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) out[j] = gh[j] * (T(1) - a[j] * a[j]) * (T(1) - unit_or<T, Zone>(zz, j, T(0)));
    }
  }
}

}  // namespace

template <typename T>
void gru_backward_after_rows(int64_t n, int64_t H, const T* grad_h, const T* act, const T* h_prev, const T* n_term,
                             const T* zone, T* grad_hidden, T* grad_n, T* grad_prev) {
  (zone ? gru_backward_after_impl<T, true> : gru_backward_after_impl<T, false>)(
      n, H, grad_h, act, h_prev, n_term, zone, grad_hidden, grad_n, grad_prev);
}

template <typename T>
void gru_backward_before_zn_rows(int64_t n, int64_t H, const T* grad_h, const T* act, const T* h_prev,
                                 const T* zone, T* grad_gates, T* grad_prev) {
  (zone ? gru_backward_before_zn_impl<T, true> : gru_backward_before_zn_impl<T, false>)(
      n, H, grad_h, act, h_prev, zone, grad_gates, grad_prev);
}

template <typename T>
void gru_backward_before_r_rows(int64_t n, int64_t H, const T* grad_rh, const T* act, const T* h_prev,
                                const T* mask, T* grad_gates, T* grad_prev) {
  (mask ? gru_backward_before_r_impl<T, true> : gru_backward_before_r_impl<T, false>)(
      n, H, grad_rh, act, h_prev, mask, grad_gates, grad_prev);
}

template <typename T>
void sigmoid_rows(int64_t n, int64_t width, T* x, int64_t stride) {
  for (int64_t r = 0; r < n; ++r) {
    T* row = x + r * stride;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) row[j] = sigmoid(row[j]);
  }
}

template <typename T>
void simple_forward_rows(int64_t n, int64_t H, T* pre, const T* h_prev, T* h_next, bool relu, const T* zone) {
  for (int64_t r = 0; r < n; ++r) {
    T* p = pre + r * H;
    const T* hp = h_prev + r * H;
    T* hn = h_next + r * H;
    if (relu) {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) p[j] = p[j] > T(0) ? p[j] : T(0);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) p[j] = tanh_(p[j]);
    }
    if (zone) {
      const T* zz = zone + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) hn[j] = p[j] + zz[j] * (hp[j] - p[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) hn[j] = p[j];
    }
  }
}

template <typename T>
void simple_backward_rows(int64_t n, int64_t H, const T* grad_h, const T* act, const T* zone, bool relu, T* grad_pre) {
  (zone ? simple_backward_impl<T, true> : simple_backward_impl<T, false>)(n, H, grad_h, act, zone, relu, grad_pre);
}

template <typename T>
void addcmul_rows(int64_t n, int64_t width, T* out, const T* a, int64_t a_stride, const T* b) {
  for (int64_t r = 0; r < n; ++r) {
    T* o = out + r * width;
    const T* x = a + r * a_stride;
    const T* y = b + r * width;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) o[j] += x[j] * y[j];
  }
}

namespace {

// 32-byte vectors through GCC's vector extensions (an AVX register where there is one; the compiler splits
// them on narrower CPUs), loaded and stored unaligned.
template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(32), aligned(sizeof(T))));
};
template <typename T>
using vec = typename Vec<T>::type;
template <typename T>
constexpr int64_t lanes = 32 / sizeof(T);
template <typename T>
inline vec<T> load(const T* p) { return *reinterpret_cast<const vec<T>*>(p); }

// the sum of a vector's lanes, its two halves added first (one 16-byte add instead of a scalar chain)
template <typename T>
inline T lane_sum(const vec<T>& v) {
  typedef T half __attribute__((vector_size(16), aligned(sizeof(T))));
  half lo, hi;
  std::memcpy(&lo, &v, sizeof(half));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(half), sizeof(half));
  lo += hi;
  T s = 0;
  for (int64_t l = 0; l < lanes<T> / 2; ++l) s += lo[l];
  return s;
}

// rows [0, R) of x times rows [0, J) of W: R x J dot products of length k, R * J vector accumulators
template <typename T, int R, int J>
inline void dot_block(int64_t k, const T* W, const T* x, int64_t xs, T* y, int64_t ys, bool accumulate) {
  constexpr int64_t L = lanes<T>;
  const int64_t kv = k - k % L;
  vec<T> a[R][J];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < J; ++q) a[r][q] = vec<T>{};
  for (int64_t i = 0; i < kv; i += L) {
    vec<T> xv[R];
    for (int r = 0; r < R; ++r) xv[r] = load(x + r * xs + i);
    for (int q = 0; q < J; ++q) {
      const vec<T> w = load(W + q * k + i);
      for (int r = 0; r < R; ++r) a[r][q] += w * xv[r];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int q = 0; q < J; ++q) {
      T s = lane_sum<T>(a[r][q]);
      for (int64_t i = kv; i < k; ++i) s += W[q * k + i] * x[r * xs + i];
      T& out = y[r * ys + q];
      out = accumulate ? out + s : s;
    }
  }
}

}  // namespace

template <typename T>
void rows_times_weight_t(int64_t n, int64_t m, int64_t k, const T* W, const T* x, int64_t x_stride, T* y,
                         int64_t y_stride, bool accumulate) {
  int64_t j = 0;
  if (n == 1) {  // eight dot products at a time: more independent sums in flight (5.7 vs 6.9 us at 512x128)
    for (; j + 8 <= m; j += 8) dot_block<T, 1, 8>(k, W + j * k, x, x_stride, y + j, y_stride, accumulate);
  }
  for (; j + 4 <= m; j += 4) {
    int64_t r = 0;
    for (; r + 3 <= n; r += 3)
      dot_block<T, 3, 4>(k, W + j * k, x + r * x_stride, x_stride, y + r * y_stride + j, y_stride, accumulate);
    for (; r + 2 <= n; r += 2)
      dot_block<T, 2, 4>(k, W + j * k, x + r * x_stride, x_stride, y + r * y_stride + j, y_stride, accumulate);
    for (; r < n; ++r)
      dot_block<T, 1, 4>(k, W + j * k, x + r * x_stride, x_stride, y + r * y_stride + j, y_stride, accumulate);
  }
  for (; j < m; ++j) {
    for (int64_t r = 0; r < n; ++r)
      dot_block<T, 1, 1>(k, W + j * k, x + r * x_stride, x_stride, y + r * y_stride + j, y_stride, accumulate);
  }
}

namespace {

// an 8 x 8 block of floats transposed in registers: dst row j = src column j (three rounds of two-vector shuffles,
// as _mm256_unpack*_ps, _mm256_shuffle_ps and _mm256_permute2f128_ps would do)
inline void transpose_8x8(const float* src, int64_t ss, float* dst, int64_t ds) {
  typedef int32_t ivec __attribute__((vector_size(32)));
  vec<float> r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = load(src + i * ss);
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], ivec{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], ivec{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int i = 0; i < 8; i += 4) {
    for (int h = 0; h < 2; ++h) {
      r[i + 2 * h] = __builtin_shuffle(t[i + h], t[i + h + 2], ivec{0, 1, 8, 9, 4, 5, 12, 13});
      r[i + 2 * h + 1] = __builtin_shuffle(t[i + h], t[i + h + 2], ivec{2, 3, 10, 11, 6, 7, 14, 15});
    }
  }
  for (int i = 0; i < 4; ++i) {
    const vec<float> low = __builtin_shuffle(r[i], r[i + 4], ivec{0, 1, 2, 3, 8, 9, 10, 11});
    const vec<float> high = __builtin_shuffle(r[i], r[i + 4], ivec{4, 5, 6, 7, 12, 13, 14, 15});
    std::memcpy(dst + i * ds, &low, sizeof(low));
    std::memcpy(dst + (i + 4) * ds, &high, sizeof(high));
  }
}

}  // namespace

namespace {

// Panels are two vectors wide; a register block is R rows x one panel: 2R vector accumulators, the panel's two
// vectors and one broadcast row element live in registers, so each step over i loads two vectors and R scalars for
// 2R fused multiply-adds. The vectors are 64 bytes where the CPU has AVX-512, else 32 bytes (16 registers: 15 in
// use at R = 6). With AVX-512's 32 registers, one thread's product on a Zen 5 ran at 209-245 GFLOP/s with blocks
// of up to 6 rows, 235-252 with 8 and 234-253 with 12 ([8-128,128]x[128,512], [16-32,512]x[512,128] and the like);
// 8 leaves fewer rows to smaller blocks.
#if defined(__AVX512F__)
constexpr int kPanelBytes = 64;
constexpr int kPanelRows = 8;
#else
constexpr int kPanelBytes = 32;
constexpr int kPanelRows = 6;
#endif
template <typename T>
struct PanelVec {
  typedef T type __attribute__((vector_size(kPanelBytes), aligned(sizeof(T))));
};
template <typename T>
using pvec = typename PanelVec<T>::type;
template <typename T>
constexpr int64_t kPanelLanes = kPanelBytes / sizeof(T);
template <typename T>
constexpr int64_t kPanel = 2 * kPanelLanes<T>;
template <typename T>
inline pvec<T> pload(const T* p) { return *reinterpret_cast<const pvec<T>*>(p); }

template <typename T, int R>
inline void panel_block(int64_t k, const T* x, int64_t xs, const T* panel, T* y, int64_t ys, int64_t cols,
                        bool accumulate) {
  constexpr int64_t L = kPanelLanes<T>;
  pvec<T> s[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = pvec<T>{};
  for (int64_t i = 0; i < k; ++i) {
    pvec<T> b0 = pload(panel + i * 2 * L), b1 = pload(panel + i * 2 * L + L);
#if defined(__AVX__)
    // the panel's vectors in registers: for R < 5, GCC otherwise folds their loads into every multiply-add (2R
    // loads a step instead of 2, and half the speed on an AVX2 EPYC)
    if constexpr (R < 5) asm("" : "+v"(b0), "+v"(b1));
#endif
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const pvec<T> a = pvec<T>{} + x[r * xs + i];
      s[r][0] += a * b0;
      s[r][1] += a * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    T* out = y + r * ys;
    if (cols == 2 * L) {
      if (accumulate) {
        s[r][0] += pload(out);
        s[r][1] += pload(out + L);
      }
      std::memcpy(out, &s[r][0], sizeof(pvec<T>));
      std::memcpy(out + L, &s[r][1], sizeof(pvec<T>));
    } else {
      T part[2 * L];
      std::memcpy(part, &s[r][0], sizeof(pvec<T>));
      std::memcpy(part + L, &s[r][1], sizeof(pvec<T>));
      for (int64_t j = 0; j < cols; ++j) out[j] = accumulate ? out[j] + part[j] : part[j];
    }
  }
}

template <typename T, int R>
inline void panel_rows(int64_t k, const T* x, int64_t xs, const T* panel, T* y, int64_t ys, int64_t cols,
                       bool accumulate, int64_t rows) {
  if constexpr (R > 1) {
    if (rows < R) return panel_rows<T, R - 1>(k, x, xs, panel, y, ys, cols, accumulate, rows);
  }
  panel_block<T, R>(k, x, xs, panel, y, ys, cols, accumulate);
}

}  // namespace

int64_t panel_vector_bytes() { return kPanelBytes; }

template <typename T>
int64_t panel_buffer_size(int64_t m, int64_t k) { return (m + kPanel<T> - 1) / kPanel<T> * kPanel<T> * k; }

template <typename T>
void transpose_rows(int64_t rows, int64_t cols, const T* src, int64_t src_stride, T* dst, int64_t dst_stride);

template <typename T>
void pack_panels(int64_t m, int64_t k, const T* W, bool transposed, T* panels) {
  constexpr int64_t P = kPanel<T>;
  for (int64_t j = 0; j < m; j += P) {
    T* panel = panels + j * k;
    const int64_t cols = std::min(P, m - j);
    // W^T: the panel is rows [j, j + cols) of W transposed, in 8 x 8 blocks (element by element, the panel's P
    // source rows, k elements apart, fall into a few cache sets when k is a multiple of 512: 3.5 ms for a
    // [4096, 1024] W on a Zen 5)
    if (transposed) transpose_rows<T>(cols, k, W + j * k, k, panel, P);
    for (int64_t i = 0; i < k; ++i) {
      T* row = panel + i * P;
      if (!transposed) std::memcpy(row, W + i * m + j, cols * sizeof(T));
      for (int64_t q = cols; q < P; ++q) row[q] = T(0);
    }
  }
}

template <typename T>
void panel_product(int64_t n, int64_t m, int64_t k, const T* x, int64_t x_stride, const T* panels, T* y,
                   int64_t y_stride, bool accumulate) {
  constexpr int64_t P = kPanel<T>;
  // rows in blocks of at most kPanelRows, as even as can be (16 rows: 5, 5, 6 rather than 6, 6, 4)
  const int64_t blocks = (n + kPanelRows - 1) / kPanelRows;
  for (int64_t j = 0; j < m; j += P) {  // each panel stays in cache while every row block passes over it
    const T* panel = panels + j * k;
    const int64_t cols = std::min(P, m - j);
    for (int64_t b = 0, r = 0; b < blocks; ++b) {
      const int64_t rows = (n - r) / (blocks - b);
      panel_rows<T, kPanelRows>(k, x + r * x_stride, x_stride, panel, y + r * y_stride + j, y_stride, cols,
                                accumulate, rows);
      r += rows;
    }
  }
}

template <typename T>
void transpose_rows(int64_t rows, int64_t cols, const T* src, int64_t src_stride, T* dst, int64_t dst_stride) {
  // panels of 64 source rows, 8 columns at a time: each step writes 8 destination rows a run of 64 elements, so
  // that few destination lines are open at once (a step over all columns of 8 source rows opened one line in each
  // of `cols` destination rows, whose stride maps them onto a few cache sets when it is a multiple of 2 KiB:
  // 0.82 against 0.08 ms for [12800, 128] and [16000, 64] floats)
  constexpr int64_t B = 8, P = 64;
  for (int64_t p = 0; p < rows; p += P) {
    const int64_t np = std::min(P, rows - p);
    for (int64_t j = 0; j < cols; j += B) {
      const int64_t nj = std::min(B, cols - j);
      for (int64_t i = p; i < p + np; i += B) {
        const int64_t ni = std::min(B, p + np - i);
        if constexpr (std::is_same_v<T, float>) {
          if (ni == B && nj == B) {
            transpose_8x8(src + i * src_stride + j, src_stride, dst + j * dst_stride + i, dst_stride);
            continue;
          }
        }
        for (int64_t b = 0; b < nj; ++b)
          for (int64_t a = 0; a < ni; ++a) dst[(j + b) * dst_stride + i + a] = src[(i + a) * src_stride + j + b];
      }
    }
  }
}

#define RNNKIT_INSTANTIATE(T)                                                                                   \
  template void layer_norm_add<T>(int64_t, int64_t, int64_t, const T*, const T*, const T*, T*, int64_t, T*, T*, T, \
                                  bool);                                                                        \
  template void layer_norm_backward<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, const T*,       \
                                       const T*, const T*, T*, double*, double*);                               \
  template void lstm_forward_rows<T>(int64_t, int64_t, T*, const T*, const T*, T*, T*, T*, T*, const T*,        \
                                     const T*, const T*, T*, T*, const T*, const T*, T);                        \
  template void lstm_backward_rows<T>(int64_t, int64_t, const T*, T*, T*, const T*, const T*, T*, T*,         \
                                      const T*, const T*, const T*, const T*, const T*, const T*, T*, double*,  \
                                      const T*, const T*);                                                      \
  template void gru_forward_rows<T>(int64_t, int64_t, T*, const T*, T*, const T*, T*, T*, const T*);              \
  template void gru_backward_after_rows<T>(int64_t, int64_t, const T*, const T*, const T*, const T*, const T*, T*, \
                                           T*, T*);               \
  template void gru_backward_before_zn_rows<T>(int64_t, int64_t, const T*, const T*, const T*, const T*, T*, T*); \
  template void gru_backward_before_r_rows<T>(int64_t, int64_t, const T*, const T*, const T*, const T*, T*, T*);  \
  template void sigmoid_rows<T>(int64_t, int64_t, T*, int64_t);                                                 \
  template void simple_forward_rows<T>(int64_t, int64_t, T*, const T*, T*, bool, const T*);                    \
  template void simple_backward_rows<T>(int64_t, int64_t, const T*, const T*, const T*, bool, T*);               \
  template void addcmul_rows<T>(int64_t, int64_t, T*, const T*, int64_t, const T*);                            \
  template void rows_times_weight_t<T>(int64_t, int64_t, int64_t, const T*, const T*, int64_t, T*, int64_t, bool); \
  template void transpose_rows<T>(int64_t, int64_t, const T*, int64_t, T*, int64_t);                       \
  template int64_t panel_buffer_size<T>(int64_t, int64_t);                                                      \
  template void pack_panels<T>(int64_t, int64_t, const T*, bool, T*);                                           \
  template void panel_product<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, T*, int64_t, bool);

RNNKIT_INSTANTIATE(float)
RNNKIT_INSTANTIATE(double)

}  // namespace rnnkit
