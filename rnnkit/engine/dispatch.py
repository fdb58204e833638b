"""Choosing and running a backend for one recurrent layer (one or two directions).

- ``reference``: :func:`rnnkit.engine.reference.run_direction`, the readable loop over time.
- ``native``: torch.nn's kernels, only for options torch.nn computes exactly.
- ``fused``: :mod:`rnnkit.engine.fused`, one autograd Function per cell family with hand-written BPTT.
- ``auto``: the fastest backend that computes the configuration exactly (see :func:`choose_backend`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from rnnkit.cells.base import RecurrentCell, SequenceNoise, State
from rnnkit.engine import fused, native, reference
from rnnkit.engine.fused import compiled as fused_compiled
from rnnkit.engine.fused.common import autocast_on

BACKENDS = ("auto", "reference", "native", "fused")

#: where the compiled loops' products go through oneDNN (AVX-512 CPUs), ``auto`` trains a plain float32 LSTM on
#: CPU with them rather than with oneDNN's LSTM once steps x batch x hidden size reaches this, from a batch of
#: LSTM_FUSED_MIN_BATCH: oneDNN's LSTM training time per step about doubles somewhere past 512k (its workspace's
#: size). On an AVX-512 Zen 5 (2 threads, batch split), fused over oneDNN's LSTM time (B, T, H; I = 32): 0.61-0.97
#: at 614k-3.3M (B 16-128, T 100-800, H 64-256), 0.99-1.01 at (24-32, 100, 256); under 600k 1.08-1.76 but 0.94 at
#: (16, 200, 64) and 0.82 at (16, 500, 64); batches under 16: 1.32 at (12, 200, 256), 0.79 at (8, 800, 128). On
#: a Zen 4, before the batch split: 0.72-0.88 at B 64-256 (H 128-256), 0.79 at (16, 1000, 64) (I = 16), 1.77 at
#: (32, 100, 128), 1.63 at (8, 1000, 64) (benchmarks/RESULTS.md)
LSTM_FUSED_MIN_WORK = 600_000
LSTM_FUSED_MIN_BATCH = 16
#: where the loops' per-step products go through rnnkit's 512-bit panel kernel (AVX-512 CPUs; twelfth session), the
#: same work from this batch. On a Zen 5 (2 threads), fused over oneDNN's LSTM training time (T, H: batches; I = 32):
#: at 600k or more, T=100: H=64 B128-256 0.50-0.55, H=128 B48-256 0.52-0.60, H=256 B24-256 0.62-0.74; T=200 H=256
#: B12 0.69; T=400 B8-64 0.45-0.68; T=800 H=64 B12 0.41, H=128 B8-12 0.51-0.53. Under 600k about a tie at T=100
#: (0.76-1.06 from B8, two sweeps; H=256 B8 1.07-1.12) with wins at long sequences (T=400 B8 H=64 0.74, T=800 B8
#: H=64 0.71); batch 4 0.92-1.93. (Inference: see LSTM_INFER_MIN_WORK_WIDE.)
LSTM_FUSED_MIN_BATCH_WIDE = 8
#: ... and under that work from LSTM_FUSED_MIN_STEPS_WIDE steps at hidden sizes up to LSTM_FUSED_MAX_HIDDEN_WIDE. On
#: the Zen 5 with the backward writing over its saved buffers (compiled.may_reuse_saved; thirteenth session), fused
#: over oneDNN's LSTM training time under 600k, two sweeps: T=100 H=64 B8-48 0.83-0.97, H=128 B8-32 0.90-0.99
#: (H=256 B8-16 1.01-1.11); T=200 H=32-128 B8-32 0.74-0.89; T=50-75 H=64-128 about a tie (0.96-1.07). On a Zen 4
#: (eighteenth session, I=32, in-process, 12 rounds): T=50 B8-64 H64-128 0.89-0.95, T=75 0.82-0.93, T=30 0.90-1.09:
#: from 50 steps (it was 100), a 5-18% win on the Zen 4 against a tie on the Zen 5.
LSTM_FUSED_MIN_STEPS_WIDE = 50
LSTM_FUSED_MAX_HIDDEN_WIDE = 128
#: where the products go through MKL or the 256-bit panel kernel (AVX2 CPUs), ``auto`` trains a plain float32
#: LSTM with the compiled loops from batch LSTM_FUSED_MIN_BATCH_MKL at LSTM_FUSED_MIN_STEPS_MKL steps or more; at
#: any batch from LSTM_FUSED_MID_STEPS_MKL steps with hidden sizes up to LSTM_FUSED_MAX_HIDDEN_MKL, or at batches
#: up to LSTM_FUSED_MAX_TINY_BATCH_MKL; and from batch LSTM_FUSED_LONG_MIN_BATCH_MKL at LSTM_FUSED_LONG_STEPS_MKL
#: steps. A Zen 3 EPYC (fifteenth session: panel kernel, batch split, backward over its saved buffers; 2 threads,
#: I=32), fused over oneDNN's LSTM training time, in-process interleaved, two sweeps where two figures:
#: T=100: H=64 B1-3 0.71-0.95, B4-32 0.66-0.90, B64-128 0.57-0.80; H=128 B1-3 0.76-0.92, B4-32 0.79-0.98, B64-128
#: 0.59-0.63; H=256 B1-2 0.69-0.81, B4-16 0.97-1.09, B24-64 0.69-0.73. T=50: H=64-128 B1-32 0.77-1.00; H=256 B1
#: 0.87, B4-16 1.04-1.07, B32 0.95; H=512 B1 0.74, B8 1.19, B32 0.84. T=200: H=64-128 B1-32 0.57-0.83; H=256 B1-2
#: 0.79-0.89, B4 1.03-1.05, B8-16 0.76-0.93, B32 0.68; H=512 B1 0.85, B8 0.87, B32 0.79. T=30: B32 0.81-0.95, under
#: it 0.90-1.17. T=10: 0.92-1.30 (B32 0.92-1.05). (The eleventh session's rule, from batch 32 or 16 at H <= 64,
#: had left B1-24 to oneDNN's LSTM, 12-34% slower there at T=100.)
LSTM_FUSED_MIN_BATCH_MKL = 32
LSTM_FUSED_MIN_STEPS_MKL = 30
LSTM_FUSED_MID_STEPS_MKL = 50
LSTM_FUSED_MAX_HIDDEN_MKL = 128
LSTM_FUSED_MAX_TINY_BATCH_MKL = 2
LSTM_FUSED_LONG_STEPS_MKL = 200
LSTM_FUSED_LONG_MIN_BATCH_MKL = 8
#: where they go through MKL or the 256-bit panel kernel, ``auto`` also runs plain float32 LSTM *inference* with
#: the compiled loops (which project each step's inputs inside the loop) from batch LSTM_INFER_MIN_BATCH_MKL at
#: LSTM_FUSED_MIN_STEPS_MKL steps or more and hidden sizes up to LSTM_INFER_MAX_HIDDEN_MKL, and from batch
#: LSTM_INFER_MIN_SMALL_BATCH_MKL at LSTM_INFER_MIN_STEPS_MKL steps with hidden sizes up to
#: LSTM_FUSED_MAX_HIDDEN_MKL. A Zen 3 EPYC (fifteenth session, 2 threads, I=32, no grad), fused over oneDNN's LSTM
#: time: B32-256: T=30-400 0.58-0.98 at H=64-256 (H=256 B128 0.87-1.10), H=512 B32 0.96, B128 1.09; T=10 0.82-1.04
#: at H <= 128, 1.16-1.19 at H=256. B8-16 at H <= 128: T=100-400 0.78-0.98, T=50 0.90-1.02, T=30 0.96-1.08; at
#: H=256-512 1.02-1.26. B1-4: 0.89-1.63 (1.04-1.63 at H <= 128). A Zen 2 EPYC (ninth session, before the panel
#: kernel and the in-loop projection): B32-256 0.77-0.975, B16 0.87-1.09, B8 1.16. Where the products go through
#: oneDNN, the fused LSTM's inference took 1.3-2.6x torch.nn's at the benchmark shapes (Zen 4 and Zen 5): native
#: there.
LSTM_INFER_MIN_BATCH_MKL = 32
LSTM_INFER_MAX_HIDDEN_MKL = 256
LSTM_INFER_MIN_SMALL_BATCH_MKL = 8
LSTM_INFER_MIN_STEPS_MKL = 100
#: where they go through the 512-bit panel kernel, with each step projecting its inputs in the loop (loops.cpp's
#: INPUTS STEP BY STEP), ``auto`` runs plain float32 LSTM inference fused from batch LSTM_FUSED_MIN_BATCH_WIDE
#: once steps x batch x hidden reaches LSTM_INFER_MIN_WORK_WIDE, and below that at batches up to
#: LSTM_INFER_MAX_BATCH_WIDE with hidden sizes up to LSTM_INFER_MAX_HIDDEN_WIDE. A Zen 5 (thirteenth session, two
#: threads, I=32), fused over oneDNN's LSTM inference time: from 3M, 0.57-0.88 (T=50-1000, B32-256, H=64-256); under
#: it at B8-16 with H <= 128, 0.70-0.96; elsewhere under it 0.92-1.20 (H=256 B8-64 at T=50-100: 1.04-1.20) and at
#: batch 4 1.35-2.75.
LSTM_INFER_MIN_WORK_WIDE = 3_000_000
LSTM_INFER_MAX_BATCH_WIDE = 16
LSTM_INFER_MAX_HIDDEN_WIDE = 128
#: ... and, in that regime, the inference of batches up to LSTM_INFER_MAX_SHORT_BATCH_WIDE of up to
#: LSTM_INFER_MAX_SHORT_STEPS_WIDE steps: a generation loop's call a token (T=1) and short prompts, where oneDNN's
#: LSTM costs more a call than the whole fused one. Seventeenth session, Zen 4 EPYC (2 threads, I=32, no grad,
#: in-process interleaved), fused over oneDNN's LSTM time: B1 T1 0.43-0.75 (H 64-512), T4-16 0.84-0.96 (H 64-512),
#: T24 1.02; B2 T1-16 0.74-0.91 (H 128; H 256 T16 1.00); B4 T1-2 0.73-0.90, T4-8 1.01-1.14.
LSTM_INFER_MAX_SHORT_BATCH_WIDE = 2
LSTM_INFER_MAX_SHORT_STEPS_WIDE = 16
#: ... and single steps of batches up to LSTM_INFER_MAX_SINGLE_STEP_BATCH_WIDE (a batched or beam decoder's calls).
#: Eighteenth session, same machine and method, I=64: T1 B3-8 0.51-0.91 (H 64-256), B16 0.75-0.87, B64 0.97-1.21,
#: B256 0.95-1.11; T2 B3-4 0.75-0.95 but B6-8 0.95-1.20 and T4 B3-8 0.87-1.44, left to oneDNN.
LSTM_INFER_MAX_SINGLE_STEP_BATCH_WIDE = 16
#: ... and batches under LSTM_FUSED_MIN_BATCH_WIDE (8) at hidden sizes up to LSTM_SMALL_BATCH_MAX_HIDDEN_WIDE: their
#: inference at any length in one direction and from LSTM_SMALL_BATCH_BIDIRECTIONAL_MIN_STEPS steps in two (a
#: bidirectional layer's two fused calls against oneDNN's one primitive: T1-16 a tie, 0.74-1.29), their training
#: from LSTM_SMALL_BATCH_TRAIN_MIN_STEPS steps. Twentieth session, Zen 4 EPYC (2 threads, in-process interleaved, B1-7),
#: fused over oneDNN's LSTM time, inference, one direction: H32-96 0.45-0.99 (T2-400, I=32; I=128 H64 0.72-0.92),
#: H112 0.68-0.95, H128 0.73-1.08 (a tie at B1-3), H192-256 B2-4 1.06-1.61; two directions (I=32): H32-96 T30-300
#: 0.51-0.99, H128 0.83-1.15. Training, H32-96, T200-400: one direction 0.53-0.93, two 0.42-0.94 (T100 0.72-1.02, T30-50
#: 0.81-1.40: left); H128 T200 0.78-1.07; H256 T400 0.88-1.34.
LSTM_SMALL_BATCH_MAX_HIDDEN_WIDE = 96
LSTM_SMALL_BATCH_BIDIRECTIONAL_MIN_STEPS = 30
LSTM_SMALL_BATCH_TRAIN_MIN_STEPS = 200
#: ... and a bidirectional layer's inference from batch 8 at LSTM_PAIRED_INFER_MIN_STEPS steps or more where its two
#: loops run at once (:func:`rnnkit.engine.fused.pairs_at`: batch x hidden up to 16k). Twentieth session, Zen 4
#: EPYC (2 threads, I=32, in-process interleaved), fused (paired) over oneDNN's LSTM time, B8-64: H64-256 T100-200
#: 0.61-0.98; T30 0.79-1.10, T10 0.73-1.17 (left to the rules above).
LSTM_PAIRED_INFER_MIN_STEPS = 100
#: ``auto`` runs Elman RNN inference on CPU with torch.nn's kernel rather than the compiled loops for sequences of up
#: to ELMAN_NATIVE_MAX_STEPS steps while steps x batch is at most ELMAN_NATIVE_MAX_ROWS and steps x hidden size at
#: most ELMAN_NATIVE_MAX_WIDTH: there the fused call's fixed cost (buffers, the loop's setup: ~65 us against ~45 for
#: the native one at T=1, B=1) outweighs what its faster steps save. Twenty-third session, Zen 4 EPYC (2 threads,
#: I=32, no grad, state given, in-process interleaved, 15 rounds, two sweeps on the boundary), with the layer handing
#: its [L*D, B, H] states to torch.nn's kernel unsplit (dispatch.run_layer_stacked: the native call 6-10 us cheaper),
#: fused over native time: T1 H512 B1-64 1.15-1.54, H768 B1-32 1.05-1.23 and B64 0.89-0.99, H1024 0.70-0.92; T2 H128
#: 1.34-1.48, H256 B1-32 1.08-1.36, H384 B1 1.14, B16-32 0.95-1.22; T3 H128-256 B1-21 1.10-1.33; T4 H64-192 B1-8
#: 1.04-1.32, B16 0.99-1.12; T5 B1 1.18-1.23, B8 1.00-1.10, B12 0.90-0.99 (left fused). (The twenty-second
#: session's rule, before the unsplit states, went to 3 steps and steps x hidden 512; there fused over native T1
#: H64-512 0.86-1.51, T4 B1-8 0.95-1.07, H384-512 at T2 0.71-0.89.)
ELMAN_NATIVE_MAX_STEPS = 4
ELMAN_NATIVE_MAX_WIDTH = 768
ELMAN_NATIVE_MAX_ROWS = 64
#: ... and a GRU's single-step inference of up to GRU_NATIVE_SINGLE_STEP_MAX_BATCH rows at hidden sizes up to
#: GRU_NATIVE_SINGLE_STEP_MAX_HIDDEN (a generation loop's call a token). Twenty-third session, Zen 4 EPYC (2 threads,
#: I=64, no grad, state given, in-process interleaved, 21 rounds), with the states handed to the kernel unsplit,
#: fused over native time at T=1: H128 B1-64 1.09-1.52, H192 1.16-1.26, H256 B1-64 1.09-1.30 (two sweeps) and B128
#: 1.02; H320-384 B1 0.99-1.00, B8-32 1.06-1.25, B64-128 0.80-1.00; H512 B1 0.84, B8 1.21, B64 0.81. (Twentieth
#: session, before: H32-160 1.03-1.49, H256 0.87-1.10, H512-1024 0.52-1.02; at T=2 0.69-1.01, fused.)
GRU_NATIVE_SINGLE_STEP_MAX_BATCH = 64
GRU_NATIVE_SINGLE_STEP_MAX_HIDDEN = 256
#: ``auto`` trains a GRU or Elman RNN on CPU with torch.nn's kernel rather than the fused engine for sequences of up
#: to SHORT_TRAINING_NATIVE_MAX_STEPS[kind] steps (a decoder or generation loop called a step at a time in training):
#: there the fused call's fixed cost (packing, two autograd Functions, buffers) is more than torch.nn's per-step loop
#: records. Eighteenth session, Zen 4 EPYC (2 threads, I=64, in-process interleaved), fused over native training
#: time at B4-256, H64-256: GRU T1 1.16-2.05, T2 0.87-1.13 (a tie, left fused), T4 0.60-0.74, T8 0.45-0.73; Elman
#: RNN T1 1.49-2.05, T2 1.13-1.53, T3 1.02-1.34, T4 0.90-1.16, T8 0.74-0.93.
SHORT_TRAINING_NATIVE_MAX_STEPS = {"gru": 1, "rnn_tanh": 3, "rnn_relu": 3}
#: ``auto`` trains a single step of the cells torch.nn cannot compute (layer norm, peepholes, the reset-before GRU,
#: zoneout, recurrent dropout) on CPU with the reference loop rather than the fused engine while batch x hidden size
#: is at most SINGLE_STEP_TRAINING_REFERENCE_MAX_WIDTH: one step's few autograd ops cost less than the fused call's
#: fixed cost (packing, the input projection's and the recurrence's Functions, buffers). Twentieth session, Zen 4
#: EPYC (2 threads, I=32-64, in-process interleaved), fused over reference training time at T=1: B1-64 with H64-512
#: (one or two directions) 1.05-1.78 for every option; from 32k (B256 H128, B128 H256) layer-norm LSTM and GRU
#: 0.69-0.92, peepholes 0.94-1.35, layer-norm Elman RNN 0.89-1.27; 16k (B128 H128, B256 H64) 0.93-1.57. At T=2
#: the fused engine is ahead or even (0.71-1.02), and in inference at T=1 neither is (0.63-1.26), which split by
#: cell is not so for the Elman RNN (below).
SINGLE_STEP_TRAINING_REFERENCE_MAX_WIDTH = 16384
#: ... and the single-step *inference* of an Elman RNN with zoneout (or recurrent dropout, in training mode) up to
#: the same width: the reference loop's zoneout is two pointwise ops, the fused call's fixed cost more. Twenty-second
#: session, Zen 4 EPYC (2 threads, I=32, inference_mode, state given, in-process interleaved, 11 rounds), with the
#: fused loop projecting each step's inputs (simple.infer), reference over fused time at T=1: zoneout B1-128 H64-512
#: 0.73-0.90, with layer norm 0.90-1.09; layer norm alone 0.94-1.26 (B1 H64-128 1.00-1.05, B64-128 1.16-1.26):
#: fused; T=2 layer norm 1.70, zoneout 1.19 (fused). (The twenty-first session, before that loop: layer norm
#: 0.78-0.96, zoneout 0.59-0.80.) The GRU's and LSTM's options stay fused at T=1 (reference 1.10-1.34x for layer norm
#: and peepholes, 0.86-1.07x for the reset-before GRU and zoneout: a tie).
#: The same holds for a plain float32 LSTM's single training step on CPU against oneDNN's LSTM, at every width
#: measured: ``auto`` trains it with the reference loop (outside autocast). Twentieth session, Zen 4 EPYC (2 threads,
#: I=64, in-process interleaved), reference over native training time at T=1: B1-64 with H64-1024 0.39-0.90, B256
#: 0.86-1.02 (over fused 0.25-0.88); at T=2 1.07-1.44 (oneDNN's then). GRU and Elman RNN single steps stay with
#: torch.nn's kernel (reference over native 0.93-2.07 and 0.94-1.52).
#: a padded batch (``lengths`` shorter than the sequence): torch.nn runs a packed sequence through ATen's step-by-step
#: LSTM, not oneDNN's fused one (which takes only equal lengths), and records every step for autograd, while the
#: fused engine runs the packed batch as it runs any other. ``auto`` trains a padded LSTM batch fused from
#: LSTM_PADDED_TRAIN_MIN_STEPS steps and infers with it from LSTM_PADDED_INFER_MIN_STEPS, in float32 and float64,
#: under every regime (with the compiled loops). Eighteenth session, Zen 4 EPYC (2 threads, I=32, lengths from a
#: third of T to T, in-process interleaved), fused over native time, float32: training T=20-50 0.20-0.42 (B16-64,
#: H64-128, one or two directions), T=100 0.11-0.19 (B2-128, H32-256), T=8 0.57-0.73, T5-6 0.73-0.87, T4 0.89-1.09,
#: T3 0.93-1.23; inference T=20-50 0.38-0.70, T=100 0.32-0.50, T=8 0.66-0.99, T5-6 0.91-1.09, T3-4 0.69-1.24.
#: float64 (B4-32, H64): training T8 0.60-0.71, T100 0.14-0.16; inference T8 0.87-0.97, T100 0.37-0.43, T3 1.14.
#: Unpadded batches of the same shapes: 0.73-1.30 training (no change: the rules above). Without the compiled loops
#: (``RNNKIT_COMPILED=0``, or no compiler), the fused engine's Python loops train a padded batch fused from
#: LSTM_PADDED_PYTHON_TRAIN_MIN_STEPS steps (same machine: T8 0.72-0.87, T50 0.41-0.48, T4-5 0.76-1.11) and leave
#: inference to torch.nn (1.10-1.59 there).
LSTM_PADDED_TRAIN_MIN_STEPS = 5
LSTM_PADDED_INFER_MIN_STEPS = 8
LSTM_PADDED_PYTHON_TRAIN_MIN_STEPS = 8
#: float64, which oneDNN's LSTM does not take either: torch.nn runs it through the same step-by-step ATen loop as a
#: packed batch. ``auto`` runs a float64 LSTM fused (with the compiled loops) from LSTM_FLOAT64_MIN_STEPS steps.
#: Eighteenth session, Zen 4 EPYC (2 threads, I=32, in-process interleaved), fused over native time: training
#: T=100 0.14-0.59 (B1-128, H64-256), T=10 0.41-0.76, T=5 0.41-0.84, T=3 0.88-1.08, T=2 0.76-1.25, T=1 1.22-1.78;
#: inference T=100 0.27-0.54, T=10 0.45-0.75, T=5 0.76-0.89, T=2-3 0.83-1.21, T=1 0.81-1.26.
LSTM_FLOAT64_MIN_STEPS = 4


def _lstm_regime() -> str | None:
    """Which measured case this CPU and the compiled loops' settings are: "wide" (the loops' per-step products
    through rnnkit's 512-bit panel kernel: AVX-512 CPUs), "onednn" (AVX-512 CPU with the panel kernel off, the
    loops' products through oneDNN), "mkl" (AVX2 CPU, products through MKL or the 256-bit panel kernel), or None
    where ``RNNKIT_ONEDNN`` forced the other route, which no LSTM measurement covers (on a Zen 5 with MKL products
    the fused LSTM's inference took 1.5-2.6x oneDNN's LSTM): torch.nn's LSTM then."""
    panels = fused_compiled.panel_limits()
    if panels is not None and panels[2] == 512:
        return "wide"
    onednn = fused_compiled.onednn_min_macs() is not None
    if onednn == fused_compiled.cpu_runs_avx512():
        return "onednn" if onednn else "mkl"
    return None


