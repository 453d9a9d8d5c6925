"""Builds and loads Pagoda's CPU kernels (csrc/cpu_kernels.cpp) as ``torch.ops.pagoda.*``.

The C++ source is compiled once per machine with the local compiler (-march=native) into
``~/.cache/pagoda/kernels/<hash of source and torch version>``; ``scripts/setup.sh`` does it at
install time (``python -m pagoda.kernels.cpu_kernels``) so that the first model load does not
wait for it. Where no compiler works, or with ``PAGODA_CPU_KERNELS=0``, every caller falls back
to the portable PyTorch path, which computes the same thing with more operators.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import time
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "cpu_kernels.cpp"
DTYPES = (torch.float32, torch.bfloat16)
# no errno or FP traps: without them GCC cannot vectorize loops that call exp or floor
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]


def enabled_by_env() -> bool:
    return os.environ.get("PAGODA_CPU_KERNELS", "1").lower() not in ("0", "false", "no", "off")


def build_directory() -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + " ".join(CFLAGS).encode())
    root = Path(os.environ.get("PAGODA_CACHE_DIR", Path.home() / ".cache" / "pagoda"))
    return root / "kernels" / key.hexdigest()[:16]


def build(verbose: bool = False) -> Path:
    """Compiles the kernels if this source and torch have not been compiled here yet; returns the
    shared library's path."""
    from torch.utils.cpp_extension import load

    directory = build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    # torch's builder runs `ninja` from PATH; the virtual environment's own copy counts
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    load(name="pagoda_cpu_kernels", sources=[str(SOURCE)], extra_cflags=CFLAGS, extra_ldflags=["-fopenmp"],
         build_directory=str(directory), is_python_module=False, verbose=verbose)
    return directory / "pagoda_cpu_kernels.so"


@functools.cache
def available() -> bool:
    """True once ``torch.ops.pagoda`` holds the CPU kernels (built on first call if needed)."""
    if not enabled_by_env():
        return False
    try:
        library = build_directory() / "pagoda_cpu_kernels.so"
        if library.exists():
            torch.ops.load_library(str(library))
        else:
            build()  # loads it too
        return True
    except Exception as exc:  # noqa: BLE001  (no compiler, no ninja: the portable path still works)
        warnings.warn(f"Pagoda's CPU kernels are unavailable ({type(exc).__name__}: {exc}); "
                      "using the slower portable PyTorch path", stacklevel=2)
        return False


@functools.cache
def invariant_linear_available() -> bool:
    """Whether ``torch.ops.pagoda.invariant_linear`` runs here (it needs AVX-512 BF16)."""
    return available() and bool(torch.ops.pagoda.invariant_linear_available())


def use_for(t: torch.Tensor) -> bool:
    """Whether the CPU kernels should handle this tensor's operator (float32 and bfloat16)."""
    return t.device.type == "cpu" and t.dtype in DTYPES and available()


def main() -> int:
    if not enabled_by_env():
        print("PAGODA_CPU_KERNELS=0: not building the CPU kernels")
        return 0
    library = build_directory() / "pagoda_cpu_kernels.so"
    if library.exists():
        print(f"CPU kernels already built: {library}")
        return 0
    print("compiling Pagoda's CPU kernels (once per machine, about a minute)...", flush=True)
    start = time.perf_counter()
    print(f"built {build()} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
