// The per-step loops of the fused engine, compiled: the same steps as the Python loops in
// rnnkit/engine/fused/{lstm,gru,simple}.py (which stay the reference and the fallback), with the
// recurrent GEMMs issued through ATen and the pointwise work of a step done in one pass (pointwise.cpp).
// Buffers are allocated and all-steps work (local derivatives, parameter gradients) is done in Python.
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <atomic>
#include <functional>
#include <algorithm>
#include <limits>
#include <optional>
#include <string_view>
#include <vector>

#include "pointwise.h"

// libtorch's own query (torch/csrc/autograd/graph_task.h, not included here), declared weak so that this library
// still loads with a torch that lacks it; see graph_kept
namespace torch::autograd {
bool get_current_graph_task_keep_graph() __attribute__((weak));
}  // namespace torch::autograd

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

template <typename T>
T* ptr(const Tensor& t) { return t.data_ptr<T>(); }

template <typename T>
T* ptr(const OptTensor& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }

void check_dense(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), "rnnkit compiled loops: ", name,
              " must be a contiguous CPU tensor");
}

void check_dense(const OptTensor& t, const char* name) {
  if (t.has_value()) check_dense(*t, name);
}

// GEMM routing. ATen's mm goes to MKL, which on AMD CPUs runs its AVX2 code; torch's oneDNN linear
// (mkldnn::_linear_pointwise) has AVX-512 kernels and measured ~2x faster for float32 products from about
// 2M multiply-adds (e.g. 76 vs 148 us at [64,256]x[256,768]); below that its fixed cost (~10 us) loses.
// Products of at least `onednn_min_macs` multiply-adds use it (negative: never; set from Python), unless the panel
// kernel takes them (PANEL PRODUCTS: on AVX-512 CPUs, a thread's products of up to 511 rows).
std::atomic<int64_t> onednn_min_macs{-1};

using LinearFn = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, std::string_view,
                        c10::List<std::optional<c10::Scalar>>, std::optional<std::string_view>);