def lstm_trains_fused(steps: int, batch: int, hidden_size: int) -> bool:
    """Whether ``auto`` trains a plain float32 LSTM of this shape on CPU with the fused engine's compiled loops
    (given they are in use) rather than with oneDNN's LSTM through torch.nn."""
    regime = _lstm_regime()
    if regime == "wide":
        if batch < LSTM_FUSED_MIN_BATCH_WIDE:
            return steps >= LSTM_SMALL_BATCH_TRAIN_MIN_STEPS and hidden_size <= LSTM_SMALL_BATCH_MAX_HIDDEN_WIDE
        return (steps * batch * hidden_size >= LSTM_FUSED_MIN_WORK
                or (steps >= LSTM_FUSED_MIN_STEPS_WIDE and hidden_size <= LSTM_FUSED_MAX_HIDDEN_WIDE))
    if regime == "onednn":
        return batch >= LSTM_FUSED_MIN_BATCH and steps * batch * hidden_size >= LSTM_FUSED_MIN_WORK
    if regime == "mkl":
        return ((batch >= LSTM_FUSED_MIN_BATCH_MKL and steps >= LSTM_FUSED_MIN_STEPS_MKL)
                or (steps >= LSTM_FUSED_MID_STEPS_MKL
                    and (hidden_size <= LSTM_FUSED_MAX_HIDDEN_MKL or batch <= LSTM_FUSED_MAX_TINY_BATCH_MKL))
                or (steps >= LSTM_FUSED_LONG_STEPS_MKL and batch >= LSTM_FUSED_LONG_MIN_BATCH_MKL))
    return False


