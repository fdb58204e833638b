"""The fused engine's per-step loops, compiled (C++ in ``csrc/``), with the Python loops as fallback.

The first time the fused engine runs on a CPU, rnnkit compiles ``csrc/*.cpp`` against the installed
torch with the system's C++ compiler (10-15 s, once) and caches the library in
``$RNNKIT_CACHE_DIR`` (default ``~/.cache/rnnkit``), keyed by the sources, torch's version, the compiler
and the CPU. Without a compiler, or if anything in that fails, the fused engine runs its Python loops:
same results, more time per step. ``RNNKIT_COMPILED=0`` turns the compiled loops off;
:func:`status` says whether they are in use and, if not, why.

The compiled loops do exactly the steps of the Python loops in ``lstm.py``, ``gru.py`` and ``simple.py``
(tests hold the two equal), but a step costs one GEMM call and one pass over the step's rows instead of
5-20 torch ops each paying 2-5 us of dispatch from Python.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger("rnnkit")

SOURCES = Path(__file__).with_name("csrc")
_FILES = ("pointwise.h", "pointwise.cpp", "loops.cpp")
_LOOPS_FLAGS = ["-O2", "-fPIC", "-std=c++17", "-w"]
#: loops.cpp is compiled with OpenMP so that ATen's parallel_for splits a step's pointwise work over torch's
#: threads (without it, parallel_for is serial); the OpenMP runtime is the libgomp.so.1 torch has loaded.
#: Where torch runs another OpenMP runtime (or none), or that build fails, the loops are built without it
#: and run each step on one thread: two OpenMP runtimes in one process would each start their own threads.
_OPENMP_FLAGS = ["-fopenmp"]

#: a step's pointwise work is split over threads in chunks of at least this many elements (see loops.cpp)
PARALLEL_MIN = 8192

#: on CPUs with AVX-512, float32 recurrent products of at least this many multiply-adds go through torch's
#: oneDNN linear instead of ATen's mm (MKL): measured ~2x faster on an AMD Zen 4 from about 2M (oneDNN's
#: AVX-512 kernels; MKL runs its AVX2 code on AMD CPUs), slower below (a fixed ~10 us). On an AVX2-only
#: AMD EPYC both libraries run AVX2 code: there oneDNN was no faster for the large products (687 vs 705 us
#: at [64,256]x[256,1024]) and much slower for the small ones (130 vs 82 us at [32,128]x[128,512]; 58 vs
#: 11 us at batch 1), so every product stays on ATen (see :func:`_onednn_by_default`).
#: ``RNNKIT_ONEDNN=0`` keeps every product on ATen's mm on any CPU, ``RNNKIT_ONEDNN=1`` uses oneDNN on any.
ONEDNN_MIN_MACS = 1 << 21

_lock = threading.Lock()
_state: dict = {"loaded": False, "why_not": None, "path": None, "onednn": None, "threaded": False,
                "packed": False, "panel": False, "panel_limits": None, "small": False, "split": False,
                "reuse": False, "prefetch": False, "pair": False}


class _ForcedOff(threading.local):
    value = False  # (a class default: reading it costs no AttributeError in a thread that never set it)


_forced_off = _ForcedOff()


def _env_off(name: str = "RNNKIT_COMPILED") -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "off", "no")


def _env_switch(name: str, default: bool) -> bool:
    """The environment variable ``name`` set to 0/false/off/no or 1/true/on/yes decides; anything else leaves
    ``default``."""
    setting = os.environ.get(name, "").strip().lower()
    if setting in ("0", "false", "off", "no"):
        return False
    if setting in ("1", "true", "on", "yes"):
        return True
    return default


def _onednn_by_default() -> bool:
    """Whether float32 products go through oneDNN unless ``RNNKIT_ONEDNN`` says otherwise: where torch runs
    AVX-512 code (``torch.backends.cpu.get_cpu_capability()``), the only CPUs where it was measured faster."""
    return _env_switch("RNNKIT_ONEDNN", cpu_runs_avx512())


def _panels_by_default() -> bool:
    """Whether a thread's per-step products of 3 rows or more (up to 63, or 511 on AVX-512 CPUs) go through
    rnnkit's panel kernel unless ``RNNKIT_PANEL_GEMM`` says otherwise (loops.cpp, PANEL PRODUCTS): on by default,
    as on both CPUs it was measured on it beat the libraries (a Zen 3 EPYC, AVX2: 0.6-0.9x MKL's time for one
    thread's step product; a Zen 5, AVX-512: 0.35-0.8x MKL's and oneDNN's up to 128 rows, a tie with oneDNN at 512)."""
    return _env_switch("RNNKIT_PANEL_GEMM", True)


def cpu_runs_avx512() -> bool:
    """Whether torch runs AVX-512 code on this CPU (``torch.backends.cpu.get_cpu_capability()``; False where
    this torch cannot say)."""
    try:
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    except Exception:  # noqa: BLE001 - an older torch without the query
        return False


def _cache_dir() -> Path:
    root = os.environ.get("RNNKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rnnkit")
    return Path(root) / "kernels"


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _pointwise_flags() -> list[str]:
    """pointwise.cpp gets vectorised math (glibc's SIMD exp/tanh need -ffast-math); it is compiled apart and
    linked without -ffast-math so that no flush-to-zero start-up code reaches the process (GCC < 13 links it).

    The vector width is asked for explicitly: 512 bits where the CPU has AVX-512, else 256. GCC tunes some AVX2
    CPUs (``-march=native`` read as znver1 on an AVX2 EPYC) for 128-bit vectors and then calls glibc's 4-wide SSE
    exp/tanh; with 256 the per-step kernels took 20-28% less time there (LSTM step forward at 32x128: 51 -> 41 us;
    GRU 46 -> 33 us; the layer-norm backward +7%, 18 -> 19 us). Against 256 on a Zen 5 (an AVX-512 CPU with
    full-width units), 512 took 30-55% less time for one thread's step of 16 rows x 128 units (LSTM forward 5.1 ->
    3.2 us, backward 1.8 -> 1.1, with the cell norm 5.9 -> 3.9 and 2.9 -> 1.9; layer-norm backward 2.3 -> 1.6; GRU
    forward 4.7 -> 2.4; Elman RNN forward 1.3 -> 0.6). A CPU without AVX ignores the setting."""
    width = 512 if " avx512f " in f" {_cpu_signature().strip()} " else 256
    return ["-O3", "-march=native", f"-mprefer-vector-width={width}", "-ffast-math", "-fopenmp-simd", "-fPIC",
            "-std=c++17"]


def _key(compiler: str) -> str:
    digest = hashlib.sha256()
    for name in _FILES:
        digest.update((SOURCES / name).read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout
    for part in (torch.__version__, version, _cpu_signature(), platform.machine(), sys.version,
                 " ".join(_pointwise_flags() + _LOOPS_FLAGS + _OPENMP_FLAGS)):
        digest.update(part.encode())
    return digest.hexdigest()[:16]


def _build(compiler: str, target: Path) -> None:
    """Compile and link into ``target`` atomically (a half-built library never has the final name), with
    OpenMP if that builds."""
    if _torch_runs_libgomp():
        try:
            _build_with(compiler, target, _OPENMP_FLAGS)
            return
        except RuntimeError as error:
            log.info("rnnkit: building the loops with OpenMP failed, building them single-threaded: %s", error)
    _build_with(compiler, target, [])


def _torch_runs_libgomp() -> bool:
    """Whether torch's own OpenMP runtime is GCC's libgomp (the one ``-fopenmp`` links), loaded now."""
    if not torch.backends.openmp.is_available():
        return False
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


def _build_with(compiler: str, target: Path, extra: list[str]) -> None:
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths()]
    torch_lib = Path(torch.__file__).parent / "lib"
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        pointwise, loops, library = Path(tmp, "pointwise.o"), Path(tmp, "loops.o"), Path(tmp, target.name)
        commands = [
            [compiler, "-c", *_pointwise_flags(), abi, str(SOURCES / "pointwise.cpp"), "-o", str(pointwise)],
            [compiler, "-c", *_LOOPS_FLAGS, *extra, abi, *includes, str(SOURCES / "loops.cpp"), "-o", str(loops)],
            [compiler, "-shared", *extra, str(pointwise), str(loops), "-o", str(library), f"-L{torch_lib}",
             f"-Wl,-rpath,{torch_lib}", "-ltorch_cpu", "-lc10", "-lmvec", "-lm"],
        ]
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command[:3])} ... failed:\n{done.stderr[-2000:]}")
        os.replace(library, target)


