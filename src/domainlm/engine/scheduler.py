"""Groups concurrent requests (for any experts) into batches.

Callers `submit` a Request and get a Future; one worker thread waits up to `max_wait`
seconds after the first request for others to arrive, then runs up to `max_batch` of them
in one `Generator.run` (mixed experts share the forward passes). What a server needs so
that N users of N experts cost about one batched generation instead of N.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from domainlm.engine.generation import Completion, Generator, Request


class Scheduler:
    def __init__(self, generator: Generator, max_batch: int = 16, max_wait: float = 0.01):
        self.generator = generator
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.batches_run = 0
        self._queue: queue.Queue[tuple[Request, Future[Completion]] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, daemon=True, name="scheduler")
        self._worker.start()

    def submit(self, request: Request) -> Future[Completion]:
        future: Future[Completion] = Future()
        self._queue.put((request, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            closing = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=self.max_wait)
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                batch.append(item)
            self._run(batch)
            if closing:
                return

    def _run(self, batch: list[tuple[Request, Future[Completion]]]) -> None:
        self.batches_run += 1
        try:
            completions = self.generator.run([request for request, _ in batch])
        except Exception as exc:  # every waiting caller gets the failure, the worker lives on
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), completion in zip(batch, completions, strict=True):
            future.set_result(completion)