def lstm_infers_fused(steps: int, batch: int, hidden_size: int, directions: int = 1) -> bool:
    """Whether ``auto`` runs a plain float32 LSTM's inference of this shape (one layer of ``directions``) on CPU with
    the fused engine's compiled loops (given they are in use) rather than with oneDNN's LSTM through torch.nn."""
    regime = _lstm_regime()
    if regime == "wide":
        if (batch < LSTM_FUSED_MIN_BATCH_WIDE and hidden_size <= LSTM_SMALL_BATCH_MAX_HIDDEN_WIDE
                and (directions == 1 or steps >= LSTM_SMALL_BATCH_BIDIRECTIONAL_MIN_STEPS)):
            return True
        if (directions == 2 and batch >= LSTM_FUSED_MIN_BATCH_WIDE and steps >= LSTM_PAIRED_INFER_MIN_STEPS
                and fused.pairs_at(steps, batch, hidden_size)):
            return True
        return (batch >= LSTM_FUSED_MIN_BATCH_WIDE and (
            steps * batch * hidden_size >= LSTM_INFER_MIN_WORK_WIDE
            or (batch <= LSTM_INFER_MAX_BATCH_WIDE and hidden_size <= LSTM_INFER_MAX_HIDDEN_WIDE))
            or (batch <= LSTM_INFER_MAX_SHORT_BATCH_WIDE and steps <= LSTM_INFER_MAX_SHORT_STEPS_WIDE)
            or (steps == 1 and batch <= LSTM_INFER_MAX_SINGLE_STEP_BATCH_WIDE))
    if regime != "mkl":
        return False
    return ((batch >= LSTM_INFER_MIN_BATCH_MKL and steps >= LSTM_FUSED_MIN_STEPS_MKL
             and hidden_size <= LSTM_INFER_MAX_HIDDEN_MKL)
            or (batch >= LSTM_INFER_MIN_SMALL_BATCH_MKL and steps >= LSTM_INFER_MIN_STEPS_MKL
                and hidden_size <= LSTM_FUSED_MAX_HIDDEN_MKL))


