"""Make sure MLX runs its CPU matmuls on an optimized BLAS.

The MLX Linux CPU wheel (``mlx-cpu``) links a bundled *reference* BLAS
(``mlx_cpu.libs/libblas-*.so.3``): float32 matmul runs at a few GFLOP/s,
roughly 30x slower than OpenBLAS on the same machine.  ``libmlx.so`` calls
``cblas_sgemm`` & co. through the dynamic linker, so preloading a real BLAS
(``LD_PRELOAD=/path/to/libopenblas.so.0``) makes MLX use it instead: symbols
from preloaded libraries come first in the global lookup scope.

``LD_PRELOAD`` is only read by the dynamic loader at process start, so each
console entry point calls :func:`ensure_fast_blas` first thing; when no fast
BLAS is preloaded yet it sets ``LD_PRELOAD`` and re-executes the current
command once (guarded by ``PPO_BLAS_REEXEC=1``), with ``OPENBLAS_THREAD_TIMEOUT=4`` so
that idle OpenBLAS threads sleep instead of spinning (unless the variable is already set).

Where the library comes from: the system package manager (Debian/Ubuntu:
``libopenblas0-pthread``; Fedora: ``openblas``), or any path given in
``PPO_BLAS_LIBRARY``.  Note that there is no usable PyPI route: the
``scipy-openblas32``/``scipy-openblas64`` wheels (and the copy bundled in
``numpy.libs``) export *prefixed* symbols (``scipy_cblas_sgemm``...), so
preloading them does not replace MLX's ``cblas_sgemm``.

This module must stay cheap to import: standard library only, no mlx/numpy.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import shutil
import subprocess
import sys

__all__ = [
    "BLAS_WARNING",
    "blas_in_use",
    "ensure_fast_blas",
    "fast_blas_preloaded",
    "find_fast_blas",
    "loaded_blas_libraries",
]

ENV_LIBRARY = "PPO_BLAS_LIBRARY"  # explicit path of the BLAS to preload
ENV_DISABLE = "PPO_NO_BLAS_PRELOAD"  # "1": never preload / re-exec
ENV_GUARD = "PPO_BLAS_REEXEC"  # set before re-exec; prevents loops
ENV_WARNED = "PPO_BLAS_WARNED"  # set once the warning was printed
# OpenBLAS worker threads spin for 2^N cycles after each call before they sleep (N = 28 by
# default: about 0.1 s). Between the matmuls of a step they would spin on the core MLX's
# own thread needs; N = 4 puts them to sleep at once. Measured with
# benchmarks/profile_step.py (variant blas_spin_default, results/profile_step_blas_spin.json):
# step 7-13% faster, rollout 10-18%, system time 5 s -> 1.3 s over a 23-step benchmark.
# A value the user set is kept.
ENV_THREAD_TIMEOUT = "OPENBLAS_THREAD_TIMEOUT"
THREAD_TIMEOUT = "4"

BLAS_WARNING = (
    "warning: MLX is using its slow reference BLAS (~30x slower matmul); "
    "install OpenBLAS (Debian/Ubuntu: sudo apt-get install libopenblas0-pthread) "
    "or set PPO_BLAS_LIBRARY=/path/to/libopenblas.so"
)

# Library names that identify an optimized BLAS usable by MLX.
_FAST_MARKERS = ("openblas", "mkl")
# Optimized, but with prefixed symbols: cannot stand in for MLX's BLAS.
_PREFIXED_MARKERS = ("scipy_openblas",)
# Anything BLAS-like (for reports).
_BLAS_MARKERS = ("blas", "mkl", "accelerate")

_warned_in_process = False


def _is_linux() -> bool:
    return sys.platform.startswith("linux")


def _is_fast_name(path: str) -> bool:
    name = os.path.basename(path).lower()
    if any(m in name for m in _PREFIXED_MARKERS):
        return False
    if any(m in name for m in _FAST_MARKERS):
        return True
    # Debian/Ubuntu alternatives: .../openblas-pthread/libblas.so.3 is OpenBLAS.
    parent = os.path.basename(os.path.dirname(path)).lower()
    return name.startswith("libblas") and parent.startswith("openblas")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------- #
# Finding a library
# --------------------------------------------------------------------------- #
def _elf_signature(path: str) -> tuple[bytes, bytes] | None:
    """(class+endianness, e_machine) of an ELF file, or None if not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return head[4:6], head[18:20]


def _compatible(path: str) -> bool:
    """True if `path` is a shared object the running interpreter can load."""
    if not os.path.isfile(path):
        return False
    if any(sep in path for sep in (" ", ":")):  # LD_PRELOAD separators
        return False
    lib = _elf_signature(path)
    if lib is None:
        return False
    me = _elf_signature("/proc/self/exe") or _elf_signature(os.path.realpath(sys.executable))
    return me is None or me == lib


