"""Server-side request batching of `tailseg serve` (TF Serving's --enable_batching), off by default.

Concurrent predict requests for the same model version and the same image shape (H, W, C) are
concatenated along the batch axis into one model call and the output is split back per request.
The U-Net runs batch norm in inference mode and every image is independent, so each request's
answer is bit-identical to its unbatched prediction (tests/test_serving_batching.py checks it).

The scheduler follows TF Serving's SharedBatchScheduler (tensorflow/core/kernels/batching_util/
shared_batch_scheduler.h), one queue per (model version, image shape):
- a request joins the open batch of its queue; if it does not fit (images beyond
  max_batch_size, or pixels beyond the pixel budget, see below) the open batch is closed and a
  new one opened, unless the queue already holds max_enqueued_batches batches (the open one
  included, those running excluded): then it is refused with UNAVAILABLE (HTTP 503) and TF's
  message "The batch scheduling queue to which this task was submitted is full; ...";
- num_batch_threads workers run closed batches, or the open batch once it is full or its first
  request has waited batch_timeout_micros (so the wait of a lone request is bounded by it);
- a request with more images than max_batch_size is refused with INVALID_ARGUMENT ("Task size N
  is larger than maximum input batch size M"), as TF Serving does with its default
  enable_large_batch_splitting=false; clients tile large scenes into chips anyway;
- allowed_batch_sizes pads a batch up to the next allowed size with copies of its last image
  (the padded outputs are dropped), as BatchingSession pads; its last entry must equal
  max_batch_size;
- a request whose deadline passed or whose client went away before its batch runs is dropped
  from the batch, not run; a batch is cut short between model sub-batches once none of its
  requests is wanted; an error of the model call (an OpError's status, admission refusal) goes
  to every request of the batch.

Deliberate differences from TF Serving: requests of different image shapes are never merged (TF
fails such a batch unless pad_variable_length_inputs pads it, which tailseg refuses: padded
pixels would change the U-Net's output near the border); --enable_large_batch_splitting and
TF's newer BatchingParameters fields are not declared, so a file using them fails to parse.

Pixel budget (tailseg.serving.limits): a batch is admitted as a whole, by its merged (padded)
pixels, in the worker just before the model call; batches are formed so that their pixels never
exceed --max_pixels_in_flight. Admitting per request before enqueueing would either hold the
budget while requests wait for partners (and deadlock a batch whose partners cannot be admitted)
or not bound the merged call; admitting the batch bounds exactly what the model call allocates.
Requests waiting in the batch queue hold only their input arrays (about 1 % of a prediction's
~400 bytes per pixel), bounded by max_enqueued_batches x max_batch_size images per queue.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tailseg.errors import ConfigError, ServingRequestError
from tailseg.serving.limits import check_alive

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (servables/tensorflow/session_bundle_config.proto).

    Defaults are TF's when --enable_batching is given without a file: model_servers/server.cc
    then sets only thread_pool_name "model_server_batch_threads", and the rest comes from
    SharedBatchScheduler::QueueOptions (max_batch_size 1000, batch_timeout_micros 0,
    max_enqueued_batches 10) and SharedBatchScheduler::Options (num_batch_threads
    port::MaxParallelism(), the number of CPUs).
    """

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = "model_server_batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # The checks of SharedBatchScheduler::Create / AddQueue and BatchingSession::Create.
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive; was {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise ValueError("batch_timeout_micros must be non-negative; was "
                             f"{self.batch_timeout_micros}")
        if self.max_enqueued_batches < 0:
            raise ValueError("max_enqueued_batches must be non-negative; was "
                             f"{self.max_enqueued_batches}")
        if self.num_batch_threads < 1:
            raise ValueError(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)) or sizes[0] < 1:
                raise ValueError(f"allowed_batch_sizes entries must be positive and "
                                 f"monotonically increasing; got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ValueError(f"final entry in allowed_batch_sizes ({sizes[-1]}) must equal "
                                 f"max_batch_size ({self.max_batch_size})")

    def padded_size(self, size: int) -> int:
        """The batch size a batch of `size` images is run at (the next allowed size)."""
        return next((s for s in self.allowed_batch_sizes if s >= size), size)