def elman_infers_native(steps: int, batch: int, hidden_size: int) -> bool:
    """Whether ``auto`` runs an Elman RNN's inference of this shape on CPU with torch.nn's kernel although the
    compiled loops are in use: short sequences, whose fused call costs more than the native one."""
    return (steps <= ELMAN_NATIVE_MAX_STEPS and steps * batch <= ELMAN_NATIVE_MAX_ROWS
            and steps * hidden_size <= ELMAN_NATIVE_MAX_WIDTH)


def lstm_padded_runs_fused(steps: int, training: bool, compiled: bool = True) -> bool:
    """Whether ``auto`` runs a plain LSTM on CPU with the fused engine for a padded batch of ``steps`` steps, with
    the compiled loops in use or not: torch.nn would run it through ATen's step-by-step packed-sequence LSTM."""
    if not compiled:
        return training and steps >= LSTM_PADDED_PYTHON_TRAIN_MIN_STEPS
    return steps >= (LSTM_PADDED_TRAIN_MIN_STEPS if training else LSTM_PADDED_INFER_MIN_STEPS)


#: why the fused engine does not run under torch.func's transforms, where ``auto`` runs the reference loop instead,
#: whose operations all have functorch rules (torch.nn's kernels take torch.func.grad but not vmap: nn.GRU under
#: ``vmap(grad(...))`` raises a shape error in torch 2.13)
FUNCTORCH_REASON = ("under torch.func's transforms (grad, vmap, jacrev, ...): its autograd Functions have no functorch "
                    "rules (setup_context, vmap)")