def _multiarch_dirs() -> list[str]:
    machine = platform.machine().lower()
    triplets = {
        "x86_64": "x86_64-linux-gnu",
        "amd64": "x86_64-linux-gnu",
        "aarch64": "aarch64-linux-gnu",
        "arm64": "aarch64-linux-gnu",
        "ppc64le": "powerpc64le-linux-gnu",
        "s390x": "s390x-linux-gnu",
        "riscv64": "riscv64-linux-gnu",
    }
    dirs = []
    own = triplets.get(machine)
    if own:
        dirs.append(f"/usr/lib/{own}")
    for t in ("x86_64-linux-gnu", "aarch64-linux-gnu"):
        if f"/usr/lib/{t}" not in dirs:
            dirs.append(f"/usr/lib/{t}")
    dirs += ["/usr/lib64", "/usr/lib", "/usr/local/lib", "/opt/OpenBLAS/lib"]
    return dirs


def _system_candidates() -> list[str]:
    out = []
    for d in _multiarch_dirs():
        for sub in ("", "openblas-pthread/", "openblas-openmp/", "openblas-serial/"):
            out.append(f"{d}/{sub}libopenblas.so.0")
        out.append(f"{d}/libopenblasp.so.0")  # Fedora pthread variant
        out.append(f"{d}/libopenblas.so")
    return out


