"""Adaptive micro-batching: concurrent callers share one backend call.

The first item goes out at once; items that arrive while `max_in_flight` batches are already
running wait and leave together in the next batch, so batches grow with load and an idle
system adds no delay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class AdaptiveBatcher(Generic[Item, Result]):
    def __init__(
        self, run_batch: Callable[[list[Item]], Awaitable[list[Result]]], *, max_batch: int = 512, max_in_flight: int = 2
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._waiting: list[tuple[Item, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            await self._slots.acquire()
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
            if not batch:
                self._slots.release()
                return
            asyncio.create_task(self._run(batch))

    async def _run(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
        except Exception as error:  # noqa: BLE001 - every caller of the batch gets the error
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                # A batch call may refuse single items by returning their exception in place.
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._slots.release()