#: whether a torch.func transform is running (0.06 us; what torch.autograd.Function.apply asks too)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _records_autograd(cells: Sequence[RecurrentCell], x: Tensor) -> bool:
    """Whether autograd will record this call (a backward may follow): training, as the rules above mean it."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for c in cells for p in c.parameters()))


def choose_backend(cells: Sequence[RecurrentCell], noises: Sequence[SequenceNoise | None], x: Tensor,
                   lengths: Tensor | None = None) -> str:
    """The backend ``auto`` runs for these cells, noise and input (measurements: benchmarks/RESULTS.md).

    - torch.nn's kernels whenever they compute the options exactly, except GRU/SimpleRNN on CPU and float32
      LSTM training and inference on CPU at the shapes of :func:`lstm_trains_fused` and
      :func:`lstm_infers_fused` with the compiled loops, and padded LSTM batches (``lengths`` shorter than ``x``)
      on CPU of the lengths of :func:`lstm_padded_runs_fused`, and float64 LSTMs from
      :data:`LSTM_FLOAT64_MIN_STEPS` steps with the compiled loops: on GPU cuDNN runs a whole sequence in one kernel,
      packed or not; on CPU oneDNN's LSTM is the faster one for small batches and short sequences of equal
      lengths, and for inference outside the shapes of :func:`lstm_infers_fused`, but it takes no packed batch
      and no float64 (torch.nn runs those through a step-by-step loop, up to 9x the fused engine's time);
    - the fused engine for GRU/SimpleRNN training on CPU (torch.nn records a per-step graph there) but the
      shortest sequences (:data:`SHORT_TRAINING_NATIVE_MAX_STEPS`: 1 step for the GRU, 3 for the Elman RNN), their
      inference on CPU with the compiled loops (0.28-0.85x torch.nn's per-step C++ loop, at every benchmark
      shape on the three CPUs measured) but the Elman RNN's shortest sequences (:func:`elman_infers_native`) and
      the GRU's single steps of small batches and sizes (:data:`GRU_NATIVE_SINGLE_STEP_MAX_HIDDEN`),
      LSTM training and inference on CPU at those shapes, and every option torch.nn lacks but a single step's
      training on CPU at batch x hidden size up to :data:`SINGLE_STEP_TRAINING_REFERENCE_MAX_WIDTH` (outside
      autocast, under which the fused engine computes in the parameters' dtype and the reference loop would not)
      and an Elman RNN's single step with zoneout in inference too;
    - the reference loop for those single steps, a plain float32 LSTM's single training step on CPU (outside
      autocast), cells the fused engine does not know, and every call under torch.func's transforms
      (:data:`FUNCTORCH_REASON`).
    """
    exact = all(native.unsupported(cell, noise) is None for cell, noise in zip(cells, noises))
    if _functorch_active():  # see FUNCTORCH_REASON
        return "reference"
    if exact:
        training = _records_autograd(cells, x)
        if not x.is_cpu:  # (is_cpu: 0.07 us, device.type 0.45, which counts at T=1)
            return "native"
        compiled = fused_compiled.ops() is not None and fused_compiled.usable_for(x)
        if cells[0].kind == "lstm":
            steps, batch, hidden = x.shape[0], x.shape[1], cells[0].hidden_size
            if native.packs(lengths, steps):  # torch.nn would get a PackedSequence
                fits = lstm_padded_runs_fused(steps, training, compiled)
            elif x.dtype != torch.float32:  # float64 (what else the compiled loops take): no oneDNN LSTM either
                fits = compiled and steps >= LSTM_FLOAT64_MIN_STEPS
            elif training and steps == 1 and not autocasting(x):  # see SINGLE_STEP_TRAINING_REFERENCE_MAX_WIDTH
                return "reference"
            else:  # float32 at equal lengths: the measured shape rules against oneDNN's LSTM
                fits = compiled and (lstm_trains_fused(steps, batch, hidden) if training
                                     else lstm_infers_fused(steps, batch, hidden, len(cells)))
            if not fits:
                return "native"
        elif training:
            if x.shape[0] <= SHORT_TRAINING_NATIVE_MAX_STEPS[cells[0].kind]:
                return "native"
        elif not compiled or (cells[0].kind.startswith("rnn") and elman_infers_native(
                x.shape[0], x.shape[1], cells[0].hidden_size)) or (
                cells[0].kind == "gru" and x.shape[0] == 1 and x.shape[1] <= GRU_NATIVE_SINGLE_STEP_MAX_BATCH
                and cells[0].hidden_size <= GRU_NATIVE_SINGLE_STEP_MAX_HIDDEN):
            return "native"
    if all(fused.unsupported(cell) is None for cell in cells):
        if (x.shape[0] == 1 and x.is_cpu
                and x.shape[1] * cells[0].hidden_size <= SINGLE_STEP_TRAINING_REFERENCE_MAX_WIDTH
                and not autocasting(x)
                and (_records_autograd(cells, x) or (cells[0].kind.startswith("rnn") and (
                    cells[0].zoneout > 0 or any(noise is not None for noise in noises))))):
            return "reference"
        return "fused"
    return "reference"


def autocasting(x: Tensor) -> bool:
    """Whether ``torch.autocast`` is on for ``x``'s device type."""
    return autocast_on("cpu" if x.is_cpu else x.device.type)


def _refuse_what_it_cannot_run(backend: str, cells: Sequence[RecurrentCell],
                               noises: Sequence[SequenceNoise | None]) -> None:
    """Raise a clear error where the backend asked for by name cannot compute these cells' options."""
    if backend == "fused" and _functorch_active():
        raise ValueError(f"backend='fused' cannot run {FUNCTORCH_REASON}; use backend='auto' (the reference loop "
                         "there) or 'reference'")
    for cell, noise in zip(cells, noises):
        reason = (native.unsupported(cell, noise) if backend == "native"
                  else fused.unsupported(cell) if backend == "fused" else None)
        if reason is not None:
            raise ValueError(f"backend={backend!r} cannot run {reason}; use backend='auto' or 'reference'")


def _resolve(backend: str, cells: Sequence[RecurrentCell], noises: Sequence[SequenceNoise | None], x: Tensor,
             lengths: Tensor | None, observe) -> str:
    """The backend that runs this layer: the reference loop for an observer, ``auto``'s choice, or the one asked
    for by name once it is known to compute these options."""
    if observe is not None:
        return "reference"
    if backend == "auto":
        return choose_backend(cells, noises, x, lengths)  # one that runs these cells: nothing to check
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}")
    _refuse_what_it_cannot_run(backend, cells, noises)
    return backend