def _load() -> None:
    if _env_off():
        _state["why_not"] = "turned off by RNNKIT_COMPILED=0"
        return
    if sys.platform != "linux":
        _state["why_not"] = f"compiled loops are built on Linux only (this is {sys.platform})"
        return
    compiler = _compiler()
    if compiler is None:
        _state["why_not"] = "no C++ compiler found (set CXX or install g++)"
        return
    try:
        target = _cache_dir() / f"rnnkit_fused_{_key(compiler)}.so"
        if not target.exists():
            print(f"rnnkit: compiling the fused engine's loops into {target.parent} (once, 10-15 s)",
                  file=sys.stderr, flush=True)
            _build(compiler, target)
        torch.ops.load_library(str(target))
        torch.ops.rnnkit_fused.lstm_forward  # noqa: B018  (raises if the library did not register)
    except Exception as error:  # noqa: BLE001 - any failure means: use the Python loops
        _state["why_not"] = f"building or loading the compiled loops failed: {error}"
        log.info("rnnkit: %s", _state["why_not"])
        return
    _state["path"] = str(target)
    _state["loaded"] = True
    _state["onednn"] = ONEDNN_MIN_MACS if _onednn_by_default() else None
    if _state["onednn"] is not None and torch.ops.rnnkit_fused.set_onednn_min_macs(ONEDNN_MIN_MACS) == -2:
        _state["onednn"] = None  # this torch has no oneDNN linear
    _state["threaded"] = bool(torch.ops.rnnkit_fused.threaded())
    wanted = not _env_off("RNNKIT_PACKED_GEMM")
    _state["packed"] = torch.ops.rnnkit_fused.set_packed_gemm(wanted) != -1 and wanted
    _state["panel"] = _panels_by_default()
    torch.ops.rnnkit_fused.set_panel_gemm(_state["panel"])
    _state["panel_limits"] = tuple(int(v) for v in torch.ops.rnnkit_fused.panel_limits())  # fixed by the build
    _state["small"] = not _env_off("RNNKIT_SMALL_PRODUCTS")
    torch.ops.rnnkit_fused.set_small_products(_state["small"])
    _state["split"] = not _env_off("RNNKIT_BATCH_SPLIT")
    torch.ops.rnnkit_fused.set_batch_split(_state["split"])
    _state["reuse"] = not _env_off("RNNKIT_REUSE_SAVED")
    _state["pair"] = not _env_off("RNNKIT_PAIR_DIRECTIONS")
    _state["prefetch"] = not _env_off("RNNKIT_PREFETCH")
    torch.ops.rnnkit_fused.set_prefetch(_state["prefetch"])
    torch.ops.rnnkit_fused.set_parallel_min(PARALLEL_MIN)