// torch's oneDNN linear op, or null when this torch has none (or it has another signature)
const c10::TypedOperatorHandle<LinearFn>* onednn_linear() {
  static const std::optional<c10::TypedOperatorHandle<LinearFn>> handle =
      []() -> std::optional<c10::TypedOperatorHandle<LinearFn>> {
    try {
      if (!at::hasMKLDNN()) return std::nullopt;
      auto op = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
      if (!op.has_value()) return std::nullopt;
      return op->typed<LinearFn>();
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }();
  return handle.has_value() ? &*handle : nullptr;
}

// whether oneDNN takes any products of this dtype
bool onednn_on(at::ScalarType dtype) {
  return onednn_min_macs.load(std::memory_order_relaxed) >= 0 && dtype == at::kFloat && onednn_linear() != nullptr;
}

// whether a product of `macs` multiply-adds in this dtype goes through oneDNN
bool onednn_takes(at::ScalarType dtype, int64_t macs) {
  return onednn_on(dtype) && macs >= onednn_min_macs.load(std::memory_order_relaxed);
}

// a @ w^T through oneDNN (a new tensor); w is [n, k] and contiguous
Tensor onednn_product(const Tensor& a, const Tensor& w) {
  return onednn_linear()->call(a, w, std::nullopt, "none", c10::List<std::optional<c10::Scalar>>(), std::nullopt);
}

int64_t set_onednn_min_macs(int64_t macs) {
  if (macs >= 0 && onednn_linear() == nullptr) return -2;  // not available in this torch
  return onednn_min_macs.exchange(macs);
}

// MKL's packed GEMM (cblas_sgemm_pack / cblas_sgemm_compute), when the torch build exports it (torch's x86
// wheels link MKL statically into libtorch_cpu): the recurrent weight is packed into MKL's internal layout once
// per call, and each step's float32 product reads it from there instead of re-packing W every step, as
// at::mm / addmm_ do (MKL's sgemm_scopy packing routines were ~10% of a layer-norm LSTM training step's
// samples at (32,100,32,128)). Weak symbols: a torch without them leaves the pointers null and every product
// stays on ATen. CBLAS enums are passed as ints and MKL_INT is int (LP64 interface).
extern "C" {
size_t cblas_sgemm_pack_get_size(int identifier, int m, int n, int k) __attribute__((weak));
void cblas_sgemm_pack(int layout, int identifier, int trans, int m, int n, int k, float alpha, const float* src,
                      int ld, float* dest) __attribute__((weak));
void cblas_sgemm_compute(int layout, int transa, int transb, int m, int n, int k, const float* a, int lda,
                         const float* b, int ldb, float beta, float* c, int ldc) __attribute__((weak));
}
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;

// whether float32 recurrent products not taken by oneDNN use a packed weight (set from Python; tests compare)
std::atomic<bool> packed_gemm{true};

bool mkl_packing_available() {
  return cblas_sgemm_pack_get_size != nullptr && cblas_sgemm_pack != nullptr && cblas_sgemm_compute != nullptr;
}

// -1: this torch exports no MKL packed GEMM; else the previous setting (0/1)
int64_t set_packed_gemm(bool on) {
  if (!mkl_packing_available()) return -1;
  return packed_gemm.exchange(on) ? 1 : 0;
}

// B = op(W) packed for products a @ op(W) of at most `rows` rows; op(W) is [k, n] (W^T when `transposed`)
struct PackedWeight {
  Tensor buffer;  // uint8 bytes holding MKL's packed layout
  int64_t k = 0, n = 0;

  bool defined() const { return buffer.defined(); }

  // `rows` rows of a [., k] (rows lda apart) @ op(W) into c [., n] (rows ldc apart): c = beta * c + a @ op(W)
  void multiply(int64_t rows, const float* a, int64_t lda, float* c, int64_t ldc, float beta) const {
    cblas_sgemm_compute(kRowMajor, kNoTrans, kPacked, int(rows), int(n), int(k), a, int(lda),
                        reinterpret_cast<const float*>(buffer.data_ptr()), int(n), beta, c, int(ldc));
  }
};

// PANEL PRODUCTS. Where panel_gemm is on (set from Python: on by default), a recurrent product of kPanelMinRows to
// kPanelMaxRows - 1 rows (kPanelMaxRowsWide - 1 on AVX-512 CPUs when it runs on one thread anyway; on those, from one
// row for a weight of up to kPanelSmallWeightBytes) that would go
// through oneDNN, read MKL's packed weight or go through the small-product kernel (below) reads the weight repacked
// by rnnkit into panels instead (pointwise.h, pack_panels / panel_product: register blocks of up to 6 rows x 16
// floats, or 8 rows x 32 floats with AVX-512), in float64 too (where ATen's mm took them).
// On an AVX-512 Zen 5 (twelfth session), one thread's product ran at 230-250 GFLOP/s: [16,128]x[128,512] 8.5-9.1
// us (ATen's mm 24, oneDNN 23.5), [32,256]x[256,1024] 69-72 (oneDNN 105), [128,128]x[128,512] 67-72 (oneDNN
// 85-92), [512,128]x[128,512] 283-302 (oneDNN 303): MKL runs its AVX2 code on AMD CPUs, and oneDNN's calls cost
// ~10 us each. In the loops (training, in-process A/B against MKL's packed weight under 2M multiply-adds and oneDNN
// from there; 2 threads, batch split; fraction of the time left): (32,100,32,128) 0.81-0.86 (inference 0.62-0.64),
// (64,200,64,256) 0.87-0.93 (0.78-0.81), (256,50,64,128) 0.94-0.97 (0.75-0.94), (512,50,64,128) 0.97 (0.87-0.94);
// against the small-product kernel and MKL's packed weight at batch 3-12 (T=100, I=32, H=128) 0.60-0.82 (LSTM
// inference at batch 8: 0.49). The loops were measured to 256 rows a thread there, one product alone to 512 rows
// (a tie with oneDNN), hence kPanelMaxRowsWide.
// On the AVX2 CPUs: MKL's compute call copies each step's rows into its own layout before it multiplies
// (mkl_blas_def_sgemm_scopy_down16: 10% of an LSTM inference call's samples at (32,100,32,128)); the
// panel kernel reads them in place. One thread's product on a Zen 3 EPYC (AVX2), panel over MKL's packed time,
// interleaved: [8,64]x[64,192] 0.69-0.80, [8,256]x[256,64] 0.57-0.66, [8,128]x[128,512] 0.64-0.71,
// [16,128]x[128,512] 0.73-0.77, [16,384]x[384,128] 0.73-0.75, [32,128]x[128,512] 0.84-0.91, [64,512]x[512,128]
// 0.84, [128,128]x[128,512] 0.89-1.09. In the loops (B,T,I,H; training and inference, in-process A/B against MKL's
// packed weight, 2 threads, batch split, two to four runs each): (32,100,32,128) GRU 1-12% less time, LSTM 4% more
// to 9% less, LN-LSTM 1-11% less, Elman RNN 7% more to 2% less; (64,200,64,256) 2% more to 17% less (GRU 10-17%
// less); (16,1000,16,64) 6% more to 13% less (GRU 1-6% more). From 64 rows a thread the LSTM lost ((128,100,32,128)
// 1-9% more time, (256,50,64,128) 5-15%; GRU and Elman RNN +-5%): there MKL's blocking keeps a product's rows and
// outputs in cache better than the panel loop, which passes over all rows once per panel, so products of
// kPanelMaxRows rows or more keep MKL's packed weight.
// The panel kernel also takes the products of 3 to 7 rows from the small-product kernel (SMALL PRODUCTS), whose
// dot products it beats 2-3x from 3 rows ([3-7,128]x[128,512]: 7-18 against 14-45 us; at 2 rows it ties forward,
// [2,128]x[128,512] 8.5 against 14 us, and loses backward, [2,512]x[512,128] 6.4 against 5.2 us). In the loops
// (T=100, I=32, H=128 and (6,200,16,64), three runs, against the small-product kernel): batch 6-12 (3-6 rows a
// thread) LSTM training 8-18% less time, inference 17-29%; LN-LSTM 6-13% and 14-24%; GRU 1% more to 10% less and
// 9-20% less; Elman RNN training 12% more to 5% less, inference 8% more to 11% less; batch 3 (one thread, where
// the small-product kernel splits each product over two) 5% more to 25% less.
constexpr int64_t kPanelMaxRows = 64;
constexpr int64_t kPanelMaxRowsWide = 512;
constexpr int64_t kPanelMinRows = 3;
// With 512-bit vectors the kernel also takes products of 1 and 2 rows from a weight of at most this many bytes,
// which the small-product kernel would split over two threads from 32k multiply-adds: one core streams the weight's
// panels from its own L2 with no join per step. In-process A/B on an AVX-512 Zen 5 (T=100, 2 threads): batch 1-2,
// H=64-128, inference 0.52-0.91 of the time, training 0.82-0.99 (LSTM, LN-LSTM, GRU, Elman RNN); larger weights
// lost at one row (LSTM/GRU H=192, 432-576 KB: 1.03-1.07; H=256: 1.14-1.45) and were mixed at two.
constexpr int64_t kPanelSmallWeightBytes = 256 << 10;

// the fewest rows of a product the panel kernel takes from a weight of `weight_bytes`
// With 256-bit vectors it takes products of 2 rows (not 1) from such a weight, and from any weight where the
// product runs on one thread whatever its route (in a split loop each thread's product of 2 rows went through the
// small-product kernel on that thread). In-process A/B on an AVX2 Zen 3 (fifteenth session; T=100, I=32, 2
// threads; LSTM, LN-LSTM, GRU, Elman RNN), against the small-product kernel: batch 2 (unsplit, the kernel splits
// the product over both threads), H=64-128: inference 0.64-0.96 of the time, training 0.75-0.95; H=256 (up to
// 1 MB) inference 0.83-0.93 but training 1.12-1.14 (the Elman RNN's 256 KB: 0.88-0.89); batch 4 (split, 2 rows a
// thread), H=64-256: inference 0.74-0.96, training 0.90-0.98. One row stays in the small-product kernel there:
// batch 1, H=64-128, 0.91-1.26 (LSTM H=128: 1.26).
int64_t panel_min_rows(int64_t weight_bytes, bool one_thread) {
  if (rnnkit::panel_vector_bytes() == 64) return weight_bytes <= kPanelSmallWeightBytes ? 1 : kPanelMinRows;
  return one_thread || weight_bytes <= kPanelSmallWeightBytes ? 2 : kPanelMinRows;
}

// the most rows (exclusive) of a product the panel kernel takes; `one_thread`: the product runs on one thread
// whatever its route (the batch is split, or torch has one thread), so oneDNN or MKL could not spread it
int64_t panel_max_rows(bool one_thread) {
  return rnnkit::panel_vector_bytes() == 64 && one_thread ? kPanelMaxRowsWide : kPanelMaxRows;
}

// [the fewest rows, the most rows + 1 of a thread's product in a split loop, the width of a vector in bits, the
// most bytes of a weight whose products of fewer rows it takes too, the fewest rows of those]
std::vector<int64_t> panel_limits() {
  return {kPanelMinRows, panel_max_rows(true), 8 * rnnkit::panel_vector_bytes(), kPanelSmallWeightBytes,
          panel_min_rows(0, false)};
}

std::atomic<bool> panel_gemm{false};
int64_t set_panel_gemm(bool on) { return panel_gemm.exchange(on) ? 1 : 0; }

// A call whose widest step (its batch) has fewer rows than this keeps every product on ATen: there the products
// are (nearly) matrix-vector ones, which ATen's call ran as fast or faster than the packed one (batch 1:
// training 1-10% slower packed, AVX2 EPYC). Within a packed call, every step uses the packed weight. While the
// small-product kernel is on, it takes the batches under kSmallMaxRows (16) instead (see SMALL PRODUCTS).
constexpr int64_t kPackMinRows = 8;

// SMALL PRODUCTS. In a call whose batch has fewer than kSmallMaxRows rows, each step's product goes through
// rnnkit::rows_times_weight_t (pointwise.cpp: dot products summed in registers), split over threads from
// 2 * kSmallSplitMacs multiply-adds, instead of ATen's mm or a packed weight. At such sizes a BLAS call's fixed
// cost is most of its time: on an AVX2 EPYC, [n,128] x [128,512] took ATen 15-17 us at one row and 45-47 us at
// four, the kernel (one thread) 5.7 and 25. Training (T=100, I=32, H=128; in-process A/B against ATen or,
// from 8 rows, the packed weight): batch 1 3-21% less time for the LSTMs and the GRU, 1-5% for the Elman RNN;
// batch 4 22-33%; batch 8 3-9%; batch 16 0-6% more, so the packed weight keeps the batches from 16 on. (In a loop
// whose batch is split over threads, the kernel takes each thread's products of under kPackMinRows rows: see
// BATCH SPLIT. Where the panel kernel is on, it takes the products from kPanelMinRows rows: see PANEL PRODUCTS.)
// Splitting the product over two threads: 4-8% less at batch 1 from 32k multiply-adds, 3-6% more below.
constexpr int64_t kSmallMaxRows = 16;
std::atomic<bool> small_products{true};

// a small product of at least twice this many multiply-adds is split over threads (see Projection::small_product)
constexpr int64_t kSmallSplitMacs = 1 << 14;

// the previous setting (0/1)
int64_t set_small_products(bool on) { return small_products.exchange(on) ? 1 : 0; }

// A buffer of at least `bytes` for a packed weight (MKL's layout or rnnkit's panels, never both for one projection).
// Packed weights live for one loop call; their buffers are kept per thread and handed out again once free (the
// kept tensor is then their only reference), so that the 1-3 MB written into one are not page-faulted in on every
// call. At most two are in use at once (the
// reset-before GRU's two projections), so at most two are kept per thread.
Tensor pack_buffer(int64_t bytes) {
  thread_local std::vector<Tensor> kept;
  for (Tensor& buffer : kept) {
    if (buffer.use_count() != 1) continue;
    if (buffer.numel() < bytes) buffer = at::empty({bytes}, at::kByte);
    return buffer;
  }
  kept.push_back(at::empty({bytes}, at::kByte));
  return kept.back();
}

// pack op(weight) for a sequence of `steps` products of at most `rows` rows, when that pays and is possible
PackedWeight pack_weight(const Tensor& weight, bool transposed, int64_t rows, int64_t steps) {
  PackedWeight packed;
  // one pack costs about a product (it copies W once); from a few steps on it pays for itself
  if (steps < 4 || rows < kPackMinRows || weight.scalar_type() != at::kFloat || !weight.is_contiguous() ||
      !packed_gemm.load(std::memory_order_relaxed) || !mkl_packing_available())
    return packed;
  const int64_t k = transposed ? weight.size(1) : weight.size(0), n = transposed ? weight.size(0) : weight.size(1);
  const int64_t limit = std::numeric_limits<int>::max();
  if (k > limit || n > limit || rows > limit) return packed;
  const size_t bytes = cblas_sgemm_pack_get_size(kBMatrix, int(rows), int(n), int(k));
  if (bytes == 0) return packed;
  packed.buffer = pack_buffer(int64_t(bytes) + 64);
  cblas_sgemm_pack(kRowMajor, kBMatrix, transposed ? kTrans : kNoTrans, int(rows), int(n), int(k), 1.0f,
                   weight.data_ptr<float>(), int(weight.size(1)), reinterpret_cast<float*>(packed.buffer.data_ptr()));
  packed.k = k;
  packed.n = n;
  return packed;
}

// Per-step pointwise work is split over torch's intra-op threads (at::parallel_for; this file is compiled
// with OpenMP, as torch is) in chunks of at least this many elements; below that, or when negative, a step
// runs on one thread. Each row of a step is independent of the others, so the split never changes a result;
// the one sum across rows (layer-norm gains' gradients) goes by chunks fixed by this setting alone.
std::atomic<int64_t> parallel_min{8192};

int64_t set_parallel_min(int64_t elements) { return parallel_min.exchange(elements); }

bool threaded() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// f(begin, end) over the rows [0, n) of a step, each `width` elements of work
template <typename F>
void over_rows(int64_t n, int64_t width, const F& f) {
  const int64_t min = parallel_min.load(std::memory_order_relaxed);
  if (min < 0 || n < 2 || n * width < 2 * min) {
    f(int64_t(0), n);
    return;
  }
  at::parallel_for(0, n, std::max<int64_t>(1, (min + width - 1) / width), f);
}

// how many fixed chunks a sum over n rows of `width` elements is split into (independent of the thread count)
int64_t sum_chunks(int64_t n, int64_t width) {
  const int64_t min = parallel_min.load(std::memory_order_relaxed);
  if (min < 0 || n < 2) return 1;
  return std::max<int64_t>(1, std::min<int64_t>({int64_t(8), n, n * width / std::max<int64_t>(1, min)}));
}

// rows(begin, end, sums) over the rows [0, n) in `chunks` fixed chunks, each adding its share of a sum of
// `count` doubles into its own row of `partial`; the rows are then added into `total` in chunk order, so the
// sum does not depend on the thread count (one chunk: straight into `total`).
template <typename F>
void sum_over_chunks(int64_t n, int64_t chunks, int64_t count, double* total, std::vector<double>& partial,
                     const F& rows) {
  if (chunks <= 1) {
    rows(int64_t(0), n, total);
    return;
  }
  partial.assign(chunks * count, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) rows(n * c / chunks, n * (c + 1) / chunks, partial.data() + c * count);
  });
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t j = 0; j < count; ++j) total[j] += partial[c * count + j];
}

// SUMS ACROSS ROWS IN A LOOP (layer norm's gain gradients, in backward). The batch's rows go in kSumChunks fixed
// chunks, rows [B c / K, B (c + 1) / K), and each chunk sums its rows' share over all the loop's steps into its own
// float64 row; the chunks are added into the total in chunk order after the loop. No row's share depends on which
// thread computes it, and a loop whose batch is split over a number of threads dividing K (BATCH SPLIT) gives each
// thread whole chunks: the sums are the same bit for bit split or not, on any number of threads.
constexpr int64_t kSumChunks = 8;

