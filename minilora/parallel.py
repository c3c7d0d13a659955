"""Every CPU core for the big array work of a training step (NumPy only; CuPy passes straight through).

NumPy runs an elementwise op (exp, multiply, ...) on one core, and a stack of
small matrix products (attention's [B, H, T, D] @ [B, H, D, T]) one product
after another. Its BLAS does spread one large product over the cores, but
afterwards its worker threads keep spinning for a while, so a thread of ours
started then finds no free core. So on the CPU minilora runs NumPy's BLAS on
one thread and splits the big jobs itself: the rows of an array (or the
leading axis of a stack of matrices) in one block per core, each block in its
own thread. NumPy lets go of Python's lock (the GIL) inside a ufunc or a
matrix product, so the blocks really run at the same time, and an idle thread
sleeps instead of spinning.

Each block runs the same NumPy code on its rows, so an elementwise result is
bit for bit the single-threaded one, and a product differs at most by float
rounding (BLAS may order a sum differently for fewer rows).

    for_rows(fn, n_rows, work)     fn(lo, hi) on blocks of rows, in parallel
    matmul(a, b)                   a @ b with the rows of a (or the stack) split
    set_threads(n)                 how many blocks (1: plain NumPy, BLAS as it was)

Why also here: the C library keeps freed memory for reuse only up to a
threshold it adjusts as it goes; after a step's temporaries are freed it may
hand megabytes back to the system and fault them in again, page by page, in
the next step (a third of a step's time on the benchmark GPT). `_keep_freed_memory`
asks it to keep them (glibc on Linux; elsewhere nothing changes).
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
import threading

import numpy as np

from minilora import backend

# Below these sizes handing a block to another thread (about 20 us) costs more than it saves.
MIN_ELEMENTS = 1 << 16          # elementwise work: elements per block
MIN_FLOPS = 1 << 23             # matrix products: multiply-adds x 2, per block

_threads = 1                    # blocks per job; 1 = plain NumPy
_workers: list = []             # _threads - 1 helper threads; the caller runs the first block
_dispatch = threading.Lock()    # held while a job is split: a second caller (another thread,
                                # or a block that splits again) runs its job whole instead
_blas = None                    # threadpoolctl's handle on NumPy's BLAS, once found
_blas_threads = None            # its thread count before we set it to 1


class _Worker:
    """A thread that runs one block at a time, handed over by two locks (start, done).

    Lighter than a thread pool's futures (about 12 us a round trip instead of 18),
    and it sleeps in `start.acquire()` between jobs, using no CPU."""

    def __init__(self):
        self.start, self.done = threading.Lock(), threading.Lock()
        self.start.acquire()
        self.done.acquire()
        self.job, self.error = None, None
        threading.Thread(target=self._loop, name="minilora-parallel", daemon=True).start()

    def _loop(self):
        while True:
            self.start.acquire()
            if self.job is None:                     # stop()
                return
            fn, lo, hi = self.job
            try:
                fn(lo, hi)
            except BaseException as error:           # handed to the caller by wait()
                self.error = error
            self.done.release()

    def run(self, fn, lo: int, hi: int) -> None:
        self.job = (fn, lo, hi)
        self.start.release()

    def wait(self):
        """Block until the job is done; its exception, if it raised one."""
        self.done.acquire()
        error, self.error, self.job = self.error, None, None
        return error

    def stop(self) -> None:
        self.job = None
        self.start.release()


def _numpy_blas():
    """threadpoolctl's controller for the BLAS that NumPy itself loaded, or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))       # site-packages
    ours = [lib for lib in ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and os.path.realpath(lib.filepath).startswith(
                (os.path.join(numpy_dir, "numpy"), os.path.join(numpy_dir, "numpy.libs")))]
    return ours[0] if len(ours) == 1 else None