def ops():
    """``torch.ops.rnnkit_fused`` if the compiled loops are usable now, else None.

    ``RNNKIT_COMPILED`` is read once, on the first call (as the other switches are), not on every call: the
    engine asks 4-6 times a layer call, and reading an unset variable costs ~1 us each time (os.environ raises
    and catches a KeyError), which counts at T=1."""
    if _forced_off.value:
        return None
    if not _state["loaded"]:
        if _state["why_not"] is None:
            with _lock:
                if not _state["loaded"] and _state["why_not"] is None:
                    _load()
        if not _state["loaded"]:
            return None
    return torch.ops.rnnkit_fused


def onednn_min_macs() -> int | None:
    """From how many multiply-adds float32 products go through oneDNN now (None: never)."""
    return _state["onednn"] if ops() is not None else None


def panel_limits() -> tuple[int, int, int, int, int] | None:
    """(the fewest rows, the most rows + 1 of one thread's product that the panel kernel takes, the width of its
    vectors in bits: 512 where it was compiled for AVX-512, else 256, the most bytes of a weight whose products of
    fewer rows it takes too, the fewest rows of those: 1 with 512-bit vectors, 2 with 256-bit ones, which also take
    2 rows from any weight where the product runs on one thread) while the panel kernel is on; None while it is off
    or the compiled loops are not in use."""
    if ops() is None or not _state["panel"]:
        return None
    return _state["panel_limits"]


_LOOP_DTYPES = (torch.float32, torch.float64)


def usable_for(*tensors) -> bool:
    """The compiled loops take float32/float64 CPU tensors."""
    for t in tensors:  # (a loop, and is_cpu rather than device.type: 0.1 against 1.4 us, asked on every layer call)
        if not (t.is_cpu and t.dtype in _LOOP_DTYPES):
            return False
    return True


