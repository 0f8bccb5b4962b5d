"""Resource control of `tailseg serve`: admission by pixels in flight, deadlines, GC pauses.

Memory of a prediction grows with its pixels (about 400 bytes per pixel for the U-Net's
activations: one 2300 x 2300 chip cost 2.1 GB in benchmarks/bench_serving.py), so requests are
admitted by pixels, not by count. A request waits in a bounded queue while the budget is used
up; when the queue is full, or the request alone is larger than the whole budget, it is refused
at once with RESOURCE_EXHAUSTED (HTTP 429), as TF Serving refuses work beyond its batching
queue. A waiting request whose deadline passes, or whose client went away, leaves the queue
without running.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tailseg.errors import ServingRequestError


def check_alive(deadline: float | None, alive: Callable[[], bool] | None) -> None:
    """Raise DEADLINE_EXCEEDED or CANCELLED when the caller no longer wants the answer.

    Args:
        deadline: time.monotonic() value after which the answer is useless (None: no deadline).
        alive: False once the client cancelled or disconnected (None: always alive).
    """
    # gRPC marks a call inactive when its deadline passes, so a just-expired deadline counts
    # as DEADLINE_EXCEEDED, not as a cancellation.
    expired = deadline is not None and time.monotonic() >= deadline - 0.05
    if expired and (time.monotonic() >= deadline or alive is not None and not alive()):
        raise ServingRequestError("Deadline exceeded before the prediction finished",
                                  "DEADLINE_EXCEEDED")
    if alive is not None and not alive():
        raise ServingRequestError("Request cancelled by the client", "CANCELLED")


def gc_pausing_enabled() -> bool:
    """False when TAILSEG_GC_PAUSE=0: the benchmark's "before" (read at each call)."""
    return os.environ.get("TAILSEG_GC_PAUSE", "1") != "0"


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = True


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (process-wide, re-entrant across threads).

    Decoding a 448 x 448 chip from JSON creates ~800 000 floats and lists; each allocation
    burst triggers collections that rescan every live object (TensorFlow's included). None of
    these objects form cycles, so collecting during decode and encode is wasted work.
    """
    global _gc_pausers, _gc_was_enabled
    if not gc_pausing_enabled():
        yield
        return
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()


@dataclass
class Admission:
    """Pixels in flight, with at most max_queued requests waiting for room."""

    max_pixels: int
    max_queued: int
    on_reject: Callable[[str], None] = lambda reason: None
    in_flight: int = 0
    queued: int = 0
    _room: threading.Condition = field(default_factory=threading.Condition)

    @contextmanager
    def admit(self, pixels: int, deadline: float | None = None,
              alive: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold `pixels` of the budget while the block runs.

        Raises:
            ServingRequestError: RESOURCE_EXHAUSTED (too large, or queue full),
                DEADLINE_EXCEEDED or CANCELLED (while waiting).
        """
        if pixels > self.max_pixels:
            self.on_reject("too_large")
            raise ServingRequestError(
                f"request of {pixels} pixels exceeds the server's budget of {self.max_pixels} "
                "pixels in flight (--max_pixels_in_flight); split the image into tiles",
                "RESOURCE_EXHAUSTED")
        with self._room:
            if self.in_flight + pixels > self.max_pixels:
                if self.queued >= self.max_queued:
                    self.on_reject("queue_full")
                    raise ServingRequestError(
                        f"server busy: {self.in_flight} pixels in flight and {self.queued} "
                        f"requests queued (--max_queued_requests {self.max_queued}); retry later",
                        "RESOURCE_EXHAUSTED")
                self.queued += 1
                try:
                    while self.in_flight + pixels > self.max_pixels:
                        check_alive(deadline, alive)
                        wait = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
                        self._room.wait(max(wait, 0.001))
                finally:
                    self.queued -= 1
            self.in_flight += pixels
        try:
            yield
        finally:
            with self._room:
                self.in_flight -= pixels
                self._room.notify_all()