def _batching_parameters_class():
    """The BatchingParameters message, declared here: the tensorflow-serving-api wheel lacks
    session_bundle_config_pb2. Field names and numbers are TF Serving's."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    proto = descriptor_pb2.FileDescriptorProto(
        name="tailseg_batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    optional, repeated = 1, 3  # FieldDescriptorProto labels
    for name, number, wrapper in (("max_batch_size", 1, "Int64Value"),
                                  ("batch_timeout_micros", 2, "Int64Value"),
                                  ("max_enqueued_batches", 3, "Int64Value"),
                                  ("num_batch_threads", 4, "Int64Value"),
                                  ("thread_pool_name", 5, "StringValue")):
        message.field.add(name=name, number=number, label=optional, type=11,  # message
                          type_name=f".google.protobuf.{wrapper}")
    message.field.add(name="allowed_batch_sizes", number=6, label=repeated, type=3)  # int64
    message.field.add(name="pad_variable_length_inputs", number=7, label=optional, type=8)  # bool
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def read_batching_parameters(path: str | Path) -> BatchingParameters:
    """Parse a BatchingParameters text proto, as tensorflow_model_server's
    --batching_parameters_file (unset fields keep TF's defaults).

    Raises:
        ConfigError: unreadable file, a syntax error or unknown field (the message names the
            file, line and field), an invalid value, or pad_variable_length_inputs: true.
    """
    from google.protobuf import text_format

    path = Path(path)
    try:
        message = text_format.Parse(path.read_text(), _batching_parameters_class()())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as error:
        raise ConfigError(f"Invalid protobuf file: '{path}' (BatchingParameters text proto: "
                          f"{error})") from error
    if message.pad_variable_length_inputs:
        raise ConfigError(f"{path}: pad_variable_length_inputs: true is not supported: tailseg "
                          "never pads images (padding changes the U-Net's output near the "
                          "border); requests of different shapes run in separate batches")
    values = {name: getattr(message, name).value
              for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                           "num_batch_threads", "thread_pool_name")
              if message.HasField(name)}
    try:
        return BatchingParameters(**values, allowed_batch_sizes=tuple(message.allowed_batch_sizes))
    except ValueError as error:
        raise ConfigError(f"{path}: invalid BatchingParameters: {error}") from error


@dataclass(eq=False)
class _Task:
    images: np.ndarray
    deadline: float | None
    alive: Callable[[], bool] | None
    enqueued: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None
    error: ServingRequestError | None = None
    abandoned: bool = False  # the waiting caller gave up (deadline, cancellation)

    @property
    def size(self) -> int:
        return len(self.images)

    def unwanted(self) -> ServingRequestError | None:
        """Why the answer is no longer wanted (None: still wanted)."""
        if self.abandoned:
            return ServingRequestError("Request cancelled by the client", "CANCELLED")
        try:
            check_alive(self.deadline, self.alive)
        except ServingRequestError as error:
            return error
        return None

    def finish(self, result: np.ndarray | None = None,
               error: ServingRequestError | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


@dataclass(eq=False)
class _Batch:
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0  # images
    started: float = 0.0  # time.monotonic() of its first task


@dataclass(eq=False)
class _Queue:
    loaded: object  # the LoadedVersion every batch of this queue runs on
    batches: deque[_Batch] = field(default_factory=lambda: deque([_Batch()]))  # last is open


def _copy_error(error: BaseException) -> ServingRequestError:
    """One exception per waiting request (they are raised in different threads)."""
    if isinstance(error, ServingRequestError):
        return ServingRequestError(str(error), error.code)
    return ServingRequestError(f"{type(error).__name__}: {error}", "INTERNAL")


class Batcher:
    """Merges concurrent requests into model calls; `run(loaded, images, deadline, alive)` is
    the unbatched prediction (admission and the model call) run once per batch.

    Args:
        max_batch_pixels: the pixel budget a batch must fit in (None: unbounded).
        on_batch: called after each model call with (model name, images run incl. padding,
            requests in it, their queuing seconds) — the metrics hook.
        on_reject: called with "batch_queue_full" when a request is refused for a full queue.
    """

    def __init__(self, params: BatchingParameters,
                 run: Callable[[object, np.ndarray, float | None, Callable[[], bool]],
                               np.ndarray],
                 max_batch_pixels: int | None = None,
                 on_batch: Callable[[str, int, int, list[float]], None] | None = None,
                 on_reject: Callable[[str], None] = lambda reason: None):
        self.params, self._run, self.max_batch_pixels = params, run, max_batch_pixels
        self._on_batch, self._on_reject = on_batch, on_reject
        self._cond = threading.Condition()
        self._queues: dict[tuple, _Queue] = {}
        self._next = 0  # round-robin position over the queues
        self._stopping = False
        self.model_calls = 0  # batches run (a test and benchmark hook)
        self._threads = [threading.Thread(target=self._work, daemon=True,
                                          name=f"{params.thread_pool_name}_{i}")
                         for i in range(params.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    # --- the request side ---------------------------------------------------------------------

    def predict(self, loaded, images: np.ndarray, deadline: float | None = None,
                alive: Callable[[], bool] | None = None) -> np.ndarray:
        """The model's output for `images`, run in a batch with concurrent requests.

        Raises:
            ServingRequestError: INVALID_ARGUMENT (more images than max_batch_size),
                UNAVAILABLE (queue full, server stopping), DEADLINE_EXCEEDED or CANCELLED
                (while queued), or the batch's error.
        """
        task = _Task(images, deadline, alive)
        self._schedule(loaded, task)
        while not task.done.wait(0.05 if deadline is None
                                 else max(0.0, min(0.05, deadline - time.monotonic()))):
            try:
                check_alive(deadline, alive)
            except ServingRequestError:
                task.abandoned = True  # the worker drops it if its batch has not run yet
                raise
        if task.error is not None:
            raise task.error
        return task.result

    def _schedule(self, loaded, task: _Task) -> None:
        params = self.params
        if task.size > params.max_batch_size:
            raise ServingRequestError(f"Task size {task.size} is larger than maximum input batch "
                                      f"size {params.max_batch_size}", "INVALID_ARGUMENT")
        key = (id(loaded), task.images.shape[1:], task.images.dtype.str)
        with self._cond:
            if self._stopping:
                raise ServingRequestError("the server is shutting down", "UNAVAILABLE")
            queue = self._queues.get(key)
            if queue is None or queue.loaded is not loaded:
                queue = self._queues[key] = _Queue(loaded)
            batch = queue.batches[-1]
            if batch.tasks and not self._fits(batch.size + task.size, task.images.shape):
                if len(queue.batches) >= params.max_enqueued_batches:
                    self._on_reject("batch_queue_full")
                    raise ServingRequestError(
                        "The batch scheduling queue to which this task was submitted is full; "
                        f"currently {len(queue.batches)} batches enqueued and "
                        f"max_enqueued_batches is {params.max_enqueued_batches}", "UNAVAILABLE")
                batch = _Batch()
                queue.batches.append(batch)
            if not batch.tasks:
                batch.started = time.monotonic()
            batch.tasks.append(task)
            batch.size += task.size
            self._cond.notify_all()

    def _fits(self, size: int, shape: tuple[int, ...]) -> bool:
        if size > self.params.max_batch_size:
            return False
        pixels = self.params.padded_size(size) * int(np.prod(shape[1:3]))
        return self.max_batch_pixels is None or pixels <= self.max_batch_pixels

    # --- the worker side ----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    taken = self._take(time.monotonic())
                    if taken is not None:
                        break
                    self._cond.wait(self._next_wake(time.monotonic()))
            try:
                self._process(*taken)
            except BaseException as error:  # never lose a worker, never strand a request
                logger.exception("batch failed")
                for task in taken[1].tasks:
                    if not task.done.is_set():
                        task.finish(error=_copy_error(error))

    def _take(self, now: float) -> tuple[object, _Batch] | None:
        """A batch ready to run (closed, full or timed out), round-robin over the queues."""
        keys = list(self._queues)
        timeout = self.params.batch_timeout_micros / 1e6
        for offset in range(len(keys)):
            key = keys[(self._next + offset) % len(keys)]
            queue = self._queues[key]
            batches = queue.batches
            if len(batches) == 1:
                head = batches[0]
                if not head.tasks:
                    del self._queues[key]  # idle: forget it (and its model version)
                    continue
                full = not self._fits(head.size + 1, head.tasks[0].images.shape)
                if not full and now < head.started + timeout:
                    continue
                batches.append(_Batch())
            self._next = (self._next + offset + 1) % max(len(keys), 1)
            return queue.loaded, batches.popleft()
        return None

    def _next_wake(self, now: float) -> float | None:
        """Seconds until the first open batch times out (None: wait for a request)."""
        timeout = self.params.batch_timeout_micros / 1e6
        starts = [q.batches[-1].started for q in self._queues.values() if q.batches[-1].tasks]
        return max(0.0, min(starts) + timeout - now) if starts else None

    def _process(self, loaded, batch: _Batch) -> None:
        tasks = []
        for task in batch.tasks:
            reason = task.unwanted()
            if reason is None:
                tasks.append(task)
            else:  # deadline passed or client gone while queued: dropped, not run
                task.finish(error=reason)
        if not tasks:
            return
        now = time.monotonic()
        waited = [now - task.enqueued for task in tasks]
        images = tasks[0].images if len(tasks) == 1 else np.concatenate(
            [task.images for task in tasks])
        size = len(images)
        padded = self.params.padded_size(size)
        if padded > size:  # BatchingSession's padding: copies of the last image, outputs dropped
            images = np.concatenate([images, np.repeat(images[-1:], padded - size, axis=0)])
        deadlines = [task.deadline for task in tasks]
        deadline = None if None in deadlines else max(deadlines)  # TF: the largest timeout
        with self._cond:
            self.model_calls += 1
        try:
            output = self._run(loaded, images, deadline,
                               lambda: any(task.unwanted() is None for task in tasks))
        except BaseException as error:  # e.g. an OpError's status: every request gets it
            for task in tasks:
                task.finish(error=_copy_error(error))
            return
        finally:
            if self._on_batch is not None:
                self._on_batch(getattr(loaded, "name", ""), padded, len(tasks), waited)
        start = 0
        for task in tasks:
            task.finish(result=output[start:start + task.size])
            start += task.size

    def enqueued(self) -> int:
        """Requests waiting in batch queues (not yet taken by a worker)."""
        with self._cond:
            return sum(len(b.tasks) for q in self._queues.values() for b in q.batches)

    def stop(self) -> None:
        """Stop the workers; requests still queued are answered UNAVAILABLE."""
        with self._cond:
            self._stopping = True
            stranded = [t for q in self._queues.values() for b in q.batches for t in b.tasks]
            self._queues.clear()
            self._cond.notify_all()
        for task in stranded:
            task.finish(error=ServingRequestError("the server is shutting down", "UNAVAILABLE"))
        for thread in self._threads:
            thread.join(timeout=5)
