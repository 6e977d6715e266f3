"""Running the (blocking, torch) engine off the event loop.

``HomerModel.stream`` holds the model's RLock from the first delta until the stream ends, and an
RLock must be released by the thread that took it: so a stream is consumed start to finish by ONE
dedicated thread, which hands the deltas to the loop through an ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Yield the items of ``make_iterator()`` while a worker thread produces them.

    The iterator is created, consumed and closed in the worker (with the caller's contextvars, so
    LlamaIndex's instrumentation spans stay attached). An exception in the worker is re-raised
    here; if the consumer stops early, the worker closes the iterator after its next item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def post(item: object, error: BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, error))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def work() -> None:
        try:
            iterator = make_iterator()
            try:
                for item in iterator:
                    post(item, None)
                    if stop.is_set():
                        break
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
        except BaseException as err:  # handed to the consumer, re-raised there
            post(_DONE, err)
            return
        post(_DONE, None)

    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(work,), name="homer-llm-stream", daemon=True)
    thread.start()
    try:
        while True:
            item, error = await queue.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
