"""The one way blocking work hands items to the event loop: a bounded `Bridge`, and `on_thread` to run a producer.

Decoding a file, PortAudio's callbacks and `VideoCapture.read` all block, so they live on their own
threads; the pipeline lives on the event loop. Every source crosses that line through a `Bridge`,
so they all share one set of guarantees:

- **Bounded.** Items wait in the bridge, not in the loop's callback queue, so even a loop that is
  blocked (a stalled terminal, a slow disk) holds at most `maxsize` of them.
- **One policy when full**, chosen per source: "wait" (a file: the decoder waits for the consumer,
  nothing is lost) or "drop_oldest" (a live device cannot wait, and recent input matters more than
  old: the oldest item goes, counted in `dropped` and `dropped_weight`).
- **Nothing outlives the iteration.** The consumer's `close()` wakes a producer waiting for room and
  tells it to stop (`put` returns False, `stopped` is set); `on_thread` then waits for the thread.
- **Errors travel.** A producer that fails hands its exception to `finish`, and the consumer gets it
  after the items that came before it.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import closing
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

WhenFull = Literal["wait", "drop_oldest"]


class Bridge(Generic[T]):
    """A bounded hand-off from other threads to the event loop; an async iterator of what was put.

    Producers call `put` (any thread but the loop's when the policy is "wait": it blocks) and
    `finish` once. The consumer iterates on the loop and calls `close` when it stops reading.
    Create it on the loop it will be read on.
    """

    def __init__(self, maxsize: int, when_full: WhenFull, weight: Callable[[T], float] = lambda item: 1.0) -> None:
        """`weight(item)` is what a dropped item adds to `dropped_weight`, e.g. its seconds of audio."""
        if maxsize < 1:
            raise ValueError(f"maxsize must be positive, got {maxsize}")
        if when_full not in ("wait", "drop_oldest"):
            raise ValueError(f"when_full must be 'wait' or 'drop_oldest', got {when_full!r}")
        self.maxsize = maxsize
        self.when_full = when_full
        self.dropped = 0                 # items dropped because the consumer fell behind
        self.dropped_weight = 0.0        # their summed `weight`
        self.stopped = threading.Event()  # set by `close`: producers should stop
        self._weight = weight
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # a waiting `put` sleeps on it
        self._finished = False
        self._error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._wake_pending = False  # one wake-up in the loop's queue at a time, however many puts

    # -- producer side (any thread) --

    def put(self, item: T) -> bool:
        """Hand over `item`; False once the consumer has closed the bridge (the producer should stop)."""
        with self._lock:
            if self.when_full == "wait":
                while len(self._items) >= self.maxsize and not self.stopped.is_set():
                    self._room.wait()
            if self.stopped.is_set():
                return False
            if len(self._items) >= self.maxsize:  # "drop_oldest" ("wait" has waited for room)
                self.dropped += 1
                self.dropped_weight += self._weight(self._items.popleft())
            self._items.append(item)
        self._wake()
        return True

    def finish(self, error: BaseException | None = None) -> None:
        """No more items; the consumer re-raises `error`, if given, once it has taken the items before it."""
        with self._lock:
            self._finished, self._error = True, error
        self._wake()

    # -- consumer side (the loop) --

    def close(self) -> None:
        """The consumer stops reading: drop what waits, wake and stop the producer. Idempotent."""
        with self._lock:
            self.stopped.set()
            self._items.clear()
            self._room.notify_all()
        self._wake()

    def qsize(self) -> int:
        return len(self._items)

    def __aiter__(self) -> Bridge[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            with self._lock:
                if self._items:
                    self._room.notify()  # a "wait" producer may go on
                    return self._items.popleft()
                if self.stopped.is_set():
                    raise StopAsyncIteration
                if self._finished:
                    error, self._error = self._error, None  # raised once; afterwards the bridge is just ended
                    if error is not None:
                        raise error
                    raise StopAsyncIteration
                self._ready.clear()  # under the lock: a put after this schedules a wake-up that sets it
            await self._ready.wait()

    # -- waking the loop --

    def _wake(self) -> None:
        """Have the loop set `_ready` soon (thread-safe; at most one wake-up queued at a time)."""
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._on_wake)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            with self._lock:
                self.stopped.set()
                self._room.notify_all()

    def _on_wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._ready.set()


async def on_thread(produce: Callable[[threading.Event], Generator[T, None, None]], bridge: Bridge[T], name: str) -> AsyncIterator[T]:
    """The items of a blocking generator, run on its own thread called `name`, handed over through `bridge`.

    `produce(stop)` should check `stop` wherever it may block or loop without yielding. Closing or
    cancelling this iteration closes the bridge (which sets `stop`) and waits for the thread, so the
    producer's `finally` blocks (releasing a file or device) have run by the time it returns.
    """

    def run() -> None:
        try:
            with closing(produce(bridge.stopped)) as items:
                for item in items:
                    if not bridge.put(item):
                        return
            bridge.finish()
        except BaseException as e:  # handed to the consumer, which re-raises it
            bridge.finish(e)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        async for item in bridge:
            yield item
    finally:
        bridge.close()
        await _wait_thread(thread)


async def _wait_thread(thread: threading.Thread) -> None:
    """Wait for a thread without blocking the loop (and without borrowing an executor thread)."""
    while thread.is_alive():
        await asyncio.sleep(0.005)