struct ChunkSums {
  int64_t batch = 0, count = 0;
  std::vector<double> acc;  // [kSumChunks, count]
  void init(int64_t rows, int64_t width) {
    batch = rows;
    count = width;
    acc.assign(kSumChunks * width, 0.0);
  }
  // rows(b, e, sums) over a step's rows [lo, lo + n) (b and e counted from lo), by chunk, each chunk's share into
  // its own sums; `work`: elements per row (the chunks are spread over threads from 2 * parallel_min elements)
  template <typename F>
  void add(int64_t lo, int64_t n, int64_t work, const F& rows) {
    auto chunk = [&](int64_t c) {
      const int64_t b = std::max(batch * c / kSumChunks, lo), e = std::min(batch * (c + 1) / kSumChunks, lo + n);
      if (e > b) rows(b - lo, e - lo, acc.data() + c * count);
    };
    const int64_t min = parallel_min.load(std::memory_order_relaxed);
    if (min < 0 || n < 2 || n * work < 2 * min || at::in_parallel_region()) {
      for (int64_t c = 0; c < kSumChunks; ++c) chunk(c);
      return;
    }
    at::parallel_for(0, kSumChunks, 1, [&](int64_t first, int64_t last) {
      for (int64_t c = first; c < last; ++c) chunk(c);
    });
  }
  // total += the chunks' sums, in chunk order
  void finish(double* total) const {
    for (int64_t c = 0; c < kSumChunks; ++c)
      for (int64_t j = 0; j < count; ++j) total[j] += acc[c * count + j];
  }
};

// BELOW AUTOGRAD. Each loop runs under at::AutoDispatchBelowADInplaceOrView: it is called from inside a fused
// autograd Function, which records the graph itself, so the many small ATen calls of a step (views of the
// step's rows, the recurrent products, in-place adds) need neither autograd's kernels nor view and version
// tracking. Skipping them took a batch-1 LN-LSTM training step from 2.0-2.3 to 1.8 ms (1,100,32,128).

// Row offsets of a packed layout: step t covers packed rows [offset[t], offset[t] + sizes[t]); the
// state before step t is block t of a [B + N] state buffer, starting at state_offset(t).
struct Steps {
  std::vector<int64_t> sizes, offsets;
  int64_t batch;
  explicit Steps(at::IntArrayRef batch_sizes) : sizes(batch_sizes.begin(), batch_sizes.end()) {
    TORCH_CHECK(!sizes.empty(), "rnnkit compiled loops: no steps");
    batch = sizes[0];
    int64_t total = 0;
    for (int64_t n : sizes) {
      offsets.push_back(total);
      total += n;
    }
  }
  int64_t count() const { return static_cast<int64_t>(sizes.size()); }
  int64_t previous(int64_t t) const { return t == 0 ? 0 : batch + offsets[t - 1]; }
  int64_t next(int64_t t) const { return batch + offsets[t]; }
};

// Rows [row, row + n) and columns [col, col + cols) of a dense 2-D buffer: what the loops hand a projection
// instead of tensor views. A view (at::narrow) costs a TensorImpl, and a step made up to six of them (~5% of a
// batch-1 training step); now a view is made only where a product goes through ATen or oneDNN.
struct Block {
  const Tensor* base;
  int64_t row, n, col, cols;
  Block(const Tensor& t, int64_t row, int64_t n) : base(&t), row(row), n(n), col(0), cols(t.size(1)) {}
  Block columns(int64_t from, int64_t count) const {
    Block b = *this;
    b.col += from;
    b.cols = count;
    return b;
  }
  int64_t stride() const { return base->stride(0); }
  template <typename T>
  T* data() const { return base->data_ptr<T>() + row * base->stride(0) + col; }
  Tensor view() const {
    Tensor rows = base->narrow(0, row, n);
    return col == 0 && cols == base->size(1) ? rows : rows.narrow(1, col, cols);
  }
};

// One recurrent projection, as rnnkit.engine.fused.common.Projection: inputs @ W^T, or per gate group
// LN(inputs @ W^T) * gain. Layer-norm buffers: pre [N, gH], mean and rstd [N, g], grad_pre [N, gH].
struct Projection {
  Tensor weight, weight_t, weight_tc;  // [gH, H], its transpose (a view) and, in backward, a contiguous copy
  PackedWeight packed;  // forward: W^T packed for h @ W^T; backward: W packed for g @ W (see PackedWeight)
  Tensor panels;  // or op(W) in rnnkit's panels (PANEL PRODUCTS), [panel_k, panel_m]
  int64_t panel_k = 0, panel_m = 0;
  Tensor small;  // calls of small batches (SMALL PRODUCTS): forward W, backward W^T, dense
  OptTensor gain, pre, mean, rstd, grad_pre, grad_gain;
  // inference: pre, mean and rstd hold one step's rows (indexed by batch row), not every step's (by packed row)
  bool per_step = false;
  int64_t groups, hidden;
  bool backward;  // products are g @ W (d loss / d inputs) rather than inputs @ W^T
  double eps;
  ChunkSums sums;  // of grad_gain, over the loop (SUMS ACROSS ROWS IN A LOOP); added into grad_gain by finish()

  // tensors: [weight] or [weight, gain, pre, mean, rstd(, grad_pre, grad_gain)]; grad_gain (float64) accumulates
  // `rows` and `steps`: the most rows of a product and the number of steps, which decide its route; `split`: the
  // loop's batch is split over threads (BATCH SPLIT), so each product runs on one thread; `batch`: the loop's
  // batch, whose fixed chunks sum grad_gain (needed where there is one), and, in forward, pre, mean and rstd of
  // `batch` rows only are one step's scratch (no backward will read them: see per_step)
  Projection(at::TensorList tensors, int64_t hidden, double eps, bool backward, int64_t rows, int64_t steps,
             bool split, int64_t batch)
      : hidden(hidden), eps(eps), backward(backward) {
    weight = tensors[0];
    weight_t = weight.t();
    groups = weight.size(0) / hidden;
    // the widest step's product decides between the panel kernel, oneDNN (the large products), the small-product
    // kernel and the packed weight
    const int64_t weight_bytes = weight.numel() * weight.element_size();
    const bool one_thread = split || at::get_num_threads() == 1 || at::in_parallel_region();
    if (panel_gemm.load(std::memory_order_relaxed) && steps >= 4 &&
        rows >= panel_min_rows(weight_bytes, one_thread) && rows < panel_max_rows(one_thread)) {
      pack_panels(weight.contiguous());
    } else {
      if (backward && onednn_on(weight.scalar_type())) weight_tc = weight_t.contiguous();
      route_without_panels(rows, steps, split);
    }
    init_layer_norm(tensors, batch);
  }

  // oneDNN (the large float32 products), the small-product kernel, the packed weight or ATen
  void route_without_panels(int64_t rows, int64_t steps, bool split) {
    if (!onednn_takes(weight.scalar_type(), rows * weight.size(0) * weight.size(1))) {
      if (rows < (split ? kPackMinRows : kSmallMaxRows) && small_products.load(std::memory_order_relaxed)) {
        small = backward ? (weight_tc.defined() ? weight_tc : weight_t.contiguous()) : weight.contiguous();
      } else {
        packed = pack_weight(weight, !backward, rows, steps);
      }
    }
  }

  void init_layer_norm(at::TensorList tensors, int64_t batch) {
    if (tensors.size() > 1) {
      TORCH_CHECK(tensors.size() == (backward ? 7u : 5u), "rnnkit compiled loops: bad projection buffers");
      gain = tensors[1];
      pre = tensors[2];
      mean = tensors[3];
      rstd = tensors[4];
      if (backward) {
        grad_pre = tensors[5];
        grad_gain = tensors[6];
      }
      for (const auto& t : {gain, pre, mean, rstd, grad_pre, grad_gain}) check_dense(t, "layer-norm buffer");
      TORCH_CHECK(!grad_gain || grad_gain->scalar_type() == at::kDouble, "rnnkit compiled loops: grad_gain must be float64");
      if (grad_gain) {
        TORCH_CHECK(batch > 0, "rnnkit compiled loops: a projection that sums gain gradients needs the batch");
        sums.init(batch, groups * hidden);
      }
      // (with one step, the packed rows are the batch's rows: either reading indexes the same rows)
      per_step = !backward && pre->size(0) == batch;
    }
  }