def run_layer(
    cells: Sequence[RecurrentCell],
    x: Tensor,
    states: Sequence[State],
    lengths: Tensor | None,
    noises: Sequence[SequenceNoise | None],
    backend: str = "auto",
    observe: Callable[[int, int, State], None] | None = None,
) -> tuple[Tensor, list[State]]:
    """Run one layer: ``cells`` holds the forward cell and, if bidirectional, the reverse one.

    ``x [T, B, I]``, ``states`` one tuple of ``[B, H]`` per direction, ``lengths [B]`` or None.
    Returns ``outputs [T, B, D*H]`` (directions concatenated) and the final state per direction.
    ``observe(direction, t, new_state)`` sees every step (the reference loop runs when it is given).

    Raises:
        ValueError: ``backend`` is unknown, or cannot compute these options (the message says which).
    """
    hx = tuple(native.stack_states([state[k] for state in states]) for k in range(cells[0].state_size))
    outputs, finals = run_layer_stacked(cells, x, hx, lengths, noises, backend, observe)
    return outputs, [tuple(h[d] for h in finals) for d in range(len(cells))]


def run_layer_stacked(
    cells: Sequence[RecurrentCell],
    x: Tensor,
    hx: tuple[Tensor, ...] | None,
    lengths: Tensor | None,
    noises: Sequence[SequenceNoise | None],
    backend: str = "auto",
    observe: Callable[[int, int, State], None] | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """:func:`run_layer` with the states as torch.nn holds them: ``hx`` one ``[D, B, H]`` tensor per state part
    (None: zeros), and the final states returned likewise. torch.nn's kernels take and give them so; the other
    backends get them split by direction. Every engine call goes through here (the layers', ``run_layer``'s,
    the encoder-decoders' ``run_cell``), so that torch.compile finds its graph break here (see _eager)."""
    if torch.compiler.is_compiling():  # (0.1 us)
        return _eager()(cells, x, hx, lengths, noises, backend, observe)
    backend = _resolve(backend, cells, noises, x, lengths, observe)
    first = cells[0]
    if backend == "native":
        if hx is None:  # in the parameters' dtype, which x's is but under autocast (as RecurrentCell.init_state)
            dtype = first._parameters["weight_ih"].dtype  # (never a parametrization: native refuses those cells)
            hx = tuple(torch.zeros(len(cells), x.shape[1], first.hidden_size, dtype=dtype, device=x.device)
                       for _ in range(first.state_size))
        return native.run_stacked(cells, x, hx, lengths)
    if hx is None:
        states = [cell.init_state(x.shape[1], x.device) for cell in cells]
    else:
        states = [tuple(h[d] for h in hx) for d in range(len(cells))]
    outputs, finals = _run_by_direction(backend, cells, x, states, lengths, noises, observe)
    return outputs, tuple(native.stack_states([f[k] for f in finals]) for k in range(first.state_size))


_EAGER = None


def _eager():
    """:func:`run_layer_stacked` as torch.compile runs it: as it is, a graph break (the engines are already
    whole-sequence kernels, and the compiled loops' ops, which write into buffers they are given, have no
    fake-tensor form to be traced with). Made at the first compiled call, when torch._dynamo is loaded anyway:
    ``torch.compiler.disable`` imports it, which would double the time of ``import rnnkit`` (1.1-1.6 s to 3.3-3.8 s)
    were it applied at import. (A plain global rather than functools.cache, which dynamo warns it traces through.)"""
    global _EAGER
    if _EAGER is None:
        _EAGER = torch.compiler.disable(run_layer_stacked)
    return _EAGER


def _run_by_direction(backend: str, cells: Sequence[RecurrentCell], x: Tensor, states: Sequence[State],
                      lengths: Tensor | None, noises: Sequence[SequenceNoise | None],
                      observe) -> tuple[Tensor, list[State]]:
    """The fused engine or the reference loop on one layer, with the states of each direction apart."""
    if backend == "fused":
        if autocasting(x):  # the fused engine computes in the parameters' dtype, as written: no per-op casts
            dtype = cells[0].weight_ih.dtype
            with torch.autocast(x.device.type, enabled=False):
                return _run_by_direction("fused", cells, x.to(dtype),
                                         [tuple(s.to(dtype) for s in state) for state in states], lengths,
                                         [None if n is None else n.to(dtype) for n in noises], None)
        results = fused.run_directions(cells, x, states, lengths, noises)  # (both at once where that is faster)
    else:
        results = []
        for direction, (cell, state, noise) in enumerate(zip(cells, states, noises)):
            extra = {} if observe is None else {"observe": functools.partial(observe, direction)}
            results.append(reference.run_direction(cell, x, state, lengths, reverse=direction == 1, noise=noise,
                                                   **extra))
    outputs = [out for out, _ in results]
    return torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0], [final for _, final in results]
