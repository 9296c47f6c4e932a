"""Peak live heap memory of a process on glibc, sampled by a thread (``scaling.py``'s
``live MB`` column)."""

from __future__ import annotations


class LiveMemory:
    """Peak of the bytes glibc's malloc has handed out and not yet freed (``mallinfo2``), MB,
    sampled every 2 ms by a thread: the tensors' own memory, where the peak RSS also counts
    freed memory that :func:`mlff.runtime.keep_freed_memory` keeps for reuse. None off glibc."""

    def __init__(self) -> None:
        import ctypes
        import threading

        class Info(ctypes.Structure):
            names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
            _fields_ = [(name, ctypes.c_size_t) for name in names.split()]

        try:
            self._mallinfo = ctypes.CDLL(None).mallinfo2
            self._mallinfo.restype = Info
        except (OSError, AttributeError):
            self._mallinfo = None
        self.start = self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if self._mallinfo is not None:
            self._thread.start()

    def now(self) -> float | None:
        if self._mallinfo is None:
            return None
        info = self._mallinfo()
        return (info.uordblks + info.hblkhd) / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.now())

    def stop(self) -> float | None:
        """The peak above the bytes in use at the start, MB."""
        if self._mallinfo is None:
            return None
        self._stop.set()
        self._thread.join()  # no sample lands after the peak is read
        return self.peak - self.start