def _ldconfig_candidates() -> list[str]:
    exe = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None
    )
    if exe is None:
        return []
    try:
        text = subprocess.run(
            [exe, "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    openblas, mkl = [], []
    for line in text.splitlines():
        if "=>" not in line:
            continue
        name, _, path = line.partition("=>")
        name, path = name.strip().split(" ")[0], path.strip()
        low = name.lower()
        if low.startswith("libopenblas") and "64_" not in low and not low.startswith("libopenblas64"):
            openblas.append(path)
        elif low.startswith("libmkl_rt"):
            mkl.append(path)
    return openblas + mkl


def find_fast_blas() -> str | None:
    """Path of an optimized BLAS to preload, or None.

    Order: ``$PPO_BLAS_LIBRARY`` (if it exists), common OpenBLAS locations,
    then ``ldconfig -p``.  (PyPI's scipy-openblas32/64 cannot be used: its
    symbols are prefixed, see the module docstring.)
    """
    explicit = os.environ.get(ENV_LIBRARY, "").strip()
    if explicit and os.path.isfile(explicit):
        return explicit
    if not _is_linux():
        return None
    seen = set()
    for path in _system_candidates() + _ldconfig_candidates():
        if path in seen:
            continue
        seen.add(path)
        if _compatible(path):
            return path
    return None


# --------------------------------------------------------------------------- #
# Inspecting the current process
# --------------------------------------------------------------------------- #
def _mapped_libraries() -> list[str] | None:
    """Shared objects mapped into this process, or None without /proc."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    paths: list[str] = []
    seen = set()
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5].strip()
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        if not path.startswith("/") or path in seen:
            continue
        seen.add(path)
        paths.append(path)
    return paths


def loaded_blas_libraries() -> list[str]:
    """Paths of BLAS-like libraries mapped into this process ([] without /proc)."""
    libs = _mapped_libraries() or []
    return [p for p in libs if any(m in os.path.basename(p).lower() for m in _BLAS_MARKERS)]


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _global_symbol_provider(symbol: str = "cblas_sgemm") -> str | None:
    """Library that provides `symbol` in the global lookup scope.

    That is what a later-loaded ``libmlx.so`` binds ``cblas_sgemm`` to when the
    symbol is interposed (LD_PRELOAD).  Returns "" when the symbol is not in the
    global scope and None when this cannot be determined.
    """
    try:
        handle = ctypes.CDLL(None)
        try:
            addr = ctypes.cast(getattr(handle, symbol), ctypes.c_void_p).value
        except AttributeError:
            return ""
        try:
            dladdr = handle.dladdr
        except AttributeError:  # glibc < 2.34 keeps dladdr in libdl
            dladdr = ctypes.CDLL("libdl.so.2").dladdr
        dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        dladdr.restype = ctypes.c_int
        info = _DlInfo()
        if not dladdr(addr, ctypes.byref(info)) or not info.dli_fname:
            return None
        return os.fsdecode(info.dli_fname)
    except Exception:  # noqa: BLE001 - diagnostics must never crash
        return None


def _preload_entries() -> list[str]:
    raw = os.environ.get("LD_PRELOAD", "")
    return [p for p in raw.replace(":", " ").split() if p]


def fast_blas_preloaded() -> bool:
    """True if an optimized BLAS (OpenBLAS/MKL) is preloaded into this process."""
    if not _is_linux():
        return False
    provider = _global_symbol_provider()
    if provider:
        return _is_fast_name(os.path.realpath(provider)) or _is_fast_name(provider)
    mapped = _mapped_libraries()
    for entry in _preload_entries():
        if not _is_fast_name(entry) and not _is_fast_name(os.path.realpath(entry)):
            continue
        if mapped is None:  # no /proc: trust LD_PRELOAD
            return True
        real = os.path.realpath(entry)
        if any(p == entry or os.path.realpath(p) == real for p in mapped):
            return True
    return False


def _bundled_reference_blas() -> str | None:
    """Path of the reference BLAS shipped in the mlx-cpu wheel, if any."""
    mapped = [
        p for p in loaded_blas_libraries()
        if "mlx" in p.lower() and not _is_fast_name(p)
    ]
    if mapped:
        return mapped[0]
    try:
        import importlib.util

        spec = importlib.util.find_spec("mlx")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        site = os.path.dirname(os.path.abspath(loc))
        hits = sorted(glob.glob(os.path.join(site, "mlx_cpu.libs", "libblas*.so*")))
        if hits:
            return hits[0]
    return None


def blas_in_use() -> str:
    """Short description of the BLAS MLX's CPU backend uses (for reports)."""
    if sys.platform == "darwin":
        return "Accelerate"
    provider = _global_symbol_provider()
    if provider and _is_fast_name(os.path.realpath(provider)):
        return os.path.realpath(provider)
    if fast_blas_preloaded():
        for p in loaded_blas_libraries():
            if _is_fast_name(p):
                return p
    ref = _bundled_reference_blas()
    if ref:
        return ref
    return "unknown"


# --------------------------------------------------------------------------- #
# Entry-point hook
# --------------------------------------------------------------------------- #
def _warn_once() -> None:
    global _warned_in_process
    if _warned_in_process or _env_flag(ENV_WARNED):
        return
    _warned_in_process = True
    os.environ[ENV_WARNED] = "1"  # children don't warn again
    try:
        print(BLAS_WARNING, file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - closed stderr etc.
        pass


def _embedded() -> bool:
    """True when re-executing would clobber a host process (REPL, pytest,
    Jupyter) or can no longer help because MLX is already loaded."""
    if "mlx.core" in sys.modules:
        return True
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return True
    return any(m in sys.modules for m in ("pytest", "IPython", "ipykernel"))


def _current_argv() -> list[str]:
    orig = getattr(sys, "orig_argv", None)  # Python >= 3.10
    if orig:
        return list(orig[1:])
    return list(sys.argv)


def ensure_fast_blas(argv: list[str] | None = None) -> None:
    """Re-exec the current command with an optimized BLAS preloaded.

    Call first thing in each console entry point, before mlx is imported.
    `argv` is the interpreter's argument list (without the interpreter
    itself); by default ``sys.orig_argv[1:]`` so ``python -m ppo.x`` and
    console scripts both re-exec correctly.  Never raises.
    """
    try:
        _ensure_fast_blas(argv)
    except Exception:  # noqa: BLE001 - never break the entry point
        pass


def _ensure_fast_blas(argv: list[str] | None) -> None:
    if not _is_linux():  # macOS: MLX uses Accelerate
        return
    if _env_flag(ENV_DISABLE):
        return
    if fast_blas_preloaded():
        return
    if os.environ.get(ENV_GUARD) == "1":
        # We already re-executed once and the preload did not take effect
        # (broken library, wrong arch...): carry on, but say so.
        _warn_once()
        return
    path = find_fast_blas()
    if path is None or not sys.executable or _embedded():
        _warn_once()
        return
    args = list(argv) if argv is not None else _current_argv()
    existing = os.environ.get("LD_PRELOAD", "").strip()
    os.environ["LD_PRELOAD"] = f"{path}:{existing}" if existing else path
    os.environ[ENV_GUARD] = "1"
    set_timeout = ENV_THREAD_TIMEOUT not in os.environ
    if set_timeout:
        os.environ[ENV_THREAD_TIMEOUT] = THREAD_TIMEOUT
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass
    try:
        os.execv(sys.executable, [sys.executable] + args)
    except OSError:
        # exec failed: restore the environment and continue on the slow path.
        if existing:
            os.environ["LD_PRELOAD"] = existing
        else:
            os.environ.pop("LD_PRELOAD", None)
        os.environ.pop(ENV_GUARD, None)
        if set_timeout:
            os.environ.pop(ENV_THREAD_TIMEOUT, None)
        _warn_once()


def _openblas_thread_controls():
    """(get, set) of the process's OpenBLAS thread count, or None without OpenBLAS."""
    try:
        handle = ctypes.CDLL(None)
        return handle.openblas_get_num_threads, handle.openblas_set_num_threads
    except (OSError, AttributeError):
        return None


def set_blas_threads(n: int) -> bool:
    """Set the process's OpenBLAS thread count (False where OpenBLAS is not the BLAS in use)."""
    controls = _openblas_thread_controls()
    if controls is None:
        return False
    controls[1](max(1, int(n)))
    return True


class single_threaded_blas:
    """Run a block with one OpenBLAS thread, then restore the count.

    Decoding multiplies a few rows by each weight matrix: waking a second BLAS thread for
    every such small product costs more than it saves (benchmarks/profile_step.py: rollout
    -23%), while the large products of scoring and the update gain from both threads.
    A no-op where OpenBLAS is not the BLAS in use.
    """

    def __enter__(self):
        self._controls = _openblas_thread_controls()
        if self._controls is not None:
            get, set_ = self._controls
            self._previous = get()
            set_(1)
        return self

    def __exit__(self, *exc):
        if self._controls is not None:
            self._controls[1](self._previous)
        return False
