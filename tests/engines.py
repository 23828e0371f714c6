"""Test image engines: real :class:`ImageEngine` subclasses that wrap the offline engine and misbehave
on cue, so generation's failure handling is exercised through the same port production uses.

Markers in the final prompt (an item's custom prompt ends up in it) choose the behaviour:

* ``FAIL``     -> :class:`EnginePermanentError` (refunded, not retried)
* ``BLOCK``    -> :class:`ContentBlocked` (a safety block; refunded, not retried)
* ``DOWN``     -> :class:`EngineRetryableError` on every call (the queue retries until it gives up)
* ``FLAKY:n``  -> :class:`EngineRetryableError` for the first ``n`` calls with that prompt, then success
* ``CRASH``    -> (:class:`CrashingEngine` only) a plain ``RuntimeError`` once, on the second call with
  that prompt: the first variant is stored, then the worker "dies" mid-item.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

from shared.engines.base import (
    ContentBlocked,
    EngineImage,
    EnginePermanentError,
    EngineRetryableError,
    ImageEngine,
    ImageRequest,
    TextRequest,
)
from shared.engines.offline import OfflineEngine

_FLAKY = re.compile(r"FLAKY:(\d+)")


class ScriptedEngine(ImageEngine):
    """The offline engine, plus scripted failures; records every request it receives."""

    name: ClassVar[str] = "scripted"

    def __init__(self, before: Callable[[ImageRequest], None] | None = None) -> None:
        self.inner = OfflineEngine()
        self.requests: list[ImageRequest] = []
        self.before = before
        self.healthy = False  # True: the markers are ignored (the model "works again")
        self._calls: Counter[str] = Counter()

    def calls_with(self, marker: str) -> list[ImageRequest]:
        return [r for r in self.requests if marker in r.prompt]

    def generate(self, request: ImageRequest) -> EngineImage:
        self.requests.append(request)
        self._calls[request.prompt] += 1
        if self.before is not None:
            self.before(request)
        prompt = request.prompt
        if self.healthy:
            return self.inner.generate(request)
        if "BLOCK" in prompt:
            raise ContentBlocked("scripted: the safety filter blocked this request")
        if "FAIL" in prompt:
            raise EnginePermanentError("scripted: the model answered without an image")
        if "DOWN" in prompt:
            raise EngineRetryableError("scripted: the engine is down", retry_after=0)
        flaky = _FLAKY.search(prompt)
        if flaky and self._calls[prompt] <= int(flaky.group(1)):
            raise EngineRetryableError(f"scripted: busy (call {self._calls[prompt]})", retry_after=0)
        return self.inner.generate(request)

    def complete_text(self, request: TextRequest) -> str:
        return self.inner.complete_text(request)


class WorkerCrash(RuntimeError):
    """Not an engine error: the service cannot translate it, so the request fails with a 500."""


class CrashingEngine(ScriptedEngine):
    """Raises a non-engine exception once, on the second call for a ``CRASH`` prompt."""

    name: ClassVar[str] = "crashing"

    def __init__(self) -> None:
        super().__init__()
        self.crashed = 0

    def generate(self, request: ImageRequest) -> EngineImage:
        if "CRASH" in request.prompt and self._calls[request.prompt] == 1 and not self.crashed:
            self._calls[request.prompt] += 1
            self.requests.append(request)
            self.crashed += 1
            raise WorkerCrash("the worker died mid-item")
        return super().generate(request)


class AlwaysCrashingEngine(ScriptedEngine):
    """Every call for a ``CRASH`` prompt dies with a non-engine error (a bug, an OOM-like failure)."""

    name: ClassVar[str] = "always-crashing"

    def generate(self, request: ImageRequest) -> EngineImage:
        if "CRASH" in request.prompt:
            self.requests.append(request)
            raise WorkerCrash("the worker dies every time")
        return super().generate(request)
