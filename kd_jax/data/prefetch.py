"""Moving host batches onto the device mesh ahead of the train step."""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterable, Iterator

import jax

_POLL_SECONDS = 0.1


def to_global_array(batch: Any, sharding: jax.sharding.NamedSharding) -> Any:
    """Turns each host-local leaf (b, ...) into a global jax.Array (b * hosts, ...).

    The sharding's partition spec should split the leading (batch) axis, e.g. P('data').
    """
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch_to_mesh(iterator: Iterable[Any], sharding: jax.sharding.NamedSharding,
                     size: int = 2) -> Iterator[Any]:
    """Yields the batches of `iterator` as global arrays sharded by `sharding`.

    A background thread runs the host pipeline (numpy augmentation, tf.data) and the
    host-to-device copies, keeping up to `size` device batches queued, so that both overlap
    the train step. Exceptions in the thread are re-raised in the consumer; closing the
    iterator (or dropping it) stops the thread.
    """
    if size < 1:
        raise ValueError(f"prefetch size={size} must be >= 1")
    buffer: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def put(item) -> bool:
        """Blocks until there is room; False if the consumer has gone away."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in iterator:
                if not put(("batch", to_global_array(batch, sharding))):
                    return
            put(("end", None))
        except BaseException as error:  # noqa: BLE001 -- handed to the consumer thread
            put(("error", error))

    thread = threading.Thread(target=produce, name="prefetch_to_mesh", daemon=True)
    thread.start()
    return _Prefetcher(buffer, stop, thread)


class _Prefetcher:
    """The consumer side: an iterator whose close() (or garbage collection) stops the producer,
    even if it was never advanced (a generator's `finally` would not run in that case)."""

    def __init__(self, buffer: queue.Queue, stop: threading.Event, thread: threading.Thread):
        self._buffer, self._stop, self._thread = buffer, stop, thread
        self._done = False

    def __iter__(self) -> "_Prefetcher":
        return self

    @property
    def thread(self) -> threading.Thread:
        """The producer thread (ends soon after close(); join it to wait for that)."""
        return self._thread

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        kind, value = self._buffer.get()
        if kind == "batch":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self._done = True
        self._stop.set()
        self._thread.join(timeout=1.0)

    def __del__(self) -> None:
        self._stop.set()