def may_reuse_saved() -> bool:
    """Whether the fused backward now running on this thread may write its gradients into its Function's saved
    all-steps buffers (the LSTM and GRU gates' gradient into their activations, a layer norm's input gradient into
    its pre-normalisation values), each step's rows once it has read them: true when autograd frees the graph as
    soon as this backward is done (no ``retain_graph``, no ``create_graph``: libtorch's
    ``get_current_graph_task_keep_graph``), so that nothing reads those buffers again. False while the compiled
    loops are off, under :func:`reuse_saved` (False) or ``RNNKIT_REUSE_SAVED=0``, and wherever torch cannot tell.

    Each reuse is one ``[N, G*H]`` buffer less to bring through the caches: a layer-norm LSTM's backward makes
    none of its three (the gates', the recurrent and the input layer norm's input gradients), a plain LSTM's or
    GRU's none of its one. Training, in-process A/B: up to 8% less time for the layer-norm LSTM, up to 6% for the
    LSTM, up to 14% for the GRU (benchmarks/RESULTS.md)."""
    return _state["reuse"] and ops() is not None and not torch.ops.rnnkit_fused.graph_kept()


def status() -> dict:
    """``{"in_use": bool, "library": path or None, "why_not": reason or None, "onednn_min_macs": int or
    None, "threaded": bool, "packed_gemm": bool, "panel_gemm": bool, "small_products": bool, "batch_split":
    bool, "reuse_saved": bool, "prefetch": bool, "paired_directions": bool}`` (builds on first call).
    ``onednn_min_macs``: from what size float32 recurrent products go through oneDNN (None: never).
    ``threaded``: whether a step's pointwise work can be split over torch's threads (the library was built
    with OpenMP). ``packed_gemm``: whether the other float32 recurrent products read a weight packed once per
    call by MKL (``cblas_sgemm_pack``; needs a torch that exports it, as torch's x86 wheels do;
    ``RNNKIT_PACKED_GEMM=0`` turns it off). ``panel_gemm``: whether a thread's products of 3 to 63 rows (to 511 on
    AVX-512 CPUs, where the kernel uses 512-bit vectors; float32 and float64) read the weight repacked into
    rnnkit's panels instead of going through oneDNN, MKL's packed weight or the small-product kernel (default:
    on; ``RNNKIT_PANEL_GEMM=0/1``). ``small_products``:
    whether calls of batches under 16 multiply by the recurrent weight in rnnkit's own kernel instead of
    ATen's mm or a packed weight, whose fixed costs dominate there (``RNNKIT_SMALL_PRODUCTS=0`` turns it
    off; the packed weight then takes the batches from 8). ``batch_split``: whether a threaded loop splits its
    batch over torch's threads once for all steps, each thread running every step on its own rows, instead of
    splitting each step's product and pointwise pass (``RNNKIT_BATCH_SPLIT=0`` turns it off; see loops.cpp's
    BATCH SPLIT). ``reuse_saved``: whether a backward that frees its graph writes gradients into the saved
    buffers it has read (:func:`may_reuse_saved`; ``RNNKIT_REUSE_SAVED=0`` turns it off). ``prefetch``: whether
    the LSTM's training loops ask for each thread's rows of the next step's buffers a step ahead (loops.cpp's
    PREFETCH; ``RNNKIT_PREFETCH=0`` turns it off). ``paired_directions``: whether a bidirectional layer's two
    inference loops may run at once, one thread each (:func:`pairs_directions`)."""
    in_use = ops() is not None
    why = None if in_use else "turned off by python_loops()" if _forced_off.value else _state["why_not"]
    return {"in_use": in_use, "library": _state["path"], "why_not": why,
            "onednn_min_macs": _state["onednn"] if in_use else None, "threaded": in_use and _state["threaded"],
            "packed_gemm": in_use and _state["packed"], "panel_gemm": in_use and _state["panel"],
            "small_products": in_use and _state["small"],
            "batch_split": in_use and _state["threaded"] and _state["split"],
            "reuse_saved": in_use and _state["reuse"], "prefetch": in_use and _state["prefetch"],
            "paired_directions": pairs_directions()}


@contextlib.contextmanager
def onednn_gemms(min_macs: int | None):
    """Route float32 recurrent products of at least ``min_macs`` multiply-adds through oneDNN (0: all of
    them; None: none) inside the block, for every thread. For tests and benchmarks."""
    kernels = _loaded_ops()
    wanted = -1 if min_macs is None else int(min_macs)
    previous = kernels.set_onednn_min_macs(wanted)
    if previous == -2:
        raise RuntimeError("this torch has no oneDNN linear (torch.ops.mkldnn._linear_pointwise)")
    saved = _state["onednn"]
    _state["onednn"] = min_macs
    try:
        yield
    finally:
        kernels.set_onednn_min_macs(previous)
        _state["onednn"] = saved


