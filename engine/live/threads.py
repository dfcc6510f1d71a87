"""Per-thread settings: torch's intra-op thread count, and a lower OS priority for background work.

Thread count: torch.set_num_threads(n) also stores n as the process-wide default that every thread takes on its first
parallel op (ATen's lazy per-thread init), so calling it on a helper thread leaks: every thread started later runs
with n.
OpenMP itself keeps the count per thread (its nthreads-var ICV), and ATen's OpenMP backend reads it per call, so
we set it there, in the OpenMP runtime torch loaded, after torch has initialised this thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# The OpenMP runtimes that torch wheels bundle or link: GNU (Linux), LLVM (macOS), Intel and MSVC (Windows).
_RUNTIME_NAMES = ("libgomp", "libomp", "libiomp5", "vcomp")
_warned = threading.Event()


def limit_torch_threads(count: int) -> None:
    """Run this thread's torch ops on `count` intra-op threads, leaving every other thread and the process default
    as they are. Where that cannot be done (no OpenMP runtime found), this thread keeps the default: one warning."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"thread count must be an int >= 1, got {count!r}")
    torch.get_num_threads()  # ATen's lazy init of this thread first, or it would overwrite what we set below
    runtime = _openmp_runtime()
    if runtime is not None:
        runtime.omp_set_num_threads(count)
        if torch.get_num_threads() == count:
            return
    if not _warned.is_set():
        _warned.set()
        log.warning(
            "thread %s keeps torch's default of %d threads: no OpenMP runtime to set it for one thread "
            "(torch parallel backend: %s)",
            threading.current_thread().name,
            torch.get_num_threads(),
            "OpenMP" if torch.backends.openmp.is_available() else "not OpenMP",
        )


@cache
def _openmp_runtime() -> Any:
    """The OpenMP runtime library torch uses (already loaded, so this only finds its handle), or None."""
    if not torch.backends.openmp.is_available():
        return None
    package = Path(torch.__file__).parent
    candidates = [
        path
        for folder in (package / "lib", package.parent / "torch.libs")
        if folder.is_dir()
        for path in sorted(folder.iterdir())
        if path.name.startswith(_RUNTIME_NAMES)
    ]
    names = [str(path) for path in candidates] + [
        found for name in ("gomp", "omp", "iomp5", "vcomp140") if (found := ctypes.util.find_library(name))
    ]
    for name in names:
        try:
            library = ctypes.CDLL(name)
            library.omp_set_num_threads.argtypes = [ctypes.c_int]
            return library
        except (OSError, AttributeError) as error:  # not loadable here, or not an OpenMP runtime
            log.debug("OpenMP runtime %s: %s", name, error)
    return None


def lower_thread_priority() -> bool:
    """Run the calling thread at the lowest OS priority where the platform allows it for one thread, so that its work
    takes the cores only when the engine's threads leave them idle (the prompt encoder: a frame must never wait for
    it). True when done; where it can't be done the thread keeps its priority (logged at debug: nothing to act on).

    Linux: nice 19 on this thread's own id (setpriority with a thread id moves that thread alone). Windows:
    THREAD_PRIORITY_LOWEST. macOS: the utility QoS class (per thread; nice there would move the whole process)."""
    try:
        if sys.platform.startswith("linux"):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # type: ignore[attr-defined, unused-ignore]
            return True
        if sys.platform == "win32":
            kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined, unused-ignore]
            return bool(kernel32.SetThreadPriority(kernel32.GetCurrentThread(), -2))  # THREAD_PRIORITY_LOWEST
        if sys.platform == "darwin":
            system = ctypes.CDLL("/usr/lib/libSystem.dylib")
            return system.pthread_set_qos_class_self_np(0x11, 0) == 0  # QOS_CLASS_UTILITY, relative priority 0
    except (OSError, AttributeError, ValueError) as error:  # a sandbox that refuses it, or no such call here
        log.debug("thread %s keeps its OS priority: %s", threading.current_thread().name, error)
    return False


def live_thread_count(cores: int) -> int:
    """Torch's intra-op threads for a live process on a machine whose torch default is `cores` threads: all but one,
    at least one. The core left over serves the prompt encoder, the I/O and OSC threads and the other programs of a
    show. A team as wide as the machine stalls at every parallel op's barrier as soon as any other thread takes one
    of its cores: on the 2-core CI machine under a load of 12, a tiny-model frame took 1.66 s with 2 threads and
    82 ms with 1 (median of 6 interleaved rounds of 10 frames)."""
    return max(1, cores - 1)


def use_live_thread_count() -> Callable[[], None] | None:
    """Set the process default (every thread started later takes it) to live_thread_count, unless the user chose one
    with OMP_NUM_THREADS; returns what puts the previous default back (None when nothing changed)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    previous = torch.get_num_threads()
    torch.set_num_threads(live_thread_count(previous))
    return lambda: torch.set_num_threads(previous)