  // op(W) into rnnkit's panels: forward W^T ([H, gH] from W [gH, H]), backward W ([gH, H])
  void pack_panels(const Tensor& w) {
    panel_k = backward ? w.size(0) : w.size(1);
    panel_m = backward ? w.size(1) : w.size(0);
    AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "rnnkit_pack_panels", [&] {
      const int64_t count = rnnkit::panel_buffer_size<scalar_t>(panel_m, panel_k);
      panels = pack_buffer(count * int64_t(sizeof(scalar_t)));
      rnnkit::pack_panels<scalar_t>(panel_m, panel_k, w.data_ptr<scalar_t>(), !backward,
                                    reinterpret_cast<scalar_t*>(panels.data_ptr()));
    });
  }

  // grad_gain += what the loop summed (call once, after the loop)
  void finish() const {
    if (grad_gain) sums.finish(ptr<double>(grad_gain));
  }

  // c = (accumulate ? c : 0) + a @ op(W) (forward op(W) = W^T, backward W); from kSmallSplitMacs multiply-adds
  // on, split over threads by blocks of 8 outputs (each output is summed the same way whatever the split)
  template <typename T>
  void small_product(const Block& a, const Block& c, bool accumulate) const {
    const int64_t n = a.n, m = small.size(0), k = small.size(1), blocks = (m + 7) / 8;
    const T* x = a.data<T>();
    T* y = c.data<T>();
    auto part = [&](int64_t b, int64_t e) {
      const int64_t j = 8 * b, width = std::min(m, 8 * e) - j;
      rnnkit::rows_times_weight_t<T>(n, width, k, ptr<T>(small) + j * k, x, a.stride(), y + j, c.stride(),
                                     accumulate);
    };
    if (parallel_min.load(std::memory_order_relaxed) < 0 || n * m * k < 2 * kSmallSplitMacs) {
      part(0, blocks);
    } else {
      at::parallel_for(0, blocks, std::max<int64_t>(1, kSmallSplitMacs / (8 * n * k)), part);
    }
  }

  // c = (accumulate ? c : 0) + a @ op(W), op(W) = W^T forward and W backward: through the panel kernel, oneDNN
  // (large float32 products, see onednn_takes), the small-product kernel, the packed weight, or ATen
  template <typename T>
  void multiply(const Block& a, const Block& c, bool accumulate) {
    const int64_t macs = a.n * a.cols * c.cols;
    if (panels.defined() && a.cols == panel_k && c.cols == panel_m) {
      const T* weight_panels = reinterpret_cast<const T*>(panels.data_ptr());
      rnnkit::panel_product<T>(a.n, panel_m, panel_k, a.data<T>(), a.stride(), weight_panels, c.data<T>(), c.stride(),
                               accumulate);
    } else if ((!backward || weight_tc.defined()) && onednn_takes(weight.scalar_type(), macs)) {
      Tensor product = onednn_product(a.view(), backward ? weight_tc : weight), out = c.view();
      accumulate ? out.add_(product) : out.copy_(product);
    } else if (small.defined() && a.cols == small.size(1) && c.cols == small.size(0)) {
      small_product<T>(a, c, accumulate);
    } else if (packed.defined() && a.cols == packed.k && c.cols == packed.n) {
      packed.multiply(a.n, a.data<float>(), a.stride(), c.data<float>(), c.stride(), accumulate ? 1.0f : 0.0f);
    } else {
      Tensor out = c.view();
      const Tensor& w = backward ? weight : weight_t;
      accumulate ? out.addmm_(a.view(), w) : at::mm_out(out, a.view(), w);
    }
  }

  // target (packed rows [o, o+n) of a buffer, possibly a column block, batch rows [lo, lo+n)) += projection(inputs)
  // (= without accumulate)
  template <typename T>
  void add_into(const Block& target, const Block& inputs, int64_t o, int64_t lo, bool accumulate = true) {
    if (!gain) {
      multiply<T>(inputs, target, accumulate);
      return;
    }
    const int64_t n = inputs.n, width = groups * hidden, r = per_step ? lo : o;  // row of pre, mean and rstd
    multiply<T>(inputs, Block(*pre, r, n), false);
    T* into = target.data<T>();
    const int64_t stride = target.stride();
    over_rows(n, width, [&](int64_t b, int64_t e) {
      rnnkit::layer_norm_add<T>(e - b, groups, hidden, ptr<T>(pre) + (r + b) * width, ptr<T>(gain), nullptr,
                                into + b * stride, stride, ptr<T>(mean) + (r + b) * groups,
                                ptr<T>(rstd) + (r + b) * groups, T(eps), accumulate);
    });
  }

  // d loss / d (inputs @ W^T) for rows [o, o+n), from grad = d loss / d projection; `lo`: the batch row of the first
  template <typename T>
  Block grad_pre_of(const Block& grad, int64_t o, int64_t lo) {
    if (!gain) return grad;
    const int64_t n = grad.n, width = groups * hidden, stride = grad.stride();
    const T* g = grad.data<T>();
    auto rows = [&](int64_t b, int64_t e, double* into) {
      rnnkit::layer_norm_backward<T>(e - b, groups, hidden, g + b * stride, stride, ptr<T>(pre) + (o + b) * width,
                                     ptr<T>(gain), ptr<T>(mean) + (o + b) * groups, ptr<T>(rstd) + (o + b) * groups,
                                     ptr<T>(grad_pre) + (o + b) * width, into, nullptr);
    };
    if (grad_gain) {
      sums.add(lo, n, width, rows);
    } else {
      over_rows(n, width, [&](int64_t b, int64_t e) { rows(b, e, nullptr); });
    }
    return Block(*grad_pre, o, n);
  }

  // d loss / d (inputs @ W^T) -> d loss / d inputs (a new [n, H] tensor)
  template <typename T>
  Tensor times_weight(const Block& g) {
    Tensor out = at::empty({g.n, hidden}, weight.options());
    multiply<T>(g, Block(out, 0, g.n), false);
    return out;
  }

  // grad_inputs += d loss / d inputs (times the recurrent-dropout mask rows, if any)
  template <typename T>
  void grad_into(const Block& grad_inputs, const Block& grad, int64_t o, int64_t lo, const OptTensor& mask) {
    const Block g = grad_pre_of<T>(grad, o, lo);
    if (!mask) {
      multiply<T>(g, grad_inputs, true);
      return;
    }
    Tensor full = times_weight<T>(g);
    T *into = grad_inputs.data<T>(), *from = full.data_ptr<T>();
    over_rows(g.n, hidden, [&](int64_t b, int64_t e) {
      rnnkit::addcmul_rows<T>(e - b, hidden, into + b * hidden, from + b * hidden, hidden,
                              ptr<T>(mask) + (o + b) * hidden);
    });
  }

  template <typename T>
  Tensor grad_inputs(const Block& grad, int64_t o, int64_t lo) {
    return times_weight<T>(grad_pre_of<T>(grad, o, lo));
  }
};

// h_prev rows of step t, multiplied by the recurrent-dropout mask when there is one
Block recurrent_input(const Block& h_prev, const OptTensor& mask, const Tensor& scratch, int64_t o,
                      int64_t s = 0) {
  if (!mask) return h_prev;
  const int64_t n = h_prev.n;
  Tensor out = scratch.narrow(0, s, n);
  at::mul_out(out, h_prev.view(), mask->narrow(0, o, n));
  return Block(scratch, s, n);
}

// BATCH SPLIT. The rows of a batch never meet in the recurrence (each sequence's state depends on its own past
// only, forward and backward), so a loop's batch is split over torch's threads once for the whole loop: each
// thread runs every step on its own rows [lo, hi), the product of those rows and their pointwise work, with no
// barrier between steps (per-step splitting joins the threads twice a step: the product's and the pointwise
// pass's). Each row gets the same pointwise arithmetic as in an unsplit loop, and its product is the same call on
// fewer rows: the same bit for bit with rnnkit's small-product kernel (tests check it) and, in every benchmark
// run, with MKL's packed weight, which MKL does not promise (tests hold those to rounding). Each thread takes at
// least kSplitMinRows rows, and its products go through the small-product kernel below kPackMinRows rows, the
// packed weight from there (one thread's packed product of 8 rows beat the kernel: (16,1000,16,64) training 23%
// against 5% less time than unsplit), and where the panel kernel is on (the default) it takes them from
// kPanelMinRows rows (PANEL PRODUCTS). Where float32 products go through oneDNN (AVX-512 CPUs), a thread's product
// of at least onednn_min_macs multiply-adds the panel kernel does not take still does, on that thread (oneDNN runs
// one thread inside a parallel region). Backward loops that sum across rows (layer norm's gain gradients) split
// over a number of threads that divides kSumChunks, so that each thread sums whole chunks (SUMS ACROSS ROWS IN A
// LOOP).
// Training (B,T,I,H), in-process A/B against per-step splitting on an AVX2 EPYC with 2 threads, all four cells:
// (32,100,32,128) 3-9% less time, (64,200,64,256) 1-4%, (16,1000,16,64) 10-27%, (256,50,64,128) 1-4%, batch
// 4-24 at T=100 2-15% (batch 7, 3 + 4 rows: 1-3% more). One row per thread (batch 2) gained 2-9%, but batch 3
// (1 + 2 rows) lost 8-13%, hence two.
// On an AVX-512 Zen 5 (2 threads), against unsplit loops with oneDNN's two-threaded products, two interleaved
// runs: training (32,100,32,128) RNN/GRU 16-22% less time, LSTM 10-14%, LN-LSTM 1-8%; (16,1000,16,64) 21-36%
// (LN-LSTM 8-11%); (256,50,64,128) LSTM/RNN 6-11%, GRU 11% less and 2% more, LN-LSTM 2-4% more; (64,200,64,256)
// 8% less to 4% more: a tie. Inference (one run): 1-36% less, but (64,200,64,256) LSTM and LN-LSTM 2-5% more.
std::atomic<bool> batch_split{true};
int64_t set_batch_split(bool on) { return batch_split.exchange(on) ? 1 : 0; }
constexpr int64_t kSplitMinRows = 2;

struct Split {
  int64_t batch, threads = 1;
  // sums: the loop sums across rows (SUMS ACROSS ROWS IN A LOOP), so the thread count must divide kSumChunks
  explicit Split(int64_t batch, bool sums = false) : batch(batch) {
    // (without OpenMP, parallel_for would run the parts one after the other, each product on a part of the rows)
    if (threaded() && batch_split.load(std::memory_order_relaxed) && !at::in_parallel_region() &&
        parallel_min.load(std::memory_order_relaxed) >= 0)
      threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), batch / kSplitMinRows));
    while (sums && kSumChunks % threads != 0) --threads;
  }
  // the most rows of one thread's step (what a projection's product routing goes by)
  int64_t rows() const { return (batch + threads - 1) / threads; }
  // body(lo, hi) for each thread's rows, all threads at once, each with the calling thread's grad mode and
  // dispatch settings (BELOW AUTOGRAD: the ATen calls in a step need them, which are per thread)
  template <typename F>
  void run(const F& body) const {
    if (threads == 1) {
      body(int64_t(0), batch);
      return;
    }
    const at::ThreadLocalState caller;
    at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
      const at::ThreadLocalStateGuard same(caller);
      for (int64_t k = first; k < last; ++k) body(batch * k / threads, batch * (k + 1) / threads);
    });
  }
};

// SAVED BUFFERS REUSED. Whether the autograd graph whose backward runs on this thread is kept after it: with
// retain_graph (or create_graph) a later backward reads a Function's saved buffers again, without it autograd
// frees them as soon as the Function's backward returns, which may then write its gradients into them (see
// rnnkit.engine.fused.compiled.may_reuse_saved). True, the safe answer, when no backward runs on this thread or
// this torch cannot tell (libtorch answers true itself when there is no graph task).
bool graph_kept() {
  return torch::autograd::get_current_graph_task_keep_graph == nullptr ||
         torch::autograd::get_current_graph_task_keep_graph();
}

// over how many threads a loop that may split its batch splits one of `batch` rows now (for tests)
int64_t batch_threads(int64_t batch) { return Split(batch).threads; }

// PAIRED DIRECTIONS. A bidirectional layer's two loops are independent: run one after the other, each either
// leaves the second thread idle (a batch of 1-3 rows does not split, see BATCH SPLIT) or splits its batch, so that
// each thread's products have half the rows. After pair_loops(2) on a thread, that thread's next two forward loops
// (lstm_forward, gru_forward) run together: the first is kept (with its own copies of every argument) and returns
// at once, its buffers not yet written; the second runs both, each on a thread of its own with its whole batch
// (inside that parallel region neither splits, and a product that would go through oneDNN runs on its thread).
// The caller reads neither's results before the second call returns. pair_loops(0) runs whatever is kept (after
// an error between the two calls) and ends the pairing. Each loop computes exactly what it computes alone.
// Inference, in-process A/B on a Zen 4: rnnkit.engine.fused.PAIRED_MAX_WIDTH.
thread_local std::vector<std::function<void()>> kept_loops;
thread_local int64_t loops_to_pair = 0;

