"""Device work on its own thread, handed to a Gradio streaming handler in batches.

Why a thread: Gradio runs each step of a synchronous generator handler on whichever worker thread
is free, but the engine's stream must be consumed on one thread (torch's inference mode is per
thread, and the stream holds the session's device lock). A `DeviceJob` consumes the stream on a
thread of its own and passes the items over a queue; the handler takes everything that arrived
since its last update (at most one update per `min_interval_s`, and never more than one per item,
so a timeline updates once per round at most). If the handler goes away (the browser closed),
the job still finishes or stops within one round and releases the device.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Generic, Iterator, TypeVar

from easyspec.core.engine.records import RoundRecord

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class DeviceJob(Generic[T]):
    """Runs `produce(stop)` on a daemon thread; `batches()` yields lists of its items."""

    def __init__(self, produce: Callable[[threading.Event], Iterator[T]], stop: threading.Event,
                 name: str = "easyspec-device-job"):
        self.stop_event = stop
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(produce,), name=name, daemon=True)
        self._thread.start()

    def _run(self, produce) -> None:
        try:
            for item in produce(self.stop_event):
                self._queue.put(item)
        except BaseException as exc:  # handed to the handler, which shows a message
            self._queue.put(_Failure(exc))
        finally:
            self._queue.put(_DONE)

    def stop(self) -> None:
        self.stop_event.set()

    def batches(self, min_interval_s: float = 0.15, poll_s: float = 0.25) -> Iterator[list[T]]:
        """Everything that arrived since the last batch; ends when the job ends (re-raising its error)."""
        last = 0.0
        try:
            while True:
                batch: list[T] = []
                done = False
                try:
                    item = self._queue.get(timeout=poll_s)
                except queue.Empty:
                    continue
                while True:
                    if item is _DONE:
                        done = True
                        break
                    if isinstance(item, _Failure):
                        raise item.exc
                    batch.append(item)
                    wait = min_interval_s - (time.monotonic() - last)
                    try:
                        item = self._queue.get(timeout=max(wait, 0.0)) if wait > 0 else self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    last = time.monotonic()
                    yield batch
                if done:
                    return
        finally:
            self.stop()  # the handler is done or gone: the job stops after its current round

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def on_thread(fn: Callable[[], T], name: str = "easyspec-device-call") -> T:
    """Call `fn` on a fresh thread and return its result (or raise its error).

    Device work in the dashboard always runs off the main thread: besides the reasons above, with
    gradio imported, torch CPU kernels called from the main thread ran about 50x slower on our
    2-core machines than the same calls from any other thread (seen with torch 2.13, gradio 6.31).
    """
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def record_stream(session, plan) -> Callable[[threading.Event], Iterator[RoundRecord]]:
    """A producer of the records of one generation of `plan` (Session.plan) that ends after the current
    round once `stop` is set."""

    def produce(stop: threading.Event) -> Iterator[RoundRecord]:
        stream = session.generate(plan)
        try:
            for rec in stream:
                yield rec
                if stop.is_set():
                    return
        finally:
            stream.close()  # releases the device lock at once, on this thread

    return produce