def set_threads(n: int | None = None) -> int:
    """Split big NumPy jobs into `n` blocks (default: the cores this process may use).

    n > 1 also runs NumPy's BLAS on one thread (its own threads would fight ours);
    n = 1 gives BLAS back its thread count and every op runs as plain NumPy.
    If NumPy's BLAS cannot be found (threadpoolctl missing, or a BLAS it does not
    know), it stays as it is and so does minilora: 1 block. Returns the count in use.
    """
    global _threads, _blas, _blas_threads
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_threads: n={n!r} must be a whole number >= 1")
    if n > 1 and _blas is None:
        _blas = _numpy_blas()
        if _blas is None:
            n = 1
        else:
            _blas_threads = _blas.num_threads
    with _dispatch:                                  # no job is running while workers change
        for worker in _workers or ():
            worker.stop()
        _threads = n
        _start_workers()
    if n > 1:
        _blas.set_num_threads(1)
    elif _blas is not None and _blas_threads is not None:
        _blas.set_num_threads(_blas_threads)
    return n


def _start_workers() -> None:
    global _workers
    _workers = [_Worker() for _ in range(_threads - 1)]


def _forget_workers_after_fork() -> None:
    """In a child made by fork() only the forking thread exists: start new workers on first use."""
    global _workers, _dispatch
    _workers, _dispatch = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers_after_fork)


def threads() -> int:
    """How many blocks a big job is split into (1: not split)."""
    return _threads


def _on_host(array) -> bool:
    """A NumPy array in host memory (not a list, not a GPU array): the only kind split here."""
    return isinstance(array, np.ndarray) and backend.device_of(array) == "cpu"


def for_rows(fn, n_rows: int, work: int, like=None) -> None:
    """Call fn(lo, hi) for blocks of rows covering 0..n_rows, one block per thread.

    `work` (elements, or flops) decides whether splitting pays; `like`, an array
    the job reads, keeps CuPy arrays on one call (fn(0, n_rows)), since the GPU
    runs the whole job at once anyway. fn must only write rows lo..hi of its outputs.
    """
    if _workers is None:                    # a forked child: its parent's threads are not here
        _start_workers()
    blocks = min(_threads, n_rows)
    if (blocks < 2 or work < MIN_ELEMENTS * blocks or (like is not None and not _on_host(like))
            or not _dispatch.acquire(blocking=False)):
        fn(0, n_rows)
        return
    try:
        workers = _workers[:blocks - 1]
        bounds = [n_rows * i // blocks for i in range(blocks + 1)]
        for worker, lo, hi in zip(workers, bounds[1:-1], bounds[2:]):
            worker.run(fn, lo, hi)
        try:
            fn(bounds[0], bounds[1])
        finally:
            errors = [worker.wait() for worker in workers]      # every block ends, even if ours failed
        for error in errors:
            if error is not None:
                raise error
    finally:
        _dispatch.release()


def matmul(a, b, add=None):
    """a @ b (+ add, e.g. a bias, broadcast along the rows). On NumPy float arrays
    big enough, the rows of a 2-D `a` (with `b` whole), or the leading axis of two
    stacks of the same batch shape, are split into one block per thread; each
    block adds `add` to its rows while they are still in its core's cache.
    Anything else is plain a @ b (+ add)."""
    splittable = (_threads > 1 and _on_host(a) and _on_host(b)
                  and a.dtype == b.dtype and a.dtype.kind == "f" and a.ndim >= 2 and b.ndim >= 2
                  and a.shape[-1] == b.shape[-2]
                  and ((a.ndim == 2 and b.ndim == 2) or (add is None and a.shape[:-2] == b.shape[:-2])))
    if not splittable or 2 * math.prod(a.shape) * b.shape[-1] < MIN_FLOPS * _threads:
        out = a @ b
        if add is not None:
            out += add                                   # in place: out is a fresh array
        return out
    out = np.empty(a.shape[:-1] + b.shape[-1:], dtype=a.dtype)
    split_b = b.ndim > 2

    def block(lo, hi):
        np.matmul(a[lo:hi], b[lo:hi] if split_b else b, out=out[lo:hi])
        if add is not None:
            out[lo:hi] += add

    for_rows(block, a.shape[0], a.shape[0] * MIN_ELEMENTS)   # the size test is done above
    return out


def _keep_freed_memory() -> None:
    """Ask glibc to keep up to 512 MiB of freed memory for reuse, and to serve arrays
    up to 32 MiB from it, instead of returning pages to the system after every step."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):        # not glibc (musl, ...): leave it be
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)
    mallopt(M_TRIM_THRESHOLD, 512 << 20)


_keep_freed_memory()
set_threads()