void run_loops(std::vector<std::function<void()>>& loops) {
  if (loops.size() < 2) {
    for (auto& loop : loops) loop();
    return;
  }
  const at::ThreadLocalState caller;  // (BELOW AUTOGRAD: grad mode and dispatch settings are per thread)
  at::parallel_for(0, static_cast<int64_t>(loops.size()), 1, [&](int64_t first, int64_t last) {
    const at::ThreadLocalStateGuard same(caller);
    for (int64_t k = first; k < last; ++k) loops[k]();
  });
}

void pair_loops(int64_t count) {
  TORCH_CHECK(count == 0 || count == 2, "rnnkit compiled loops: pair_loops takes 0 or 2, got ", count);
  std::vector<std::function<void()>> loops;
  loops.swap(kept_loops);
  loops_to_pair = count;
  run_loops(loops);
}

// while a pair is being formed (loops_to_pair > 0: the callers run their loop directly otherwise): loop, which owns
// its arguments, is kept, and the pair's last one runs them all (PAIRED DIRECTIONS)
void keep_for_pair(std::function<void()> loop) {
  kept_loops.push_back(std::move(loop));
  if (--loops_to_pair > 0) return;
  std::vector<std::function<void()>> loops;
  loops.swap(kept_loops);
  run_loops(loops);
}

// INPUTS STEP BY STEP. Where no backward will run, the LSTM's forward (and the GRU's, the Elman RNN's) takes the
// packed inputs x [N, I] and the input projection (`input`: [W_ih] or, with layer norm, [W_ih, gain, pre, mean, rstd]
// of one step's rows, see Projection::per_step; `input_bias`: b_ih + b_hh or none) instead of every step's gates from
// one GEMM up front: each step forms its gates in act, then a [B, G*H] scratch, as input_bias + x_t W_ih^T (or
// LN(x_t W_ih^T) gain), and goes on as before. The all-steps GEMM wrote an [N, G*H] buffer that the loop then read
// back through memory. (LSTM) tanh_c: a [B, H] scratch for each step's tanh(c^) (backward recomputes it from
// cell_tilde)
// A loop's step-by-step input projection (INPUTS STEP BY STEP): off (forming no gates) unless x is given.
struct StepInputs {
  std::optional<Projection> projection;
  const OptTensor& x;
  const OptTensor& bias;
  int64_t width;  // G * H, the gates of a row

  StepInputs(const OptTensor& x, at::TensorList input, const OptTensor& bias, const Tensor& act, int64_t groups,
             int64_t H, double eps, const Split& split, const Steps& steps)
      : x(x), bias(bias), width(groups * H) {
    if (!x) return;
    TORCH_CHECK(!input.empty() && act.size(0) == steps.batch && act.size(1) == width,
                "rnnkit compiled loops: with x, act must be a [B, ", width, "] scratch and input the input projection");
    TORCH_CHECK(!bias || bias->numel() == width, "rnnkit compiled loops: input_bias must have ", width, " entries");
    projection.emplace(input, H, eps, false, split.rows(), steps.count(), split.threads > 1, steps.batch);
  }
  explicit operator bool() const { return projection.has_value(); }

  // act's rows [lo, lo + n) = bias + the inputs' packed rows [o, o + n) projected
  template <typename T>
  void into(const Tensor& act, int64_t o, int64_t lo, int64_t n) {
    if (bias) {
      T* rows = ptr<T>(act) + lo * width;
      for (int64_t r = 0; r < n; ++r) std::copy_n(ptr<T>(bias), width, rows + r * width);
    }
    projection->add_into<T>(Block(act, lo, n), Block(*x, o, n), o, lo, bias.has_value());
  }
};

// PREFETCH. The LSTM's training loops read (and write) rows of [N, *] buffers that went through memory since the
// last step touched them: the gates the input projection wrote up front, the recurrent layer norm's inputs, the
// states. At the start of step t each thread asks for its rows of the next step's blocks (t + 1 forward, t - 1
// backward), which arrive while step t's product runs (64-byte lines, into L2, for writing where the step writes
// them). Threads of fewer than kPrefetchMinRows rows skip it (their blocks are a few cache lines). Training,
// in-process A/B on a Zen 5 (compiled.prefetch_steps): see benchmarks/RESULTS.md, fourteenth session.
constexpr int64_t kPrefetchMinRows = 4;
std::atomic<bool> prefetch_steps{true};
bool set_prefetch(bool on) { return prefetch_steps.exchange(on); }
template <typename T>
inline void prefetch_rows(const T* base, int64_t count) {
  const char* p = reinterpret_cast<const char*>(base);
  const char* end = p + count * sizeof(T);
  for (; p < end; p += 64) __builtin_prefetch(p, 1, 2);
}
inline bool prefetching(int64_t rows) {
  return rows >= kPrefetchMinRows && prefetch_steps.load(std::memory_order_relaxed);
}

void lstm_forward_now(Tensor act, Tensor hs, Tensor cs, Tensor cell_tilde, Tensor tanh_c, at::TensorList projection,
                      OptTensor peephole, OptTensor cell_gain, OptTensor cell_bias, OptTensor cell_mean,
                      OptTensor cell_rstd, OptTensor recurrent, OptTensor zone_h, OptTensor zone_c, OptTensor x,
                      at::TensorList input, OptTensor input_bias, at::IntArrayRef batch_sizes, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see BELOW AUTOGRAD above
  for (const Tensor& t : {act, hs, cs, cell_tilde, tanh_c}) check_dense(t, "LSTM buffer");
  for (const auto& t : {peephole, cell_gain, cell_bias, cell_mean, cell_rstd, recurrent, zone_h, zone_c, x, input_bias})
    check_dense(t, "LSTM option");
  const Steps steps(batch_sizes);
  const int64_t H = hs.size(1);
  const Split split(steps.batch);
  Projection proj(projection, H, eps, false, split.rows(), steps.count(), split.threads > 1, steps.batch);
  StepInputs inputs(x, input, input_bias, act, 4, H, eps, split, steps);
  TORCH_CHECK(tanh_c.size(0) >= steps.batch && tanh_c.size(1) == H, "rnnkit compiled loops: tanh_c must be [B, H]");
  Tensor scratch = recurrent ? at::empty({steps.batch, H}, hs.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "rnnkit_lstm_forward", [&] {
    using T = scalar_t;
    split.run([&](int64_t lo, int64_t hi) {
      for (int64_t t = 0; t < steps.count(); ++t) {
        const int64_t n = std::min(steps.sizes[t], hi) - lo;
        if (n <= 0) break;
        const int64_t o = steps.offsets[t] + lo, p = steps.previous(t) + lo, q = steps.next(t) + lo;
        const int64_t a = inputs ? lo : o;  // act's first row for this step
        if (!inputs && t + 1 < steps.count()) {  // the next step's rows (PREFETCH; training: act from memory)
          const int64_t n1 = std::min(steps.sizes[t + 1], hi) - lo;
          if (prefetching(n1)) {
            const int64_t o1 = steps.offsets[t + 1] + lo, q1 = steps.next(t + 1) + lo;
            prefetch_rows(ptr<T>(act) + o1 * 4 * H, n1 * 4 * H);
            prefetch_rows(ptr<T>(cell_tilde) + o1 * H, n1 * H);
            prefetch_rows(ptr<T>(cs) + q1 * H, n1 * H);
            prefetch_rows(ptr<T>(hs) + q1 * H, n1 * H);
            if (proj.pre && !proj.per_step) prefetch_rows(ptr<T>(proj.pre) + o1 * 4 * H, n1 * 4 * H);
          }
        }
        if (inputs) inputs.into<T>(act, o, lo, n);
        proj.add_into<T>(Block(act, a, n), recurrent_input(Block(hs, p, n), recurrent, scratch, o, lo), o, lo);
        over_rows(n, 4 * H, [&](int64_t b, int64_t e) {
          const int64_t ob = o + b, pb = p + b, qb = q + b;
          rnnkit::lstm_forward_rows<T>(
              e - b, H, ptr<T>(act) + (a + b) * 4 * H, ptr<T>(hs) + pb * H, ptr<T>(cs) + pb * H,
              ptr<T>(cell_tilde) + ob * H, ptr<T>(tanh_c) + (lo + b) * H, ptr<T>(hs) + qb * H, ptr<T>(cs) + qb * H,
              ptr<T>(peephole), ptr<T>(cell_gain), ptr<T>(cell_bias), cell_gain ? ptr<T>(cell_mean) + ob : nullptr,
              cell_gain ? ptr<T>(cell_rstd) + ob : nullptr, zone_h ? ptr<T>(zone_h) + ob * H : nullptr,
              zone_c ? ptr<T>(zone_c) + ob * H : nullptr, T(eps));
        });
      }
    });
  });
}

void lstm_forward(Tensor act, Tensor hs, Tensor cs, Tensor cell_tilde, Tensor tanh_c, at::TensorList projection,
                  OptTensor peephole, OptTensor cell_gain, OptTensor cell_bias, OptTensor cell_mean,
                  OptTensor cell_rstd, OptTensor recurrent, OptTensor zone_h, OptTensor zone_c, OptTensor x,
                  at::TensorList input, OptTensor input_bias, at::IntArrayRef batch_sizes, double eps) {
  if (loops_to_pair <= 0)
    return lstm_forward_now(act, hs, cs, cell_tilde, tanh_c, projection, peephole, cell_gain, cell_bias, cell_mean,
                            cell_rstd, recurrent, zone_h, zone_c, x, input, input_bias, batch_sizes, eps);
  keep_for_pair([=, projection = projection.vec(), input = input.vec(), batch_sizes = batch_sizes.vec()] {
    lstm_forward_now(act, hs, cs, cell_tilde, tanh_c, projection, peephole, cell_gain, cell_bias, cell_mean,
                     cell_rstd, recurrent, zone_h, zone_c, x, input, input_bias, batch_sizes, eps);
  });
}