def _loaded_ops():
    kernels = ops()
    if kernels is None:
        raise RuntimeError(f"the compiled loops are not in use: {status()['why_not']}")
    return kernels


@contextlib.contextmanager
def _switch(setter: str, key: str, on: bool, unavailable: str | None = None):
    """Set the compiled loops' switch ``setter`` (its previous value returned, -1: unavailable) and
    ``_state[key]`` to ``on`` inside the block, for every thread."""
    kernels = _loaded_ops()
    previous = getattr(kernels, setter)(bool(on))
    if previous == -1:
        raise RuntimeError(unavailable)
    saved = _state[key]
    _state[key] = bool(on)
    try:
        yield
    finally:
        getattr(kernels, setter)(bool(previous))
        _state[key] = saved


def packed_gemms(on: bool):
    """Let float32 recurrent products read an MKL-packed weight (True) or go through ATen's mm (False) inside
    the block, for every thread. For tests and benchmarks; results agree to float rounding."""
    return _switch("set_packed_gemm", "packed", on, "this torch exports no MKL packed GEMM (cblas_sgemm_pack)")


def panel_gemms(on: bool):
    """Let a thread's recurrent products of 3 to 63 rows (511 on AVX-512 CPUs), which would otherwise go through
    oneDNN or read MKL's packed weight (float32), go through ATen's mm (float64) or the small-product kernel, read
    the weight repacked into rnnkit's panels (True) instead, inside the block, for every thread. For tests and
    benchmarks; results agree to float rounding."""
    return _switch("set_panel_gemm", "panel", on)


def small_products(on: bool):
    """Let calls of batches under 16 multiply by the recurrent weight in rnnkit's kernel (True) or through
    ATen's mm or a packed weight (False) inside the block, for every thread. For tests and benchmarks; results
    agree to float rounding."""
    return _switch("set_small_products", "small", on)


def batch_split(on: bool):
    """Let a threaded loop split its batch over the threads for all its steps (True) or split each step's
    work (False) inside the block, for every thread. For tests and benchmarks; results are the same bit for
    bit."""
    return _switch("set_batch_split", "split", on)


def prefetch_steps(on: bool):
    """Let the LSTM's training loops ask for the next step's rows a step ahead (True) or not (False) inside the
    block, for every thread (loops.cpp's PREFETCH). For tests and benchmarks; results are the same bit for bit."""
    return _switch("set_prefetch", "prefetch", on)


def pairs_directions() -> bool:
    """Whether a bidirectional layer's two inference loops may run at once, one thread each (loops.cpp's PAIRED
    DIRECTIONS, at the shapes of :func:`rnnkit.engine.fused.pairs_at`; ``RNNKIT_PAIR_DIRECTIONS=0`` turns it off)."""
    return ops() is not None and _state["pair"] and _state["threaded"]


def paired_directions(on: bool):
    """Let a bidirectional layer's two inference loops run at once (True) or one after the other (False) inside the
    block, for every thread. For tests and benchmarks; results are the same bit for bit."""
    return _python_switch("pair", on)


def reuse_saved(on: bool):
    """Let a fused backward that frees its graph write gradients into its saved buffers (True) or always into
    buffers of their own (False) inside the block, for every thread (:func:`may_reuse_saved`). For tests and
    benchmarks; results are the same bit for bit."""
    return _python_switch("reuse", on)


@contextlib.contextmanager
def _python_switch(key: str, on: bool):
    """Set ``_state[key]``, a switch the Python side reads, to ``on`` inside the block (the loops must be in use)."""
    _loaded_ops()
    saved = _state[key]
    _state[key] = bool(on)
    try:
        yield
    finally:
        _state[key] = saved


@contextlib.contextmanager
def step_threads(min_elements: int | None):
    """Split a step's pointwise work over torch's threads in chunks of at least ``min_elements`` (1: every
    step with two rows or more; None: never, and no batch split either: every loop on one thread) inside the
    block, for every thread. For tests and benchmarks; results do not depend on it."""
    kernels = _loaded_ops()
    previous = kernels.set_parallel_min(-1 if min_elements is None else max(1, int(min_elements)))
    try:
        yield
    finally:
        kernels.set_parallel_min(previous)


@contextlib.contextmanager
def python_loops():
    """Run the fused engine's Python loops in this thread (to compare, or to debug)."""
    previous = _forced_off.value
    _forced_off.value = True
    try:
        yield
    finally:
        _forced_off.value = previous
