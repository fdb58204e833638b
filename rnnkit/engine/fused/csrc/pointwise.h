// Per-step pointwise work of the fused engine on raw, row-major buffers (no torch headers here:
// pointwise.cpp is compiled with vectorised math, see compiled.py). Every function handles `n` rows of
// `H` units; `*_stride` arguments are row strides in elements. Null pointers mean "option off".
#pragma once
#include <cstdint>

namespace rnnkit {

// target[r, k*H + j] = (accumulate ? target[r, k*H + j] : 0) + (pre[r, k*H + j] - mean) * rstd * gain[k*H + j]
// (+ bias[k*H + j] when bias is not null), per gate group k of H units; the statistics of each (row, group) are
// written to mean[r*groups + k], rstd[r*groups + k]. Without accumulate, target may be pre itself.
template <typename T>
void layer_norm_add(int64_t n, int64_t groups, int64_t H, const T* pre, const T* gain, const T* bias, T* target,
                    int64_t target_stride, T* mean, T* rstd, T eps, bool accumulate);

// grad_pre[r, k*H + j] = d loss / d pre through the layer norm, given grad (d loss / d normalised*gain);
// grad_gain (if not null) += grad * normalised and grad_bias (if not null) += grad, summed over the rows in double
// precision (they sum over every row of a sequence: T*B of them). grad_pre may be pre itself (each element is read
// before it is written: SAVED BUFFERS REUSED in loops.cpp).
template <typename T>
void layer_norm_backward(int64_t n, int64_t groups, int64_t H, const T* grad, int64_t grad_stride,
                         const T* pre, const T* gain, const T* mean, const T* rstd, T* grad_pre, double* grad_gain,
                         double* grad_bias);

// tanh_c: rows receiving tanh(c^) (the caller's scratch or all-steps buffer)
template <typename T>
void lstm_forward_rows(int64_t n, int64_t H, T* act, const T* h_prev, const T* c_prev, T* cell_tilde,
                       T* tanh_c, T* h_next, T* c_next, const T* peephole, const T* cell_gain,
                       const T* cell_bias, T* cell_mean, T* cell_rstd, const T* zone_h, const T* zone_c, T eps);

// One LSTM step backward, the local derivatives recomputed from act (i, f, g, o activated), c~ (cell_tilde,
// before zoneout) and c_prev; tanh(c^) is recomputed into the scratch rows tanh_c (c^ = LN(c~) with the cell
// norm's gain, bias and statistics, else c~): grad_gates [4H rows] receives d loss / d pre-activations,
// grad_c is d loss / d c_t in and d loss / d c_{t-1} out, grad_prev += the direct zoneout path of d loss / d h_t.
// With the cell norm, grad_shown is scratch rows for d loss / d c^, and cell_sums (float64, [2H]) accumulates
// the norm's parameter gradients: [0, H) += d loss / d c^ * LN(c~) (gain), [H, 2H) += d loss / d c^ (bias).
// grad_gates may be act itself (each unit's four activations are read before its four gradients are written).
template <typename T>
void lstm_backward_rows(int64_t n, int64_t H, const T* grad_h, T* grad_c, T* tanh_c, const T* c_prev,
                        const T* act, T* grad_gates, T* grad_prev, const T* peephole, const T* cell_tilde,
                        const T* cell_gain, const T* cell_bias, const T* cell_mean, const T* cell_rstd,
                        T* grad_shown, double* cell_sums, const T* zone_h, const T* zone_c);

// reset after (terms = R(h~) + b_hh, stride 3H): r, z = sigmoid(act_rz + terms_rz), n = tanh(act_n + r terms_n),
// and terms_n is kept in n_term (dense rows of H); reset before (terms null): r, z already activated and act_n
// complete, so n = tanh(act_n). Then h = n + z (h_prev - n) into candidate (when zoneout) and
// h_next = h + zone (h_prev - h).
template <typename T>
void gru_forward_rows(int64_t n, int64_t H, T* act, const T* terms, T* n_term, const T* h_prev, T* candidate,
                      T* h_next, const T* zone);

// One reset-after GRU step backward from grad_h = d loss / d h_t, the local derivatives recomputed from
// act (r, z, n), h_prev, n_term and zone (null: none): grad_hidden [3H rows] receives d loss / d (R(h~) + b_hh),
// grad_n [H rows] d loss / d (input term of n), and grad_prev += grad_h * d h_t / d h_{t-1} (direct path).
// grad_hidden may be act itself (each unit's r, z and n are read before its three gradients are written).
template <typename T>
void gru_backward_after_rows(int64_t n, int64_t H, const T* grad_h, const T* act, const T* h_prev, const T* n_term,
                             const T* zone, T* grad_hidden, T* grad_n, T* grad_prev);

// Reset-before GRU step backward, first part, from act (r, z, n) and h_prev: grad_gates [3H rows] receives the
// z and n pre-activation gradients, grad_prev += grad_h * d h_t / d h_{t-1} along the direct path. grad_gates
// may be act itself: this part reads z and n before it writes their gradients, and leaves r for the second.
template <typename T>
void gru_backward_before_zn_rows(int64_t n, int64_t H, const T* grad_h, const T* act, const T* h_prev,
                                 const T* zone, T* grad_gates, T* grad_prev);

// Second part, from grad_rh = d loss / d (r * h~) with h~ = h_prev * mask (mask null: none): grad_gates'
// r part = grad_rh * h~ * r (1 - r), grad_prev += grad_rh * r * mask.
template <typename T>
void gru_backward_before_r_rows(int64_t n, int64_t H, const T* grad_rh, const T* act, const T* h_prev,
                                const T* mask, T* grad_gates, T* grad_prev);

// x[r, j] = sigmoid(x[r, j]) for j < width (rows of `stride` elements).
template <typename T>
void sigmoid_rows(int64_t n, int64_t width, T* x, int64_t stride);

// pre = activation(pre) (tanh or relu); h_next = pre, or with zoneout pre + zone (h_prev - pre).
template <typename T>
void simple_forward_rows(int64_t n, int64_t H, T* pre, const T* h_prev, T* h_next, bool relu, const T* zone);

// grad_pre = grad_h * f'(pre) (1 - zone) from the activations act = f(pre) (tanh or relu; zone null: none);
// grad_pre may be act itself
template <typename T>
void simple_backward_rows(int64_t n, int64_t H, const T* grad_h, const T* act, const T* zone, bool relu, T* grad_pre);

// out[r, j] += a[r, j] * b[r, j] for j < width (a rows of a_stride; b and out dense rows of width).
template <typename T>
void addcmul_rows(int64_t n, int64_t width, T* out, const T* a, int64_t a_stride, const T* b);

// y[r, j] = (accumulate ? y[r, j] : 0) + sum_i x[r, i] W[j, i] for r < n, j < m: a few rows times W^T, with W
// [m, k] dense and the rows of x and y x_stride and y_stride elements apart (unit column stride). For small
// batches, where a BLAS call's fixed cost outweighs its arithmetic; sums in its own order (float rounding).
template <typename T>
void rows_times_weight_t(int64_t n, int64_t m, int64_t k, const T* W, const T* x, int64_t x_stride, T* y,
                         int64_t y_stride, bool accumulate);

// PANEL PRODUCTS. B [k, m] (op(W): W^T of a dense W [m, k] when `transposed`, else W itself, [k, m]) repacked
// into panels of two vectors' width (32 floats or 16 doubles where compiled for AVX-512, else 16 or 8), each
// panel's k rows of that many elements contiguous (columns past m zero): panel_buffer_size<T>(m, k) elements,
// written by pack_panels.
template <typename T>
int64_t panel_buffer_size(int64_t m, int64_t k);
// the width of the panel kernel's vectors in bytes: 64 where it was compiled for AVX-512, else 32
int64_t panel_vector_bytes();
template <typename T>
void pack_panels(int64_t m, int64_t k, const T* W, bool transposed, T* panels);

// y[r, j] = (accumulate ? y[r, j] : 0) + sum_i x[r, i] B[i, j] for r < n, j < m, with B packed by pack_panels:
// register blocks of up to 8 rows (6 without AVX-512) x one panel, each output summed over i in order in one fused
// multiply-add chain, so a row's result does not depend on the other rows (nor on n)
template <typename T>
void panel_product(int64_t n, int64_t m, int64_t k, const T* x, int64_t x_stride, const T* panels, T* y,
                   int64_t y_stride, bool accumulate);

// dst[j, i] = src[i, j] for i < rows, j < cols (rows of src and dst src_stride and dst_stride elements apart):
// blocks of 8 x 8, transposed in vector registers for float
template <typename T>
void transpose_rows(int64_t rows, int64_t cols, const T* src, int64_t src_stride, T* dst, int64_t dst_stride);

}  // namespace rnnkit