// Local derivatives recomputed each step from act (i, f, g, o), cell_tilde [N, H] (c~ before zoneout) and
// cs [B+N, H] (c_{t-1} rows); tanh_c is a [B, H] scratch for each step's recomputed tanh(c^).
void lstm_backward(Tensor grad_in, Tensor grad_c, Tensor tanh_c, Tensor cs, Tensor act, Tensor grad_gates,
                   at::TensorList projection, OptTensor peephole, Tensor cell_tilde, OptTensor cell_gain,
                   OptTensor cell_bias, OptTensor cell_mean, OptTensor cell_rstd, OptTensor grad_shown,
                   OptTensor grad_cell, OptTensor recurrent, OptTensor zone_h, OptTensor zone_c,
                   at::IntArrayRef batch_sizes, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see BELOW AUTOGRAD above
  for (const Tensor& t : {grad_in, grad_c, tanh_c, cs, act, grad_gates, cell_tilde}) check_dense(t, "LSTM buffer");
  for (const auto& t : {peephole, cell_gain, cell_bias, cell_mean, cell_rstd, grad_shown, grad_cell, recurrent, zone_h,
                        zone_c})
    check_dense(t, "LSTM option");
  const Steps steps(batch_sizes);
  const int64_t H = grad_in.size(1);
  const Split split(steps.batch, projection.size() > 1 || cell_gain);
  Projection proj(projection, H, eps, true, split.rows(), steps.count(), split.threads > 1, steps.batch);
  TORCH_CHECK(tanh_c.size(0) >= steps.batch && tanh_c.size(1) == H, "rnnkit compiled loops: tanh_c must be [B, H]");
  if (cell_gain) {
    TORCH_CHECK(grad_shown && grad_shown->size(0) >= steps.batch && grad_shown->size(1) == H,
                "rnnkit compiled loops: grad_shown must be [B, H]");
    TORCH_CHECK(grad_cell && grad_cell->scalar_type() == at::kDouble && grad_cell->numel() == 2 * H,
                "rnnkit compiled loops: grad_cell must be float64 [2, H]");
  }
  ChunkSums cell;  // of the cell norm's parameter gradients (SUMS ACROSS ROWS IN A LOOP)
  if (cell_gain) cell.init(steps.batch, 2 * H);
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "rnnkit_lstm_backward", [&] {
    using T = scalar_t;
    split.run([&](int64_t lo, int64_t hi) {
      for (int64_t t = steps.count() - 1; t >= 0; --t) {
        const int64_t n = std::min(steps.sizes[t], hi) - lo;
        if (n <= 0) continue;
        const int64_t o = steps.offsets[t] + lo, p = steps.previous(t) + lo, q = steps.next(t) + lo;
        if (t > 0) {  // the rows of step t - 1, the next one this loop runs (PREFETCH)
          const int64_t n1 = std::min(steps.sizes[t - 1], hi) - lo;
          if (prefetching(n1)) {
            const int64_t o1 = steps.offsets[t - 1] + lo, p1 = steps.previous(t - 1) + lo;
            prefetch_rows(ptr<T>(act) + o1 * 4 * H, n1 * 4 * H);
            prefetch_rows(ptr<T>(cell_tilde) + o1 * H, n1 * H);
            prefetch_rows(ptr<T>(cs) + p1 * H, n1 * H);
            if (proj.pre) prefetch_rows(ptr<T>(proj.pre) + o1 * 4 * H, n1 * 4 * H);
          }
        }
        auto rows = [&](int64_t b, int64_t e, double* cell_sums) {
          const int64_t ob = o + b, sb = lo + b;  // sb: row of the [B, H] scratch buffers
          rnnkit::lstm_backward_rows<T>(
              e - b, H, ptr<T>(grad_in) + (q + b) * H, ptr<T>(grad_c) + sb * H, ptr<T>(tanh_c) + sb * H,
              ptr<T>(cs) + (p + b) * H, ptr<T>(act) + ob * 4 * H, ptr<T>(grad_gates) + ob * 4 * H,
              ptr<T>(grad_in) + (p + b) * H, ptr<T>(peephole), ptr<T>(cell_tilde) + ob * H, ptr<T>(cell_gain),
              ptr<T>(cell_bias), cell_gain ? ptr<T>(cell_mean) + ob : nullptr,
              cell_gain ? ptr<T>(cell_rstd) + ob : nullptr, cell_gain ? ptr<T>(grad_shown) + sb * H : nullptr,
              cell_sums, zone_h ? ptr<T>(zone_h) + ob * H : nullptr, zone_c ? ptr<T>(zone_c) + ob * H : nullptr);
        };
        if (cell_gain) {
          cell.add(lo, n, 4 * H, rows);
        } else {
          over_rows(n, 4 * H, [&](int64_t b, int64_t e) { rows(b, e, nullptr); });
        }
        proj.grad_into<T>(Block(grad_in, p, n), Block(grad_gates, o, n), o, lo, recurrent);
      }
    });
  });
  proj.finish();
  if (cell_gain) cell.finish(ptr<double>(grad_cell));
}

// reset after: projection = [R]; each step's R(h~) + b_hh (bias: b_hh or none) is formed in a [B, 3H] scratch
// and terms [N, H] keeps its n part (all backward needs).
// reset before: projection = [R_rz..., R_n...] (split by `split` tensors), terms [N, H] receives r * h~.
// x, input, input_bias: the step-by-step input projection of inference, as lstm_forward's (INPUTS STEP BY STEP):
// act is then a [B, 3H] scratch; input_bias is b_ih (reset after) or b_ih + b_hh (reset before).
void gru_forward_now(Tensor act, Tensor states, Tensor terms, OptTensor candidate, at::TensorList projection,
                     int64_t split, OptTensor bias, OptTensor recurrent, OptTensor zone, OptTensor x,
                     at::TensorList input, OptTensor input_bias, at::IntArrayRef batch_sizes, bool reset_after,
                     double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see BELOW AUTOGRAD above
  for (const Tensor& t : {act, states, terms}) check_dense(t, "GRU buffer");
  for (const auto& t : {candidate, bias, recurrent, zone, x, input_bias}) check_dense(t, "GRU option");
  const Steps steps(batch_sizes);
  const int64_t H = states.size(1);
  const Split rows(steps.batch);
  Projection first(projection.slice(0, split), H, eps, false, rows.rows(), steps.count(), rows.threads > 1,
                   steps.batch);
  std::optional<Projection> second;
  if (!reset_after)
    second.emplace(projection.slice(split), H, eps, false, rows.rows(), steps.count(), rows.threads > 1, steps.batch);
  Tensor scratch = recurrent ? at::empty({steps.batch, H}, states.options()) : Tensor();
  Tensor hidden = reset_after ? at::empty({steps.batch, 3 * H}, states.options()) : Tensor();
  TORCH_CHECK(!bias || bias->numel() == 3 * H, "rnnkit compiled loops: the GRU's b_hh must have 3H entries");
  StepInputs inputs(x, input, input_bias, act, 3, H, eps, rows, steps);
  AT_DISPATCH_FLOATING_TYPES(act.scalar_type(), "rnnkit_gru_forward", [&] {
    using T = scalar_t;
    rows.run([&](int64_t lo, int64_t hi) {
      for (int64_t t = 0; t < steps.count(); ++t) {
        const int64_t n = std::min(steps.sizes[t], hi) - lo;
        if (n <= 0) break;
        const int64_t o = steps.offsets[t] + lo, p = steps.previous(t) + lo, q = steps.next(t) + lo;
        const Block h_in = recurrent_input(Block(states, p, n), recurrent, scratch, o, lo);
        const int64_t a = inputs ? lo : o;  // act's first row for this step
        if (inputs) inputs.into<T>(act, o, lo, n);
        T* cand = zone ? ptr<T>(candidate) + o * H : nullptr;
        const T* zz = zone ? ptr<T>(zone) + o * H : nullptr;
        if (reset_after) {
          T* into = ptr<T>(hidden) + lo * 3 * H;  // each row: b_hh (or 0), then + R(h~)
          const T* b_hh = ptr<T>(bias);
          for (int64_t r = 0; r < n; ++r) {
            if (b_hh) {
              std::copy(b_hh, b_hh + 3 * H, into + r * 3 * H);
            } else {
              std::fill(into + r * 3 * H, into + (r + 1) * 3 * H, T(0));
            }
          }
          first.add_into<T>(Block(hidden, lo, n), h_in, o, lo);
          over_rows(n, 3 * H, [&](int64_t b, int64_t e) {
            rnnkit::gru_forward_rows<T>(e - b, H, ptr<T>(act) + (a + b) * 3 * H, into + b * 3 * H,
                                        ptr<T>(terms) + (o + b) * H, ptr<T>(states) + (p + b) * H,
                                        cand ? cand + b * H : nullptr, ptr<T>(states) + (q + b) * H,
                                        zz ? zz + b * H : nullptr);
          });
        } else {
          const Block block(act, a, n);
          first.add_into<T>(block.columns(0, 2 * H), h_in, o, lo);
          over_rows(n, 2 * H, [&](int64_t b, int64_t e) {
            rnnkit::sigmoid_rows<T>(e - b, 2 * H, ptr<T>(act) + (a + b) * 3 * H, 3 * H);
          });
          Tensor term = terms.narrow(0, o, n);
          at::mul_out(term, block.columns(0, H).view(), h_in.view());
          second->add_into<T>(block.columns(2 * H, H), Block(terms, o, n), o, lo);
          over_rows(n, H, [&](int64_t b, int64_t e) {
            rnnkit::gru_forward_rows<T>(e - b, H, ptr<T>(act) + (a + b) * 3 * H, nullptr, nullptr,
                                        ptr<T>(states) + (p + b) * H,
                                        cand ? cand + b * H : nullptr, ptr<T>(states) + (q + b) * H,
                                        zz ? zz + b * H : nullptr);
          });
        }
      }
    });
  });
}

void gru_forward(Tensor act, Tensor states, Tensor terms, OptTensor candidate, at::TensorList projection,
                 int64_t split, OptTensor bias, OptTensor recurrent, OptTensor zone, OptTensor x, at::TensorList input,
                 OptTensor input_bias, at::IntArrayRef batch_sizes, bool reset_after, double eps) {
  if (loops_to_pair <= 0)
    return gru_forward_now(act, states, terms, candidate, projection, split, bias, recurrent, zone, x, input,
                           input_bias, batch_sizes, reset_after, eps);
  keep_for_pair([=, projection = projection.vec(), input = input.vec(), batch_sizes = batch_sizes.vec()] {
    gru_forward_now(act, states, terms, candidate, projection, split, bias, recurrent, zone, x, input, input_bias,
                    batch_sizes, reset_after, eps);
  });
}

// Reset after, local derivatives recomputed each step from act (r, z, n), states and n_term [N, H] (what
// gru_forward kept): grad_hidden [N, 3H] receives d loss / d (R(h~) + b_hh), grad_n [N, H] d loss / d (input
// term of n), grad_in [B+N, H] the state gradients (d loss / d h_t in; h_0's in the first block out).
void gru_backward_after(Tensor grad_in, Tensor act, Tensor states, Tensor n_term, Tensor grad_hidden, Tensor grad_n,
                        at::TensorList projection, OptTensor recurrent, OptTensor zone, at::IntArrayRef batch_sizes,
                        double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see BELOW AUTOGRAD above
  for (const Tensor& t : {grad_in, act, states, n_term, grad_hidden, grad_n}) check_dense(t, "GRU buffer");
  for (const auto& t : {recurrent, zone}) check_dense(t, "GRU option");
  const Steps steps(batch_sizes);
  const int64_t H = grad_in.size(1);
  const Split split(steps.batch, projection.size() > 1);
  Projection proj(projection, H, eps, true, split.rows(), steps.count(), split.threads > 1, steps.batch);
  AT_DISPATCH_FLOATING_TYPES(grad_in.scalar_type(), "rnnkit_gru_backward_after", [&] {
    using T = scalar_t;
    split.run([&](int64_t lo, int64_t hi) {
      for (int64_t t = steps.count() - 1; t >= 0; --t) {
        const int64_t n = std::min(steps.sizes[t], hi) - lo;
        if (n <= 0) continue;
        const int64_t o = steps.offsets[t] + lo, p = steps.previous(t) + lo, q = steps.next(t) + lo;
        over_rows(n, 3 * H, [&](int64_t b, int64_t e) {
          const int64_t ob = o + b;
          rnnkit::gru_backward_after_rows<T>(e - b, H, ptr<T>(grad_in) + (q + b) * H, ptr<T>(act) + ob * 3 * H,
                                             ptr<T>(states) + (p + b) * H, ptr<T>(n_term) + ob * H,
                                             zone ? ptr<T>(zone) + ob * H : nullptr, ptr<T>(grad_hidden) + ob * 3 * H,
                                             ptr<T>(grad_n) + ob * H, ptr<T>(grad_in) + (p + b) * H);
        });
        proj.grad_into<T>(Block(grad_in, p, n), Block(grad_hidden, o, n), o, lo, recurrent);
      }
    });
  });
  proj.finish();
}

// Reset before, local derivatives recomputed each step from act (r, z, n), states (h_{t-1} rows), the
// recurrent-dropout mask and zoneout: grad_gates [N, 3H] receives the pre-activation gradients, grad_in
// [B+N, H] the state gradients.
void gru_backward_before(Tensor grad_in, Tensor act, Tensor states, Tensor grad_gates, at::TensorList projection,
                         int64_t split, OptTensor recurrent, OptTensor zone, at::IntArrayRef batch_sizes, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see BELOW AUTOGRAD above
  for (const Tensor& t : {grad_in, act, states, grad_gates}) check_dense(t, "GRU buffer");
  for (const auto& t : {recurrent, zone}) check_dense(t, "GRU option");
  const Steps steps(batch_sizes);
  const int64_t H = grad_in.size(1);
  const Split rows(steps.batch, projection.size() > 2);
  Projection first(projection.slice(0, split), H, eps, true, rows.rows(), steps.count(), rows.threads > 1, steps.batch),
      second(projection.slice(split), H, eps, true, rows.rows(), steps.count(), rows.threads > 1, steps.batch);
  AT_DISPATCH_FLOATING_TYPES(grad_in.scalar_type(), "rnnkit_gru_backward_before", [&] {
    using T = scalar_t;
    rows.run([&](int64_t lo, int64_t hi) {
      for (int64_t t = steps.count() - 1; t >= 0; --t) {
        const int64_t n = std::min(steps.sizes[t], hi) - lo;
        if (n <= 0) continue;
        const int64_t o = steps.offsets[t] + lo, p = steps.previous(t) + lo, q = steps.next(t) + lo;
        T* gp = ptr<T>(grad_in) + p * H;
        T* gg = ptr<T>(grad_gates) + o * 3 * H;
        over_rows(n, 3 * H, [&](int64_t b, int64_t e) {
          rnnkit::gru_backward_before_zn_rows<T>(e - b, H, ptr<T>(grad_in) + (q + b) * H,
                                                 ptr<T>(act) + (o + b) * 3 * H, ptr<T>(states) + (p + b) * H,
                                                 zone ? ptr<T>(zone) + (o + b) * H : nullptr, gg + b * 3 * H,
                                                 gp + b * H);
        });
        Tensor grad_rh = second.grad_inputs<T>(Block(grad_gates, o, n).columns(2 * H, H), o, lo);
        const T* grh = grad_rh.data_ptr<T>();
        over_rows(n, 2 * H, [&](int64_t b, int64_t e) {
          rnnkit::gru_backward_before_r_rows<T>(e - b, H, grh + b * H, ptr<T>(act) + (o + b) * 3 * H,
                                                ptr<T>(states) + (p + b) * H,
                                                recurrent ? ptr<T>(recurrent) + (o + b) * H : nullptr, gg + b * 3 * H,
                                                gp + b * H);
        });
        first.grad_into<T>(Block(grad_in, p, n), Block(grad_gates, o, n).columns(0, 2 * H), o, lo, recurrent);
      }
    });
  });
  first.finish();
  second.finish();
}

// With x (INPUTS STEP BY STEP: inference), pre is a [B, H] scratch that each step fills with input_bias + x_t W_ih^T
// (or LN(x_t W_ih^T) gain) before the recurrent term; else pre [N, H] holds every step's input term and biases.
void simple_forward(Tensor pre, Tensor states, at::TensorList projection, OptTensor recurrent, OptTensor zone,
                    OptTensor x, at::TensorList input, OptTensor input_bias, at::IntArrayRef batch_sizes, bool relu,
                    double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see BELOW AUTOGRAD above
  for (const Tensor& t : {pre, states}) check_dense(t, "RNN buffer");
  for (const auto& t : {recurrent, zone, x, input_bias}) check_dense(t, "RNN option");
  const Steps steps(batch_sizes);
  const int64_t H = states.size(1);
  const Split split(steps.batch);
  Projection proj(projection, H, eps, false, split.rows(), steps.count(), split.threads > 1, steps.batch);
  StepInputs inputs(x, input, input_bias, pre, 1, H, eps, split, steps);
  Tensor scratch = recurrent ? at::empty({steps.batch, H}, states.options()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "rnnkit_simple_forward", [&] {
    using T = scalar_t;
    split.run([&](int64_t lo, int64_t hi) {
      for (int64_t t = 0; t < steps.count(); ++t) {
        const int64_t n = std::min(steps.sizes[t], hi) - lo;
        if (n <= 0) break;
        const int64_t o = steps.offsets[t] + lo, p = steps.previous(t) + lo, q = steps.next(t) + lo;
        const int64_t a = inputs ? lo : o;  // pre's first row for this step
        if (inputs) inputs.into<T>(pre, o, lo, n);
        proj.add_into<T>(Block(pre, a, n), recurrent_input(Block(states, p, n), recurrent, scratch, o, lo), o, lo);
        over_rows(n, H, [&](int64_t b, int64_t e) {
          rnnkit::simple_forward_rows<T>(e - b, H, ptr<T>(pre) + (a + b) * H, ptr<T>(states) + (p + b) * H,
                                         ptr<T>(states) + (q + b) * H, relu,
                                         zone ? ptr<T>(zone) + (o + b) * H : nullptr);
        });
      }
    });
  });
}

// act [N, H]: the activations f(pre) of every row (before zoneout); f' is recomputed from them each step
void simple_backward(Tensor grad_in, Tensor act, Tensor grad_pre, at::TensorList projection, OptTensor recurrent,
                     OptTensor zone, at::IntArrayRef batch_sizes, bool relu, double eps) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // see BELOW AUTOGRAD above
  for (const Tensor& t : {grad_in, act, grad_pre}) check_dense(t, "RNN buffer");
  for (const auto& t : {recurrent, zone}) check_dense(t, "RNN option");
  const Steps steps(batch_sizes);
  const int64_t H = grad_in.size(1);
  const Split split(steps.batch, projection.size() > 1);
  Projection proj(projection, H, eps, true, split.rows(), steps.count(), split.threads > 1, steps.batch);
  AT_DISPATCH_FLOATING_TYPES(grad_in.scalar_type(), "rnnkit_simple_backward", [&] {
    using T = scalar_t;
    split.run([&](int64_t lo, int64_t hi) {
      for (int64_t t = steps.count() - 1; t >= 0; --t) {
        const int64_t n = std::min(steps.sizes[t], hi) - lo;
        if (n <= 0) continue;
        const int64_t o = steps.offsets[t] + lo, p = steps.previous(t) + lo, q = steps.next(t) + lo;
        const T* gh = ptr<T>(grad_in) + q * H;
        over_rows(n, H, [&](int64_t b, int64_t e) {
          rnnkit::simple_backward_rows<T>(e - b, H, gh + b * H, ptr<T>(act) + (o + b) * H,
                                          zone ? ptr<T>(zone) + (o + b) * H : nullptr, relu,
                                          ptr<T>(grad_pre) + (o + b) * H);
        });
        proj.grad_into<T>(Block(grad_in, p, n), Block(grad_pre, o, n), o, lo, recurrent);
        if (zone) {
          over_rows(n, H, [&](int64_t b, int64_t e) {
            rnnkit::addcmul_rows<T>(e - b, H, ptr<T>(grad_in) + (p + b) * H, gh + b * H, H, ptr<T>(zone) + (o + b) * H);
          });
        }
      }
    });
  });
  proj.finish();
}

// dst = src^T for src [rows, cols] and dst [cols, rows], both with unit column stride (a weight gradient's first
// operand for oneDNN, which would otherwise make the transposed view contiguous itself; torch's copy of a
// transposed [12800, 128] float view took 1.9 ms on an AVX-512 Zen 5, 20x a straight copy of it): 8 x 8 blocks
// in registers, blocks of rows split over torch's threads
void transpose_into(Tensor src, Tensor dst) {
  TORCH_CHECK(src.dim() == 2 && dst.dim() == 2 && dst.size(0) == src.size(1) && dst.size(1) == src.size(0),
              "rnnkit transpose_into: dst must be src's transpose in shape");
  TORCH_CHECK(src.stride(1) == 1 && dst.stride(1) == 1 && src.scalar_type() == dst.scalar_type(),
              "rnnkit transpose_into: both need unit column stride and one dtype");
  const int64_t rows = src.size(0), cols = src.size(1), blocks = (rows + 7) / 8;
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "rnnkit_transpose_into", [&] {
    const scalar_t* from = src.data_ptr<scalar_t>();
    scalar_t* to = dst.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 8 * cols));  // ~16k elements a task
    at::parallel_for(0, blocks, grain, [&](int64_t b, int64_t e) {
      const int64_t first = 8 * b, last = std::min(rows, 8 * e);
      rnnkit::transpose_rows<scalar_t>(last - first, cols, from + first * src.stride(0), src.stride(0), to + first,
                                       dst.stride(0));
    });
  });
}

// out = (accumulate ? out : 0) + x @ op(w) through the panel kernel on this thread (op(w) = w^T when transposed),
// as the loops' recurrent products run it (PANEL PRODUCTS; for tests)
void panel_mm(Tensor x, Tensor w, bool transposed, Tensor out, bool accumulate) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && out.dim() == 2 && w.is_contiguous(),
              "rnnkit panel_mm: needs 2-D x and out and a contiguous 2-D w; got x ", x.sizes(), ", w ", w.sizes(),
              ", out ", out.sizes());
  const int64_t k = transposed ? w.size(1) : w.size(0), m = transposed ? w.size(0) : w.size(1);
  TORCH_CHECK(x.size(1) == k && out.size(0) == x.size(0) && out.size(1) == m && x.stride(1) == 1 &&
                  out.stride(1) == 1 && x.scalar_type() == w.scalar_type() && out.scalar_type() == w.scalar_type(),
              "rnnkit panel_mm: x must be [rows, ", k, "] and out [rows, ", m, "], one dtype, unit column strides; ",
              "got x ", x.sizes(), " ", x.scalar_type(), ", w ", w.sizes(), " ", w.scalar_type(), ", out ",
              out.sizes(), " ", out.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "rnnkit_panel_mm", [&] {
    Tensor panels = at::empty({rnnkit::panel_buffer_size<scalar_t>(m, k)}, w.options());
    rnnkit::pack_panels<scalar_t>(m, k, w.data_ptr<scalar_t>(), transposed, panels.data_ptr<scalar_t>());
    rnnkit::panel_product<scalar_t>(x.size(0), m, k, x.data_ptr<scalar_t>(), x.stride(0), panels.data_ptr<scalar_t>(),
                                    out.data_ptr<scalar_t>(), out.stride(0), accumulate);
  });
}

// Layer norm per gate group over all rows at once (the input side of a layer-norm cell):
// target = LN(pre) * gain (+ bias), with the statistics of each (row, group) into mean and rstd [N, groups]; target
// may be pre (inference: nothing reads pre again).
void layer_norm_gates(Tensor pre, Tensor gain, OptTensor bias, Tensor target, Tensor mean, Tensor rstd, int64_t hidden,
                      double eps) {
  for (const Tensor& t : {pre, gain, target, mean, rstd}) check_dense(t, "layer-norm buffer");
  check_dense(bias, "layer-norm bias");
  const int64_t rows = pre.size(0), groups = pre.size(1) / hidden, width = pre.size(1);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "rnnkit_layer_norm_gates", [&] {
    using T = scalar_t;
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      rnnkit::layer_norm_add<T>(end - begin, groups, hidden, ptr<T>(pre) + begin * width, ptr<T>(gain), ptr<T>(bias),
                                ptr<T>(target) + begin * width, width, ptr<T>(mean) + begin * groups,
                                ptr<T>(rstd) + begin * groups, T(eps), false);
    });
  });
}

// grad_pre = d loss / d pre of layer_norm_gates from grad = d loss / d target; grad_gain (float64) += grad * LN(pre).
// grad_bias (float64, optional) += grad summed over the rows, in the same pass: the bias added after the norm (no
// separate pass over the [N, gH] gradient for it).
void layer_norm_gates_backward(Tensor grad, Tensor pre, Tensor gain, Tensor mean, Tensor rstd, Tensor grad_pre,
                               Tensor grad_gain, OptTensor grad_bias, int64_t hidden) {
  for (const Tensor& t : {grad, pre, gain, mean, rstd, grad_pre, grad_gain}) check_dense(t, "layer-norm buffer");
  check_dense(grad_bias, "layer-norm buffer");
  TORCH_CHECK(grad_gain.scalar_type() == at::kDouble && (!grad_bias || grad_bias->scalar_type() == at::kDouble),
              "rnnkit compiled loops: grad_gain and grad_bias must be float64");
  const int64_t rows = pre.size(0), groups = pre.size(1) / hidden, width = pre.size(1);
  TORCH_CHECK(grad_gain.numel() == width && (!grad_bias || grad_bias->numel() == width),
              "rnnkit compiled loops: grad_gain and grad_bias must have ", width, " elements");
  // rows go in a fixed number of chunks whatever the thread count (see sum_over_chunks); each chunk sums the gain's
  // gradient into the first `width` doubles of its share and the bias's into the next `width`
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(8, rows)), count = grad_bias ? 2 * width : width;
  std::vector<double> partial, total(count, 0.0);
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "rnnkit_layer_norm_gates_backward", [&] {
    using T = scalar_t;
    auto chunk = [&](int64_t begin, int64_t end, double* into) {
      rnnkit::layer_norm_backward<T>(end - begin, groups, hidden, ptr<T>(grad) + begin * width, width,
                                     ptr<T>(pre) + begin * width, ptr<T>(gain), ptr<T>(mean) + begin * groups,
                                     ptr<T>(rstd) + begin * groups, ptr<T>(grad_pre) + begin * width, into,
                                     grad_bias ? into + width : nullptr);
    };
    sum_over_chunks(rows, chunks, count, total.data(), partial, chunk);
  });
  double* gain_sums = ptr<double>(grad_gain);
  for (int64_t j = 0; j < width; ++j) gain_sums[j] += total[j];
  if (grad_bias) {
    double* bias_sums = ptr<double>(grad_bias);
    for (int64_t j = 0; j < width; ++j) bias_sums[j] += total[width + j];
  }
}

}  // namespace

TORCH_LIBRARY(rnnkit_fused, m) {
  m.def("lstm_forward(Tensor(a!) act, Tensor(b!) hs, Tensor(c!) cs, Tensor(d!) cell_tilde, Tensor(e!) tanh_c, "
        "Tensor[] projection, Tensor? peephole, Tensor? cell_gain, Tensor? cell_bias, Tensor? cell_mean, "
        "Tensor? cell_rstd, Tensor? recurrent, Tensor? zone_h, Tensor? zone_c, Tensor? x, Tensor[] input, "
        "Tensor? input_bias, int[] batch_sizes, float eps) -> ()",
        &lstm_forward);
  m.def("lstm_backward(Tensor(a!) grad_in, Tensor(b!) grad_c, Tensor(d!) tanh_c, Tensor cs, "
        "Tensor act, Tensor(c!) grad_gates, Tensor[] projection, Tensor? peephole, Tensor cell_tilde, "
        "Tensor? cell_gain, Tensor? cell_bias, Tensor? cell_mean, Tensor? cell_rstd, Tensor(e!)? grad_shown, "
        "Tensor(f!)? grad_cell, Tensor? recurrent, Tensor? zone_h, Tensor? zone_c, int[] batch_sizes, float eps) -> ()",
        &lstm_backward);
  m.def("gru_forward(Tensor(a!) act, Tensor(b!) states, Tensor(c!) terms, Tensor? candidate, Tensor[] projection, "
        "int split, Tensor? bias, Tensor? recurrent, Tensor? zone, Tensor? x, Tensor[] input, Tensor? input_bias, "
        "int[] batch_sizes, bool reset_after, float eps) -> ()",
        &gru_forward);
  m.def("gru_backward_after(Tensor(a!) grad_in, Tensor act, Tensor states, Tensor n_term, Tensor(b!) grad_hidden, "
        "Tensor(c!) grad_n, Tensor[] projection, Tensor? recurrent, Tensor? zone, int[] batch_sizes, float eps) -> ()",
        &gru_backward_after);
  m.def("gru_backward_before(Tensor(a!) grad_in, Tensor act, Tensor states, Tensor(b!) grad_gates, "
        "Tensor[] projection, int split, Tensor? recurrent, Tensor? zone, int[] batch_sizes, float eps) -> ()",
        &gru_backward_before);
  m.def("simple_forward(Tensor(a!) pre, Tensor(b!) states, Tensor[] projection, Tensor? recurrent, Tensor? zone, "
        "Tensor? x, Tensor[] input, Tensor? input_bias, int[] batch_sizes, bool relu, float eps) -> ()",
        &simple_forward);
  m.def("simple_backward(Tensor(a!) grad_in, Tensor act, Tensor(b!) grad_pre, Tensor[] projection, "
        "Tensor? recurrent, Tensor? zone, int[] batch_sizes, bool relu, float eps) -> ()",
        &simple_backward);
  m.def("set_onednn_min_macs(int macs) -> int", &set_onednn_min_macs);
  m.def("set_parallel_min(int elements) -> int", &set_parallel_min);
  m.def("set_prefetch(bool on) -> bool", &set_prefetch);
  m.def("set_packed_gemm(bool on) -> int", &set_packed_gemm);
  m.def("set_panel_gemm(bool on) -> int", &set_panel_gemm);
  m.def("panel_limits() -> int[]", &panel_limits);
  m.def("set_small_products(bool on) -> int", &set_small_products);
  m.def("set_batch_split(bool on) -> int", &set_batch_split);
  m.def("batch_threads(int batch) -> int", &batch_threads);
  m.def("pair_loops(int count) -> ()", &pair_loops);
  m.def("threaded() -> bool", &threaded);
  m.def("graph_kept() -> bool", &graph_kept);
  m.def("transpose_into(Tensor src, Tensor(a!) dst) -> ()", &transpose_into);
  m.def("panel_mm(Tensor x, Tensor w, bool transposed, Tensor(a!) out, bool accumulate) -> ()", &panel_mm);
  m.def("layer_norm_gates(Tensor pre, Tensor gain, Tensor? bias, Tensor(a!) target, Tensor(b!) mean, "
        "Tensor(c!) rstd, int hidden, float eps) -> ()",
        &layer_norm_gates);
  m.def("layer_norm_gates_backward(Tensor grad, Tensor pre, Tensor gain, Tensor mean, Tensor rstd, "
        "Tensor(a!) grad_pre, Tensor(b!) grad_gain, Tensor(c!)? grad_bias, int hidden) -> ()",
        &layer_norm_gates_backward);
}
