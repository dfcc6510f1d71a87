"""Off-thread text encoding with an LRU cache, so a prompt change never stalls the engine thread.

request() (any thread) queues texts; a worker (supervised, at the lowest OS priority) encodes them; the engine thread
collects finished results with poll() between step() calls. encode_now() is the synchronous path for prepare time.

Ordering: one worker serves requests first in, first out, so results arrive in request order. A request whose
texts are all cached still goes through the worker (it completes without calling encode_fn, within microseconds
unless the worker is busy encoding) — this keeps results for one key in order. A request that is still queued when
a newer one with the same key arrives is superseded: it is skipped and yields no result. request() returns the
request's number, and its result carries it (`seq`), so a caller can tell a result for an older request from the
newest one.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import NamedTuple

import torch

from engine.core.supervisor import spawn
from engine.live.threads import limit_torch_threads, lower_thread_priority

__all__ = ["EncodeFailure", "EncodeResult", "PromptEncoder"]

logger = logging.getLogger(__name__)


class EncodeResult(NamedTuple):
    """A finished request: the embeddings (each as encode_fn returns it, e.g. [1, 77, D]) in the order of texts.

    The tensors are shared with the cache: treat them as read-only.
    """

    key: Hashable
    embeddings: tuple[torch.Tensor, ...]
    seq: int = 0  # the number request() returned for this request


class EncodeFailure(NamedTuple):
    """A failed request: the text that failed and a one-line reason (the exception type and message)."""

    key: Hashable
    text: str
    message: str
    seq: int = 0  # the number request() returned for this request


class _Request(NamedTuple):
    key: Hashable
    texts: tuple[str, ...]
    seq: int


class PromptEncoder:
    """Encodes texts with encode_fn on a worker thread; each distinct text is encoded once while it stays cached.

    encode_fn(text) -> tensor (e.g. [1, 77, D]) is never called from two threads at once. Its exceptions become
    EncodeFailure results (not cached, so a later request retries); the first is logged with its traceback, later
    ones as one-line warnings. hits / misses count texts served from the cache / passed to encode_fn.
    """

    def __init__(
        self, encode_fn: Callable[[str], torch.Tensor], cache_size: int = 32, name: str = "dreamwire-prompt-encoder"
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be an int >= 1, got {cache_size!r}")
        self._encode_fn = encode_fn
        self._cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # text -> embedding, most recent last
        self._cache_lock = threading.Lock()
        self._encode_lock = threading.Lock()  # serialises encode_fn between the worker and encode_now()
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()  # None wakes the worker to stop
        self._results: queue.SimpleQueue[EncodeResult | EncodeFailure] = queue.SimpleQueue()
        self._latest: dict[Hashable, int] = {}  # key -> seq of its newest request (guarded by _cache_lock)
        self._seq = 0
        self._hits = 0
        self._misses = 0
        self._failures_logged = 0
        self._closed = threading.Event()
        self._worker = spawn(name, self._run)  # supervised: a death is logged, counted and the worker restarted

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses

    def request(self, key: Hashable, texts: tuple[str, ...]) -> int:
        """Queue texts for encoding under `key`; returns at once with the request's number. poll() later yields an
        EncodeResult for `key` with that number as `seq` (or an EncodeFailure). Supersedes any still-queued request
        with the same key."""
        if not isinstance(texts, tuple) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a tuple of str, got {texts!r}")
        if self._closed.is_set():
            raise RuntimeError(f"PromptEncoder is closed; cannot request {key!r}")
        with self._cache_lock:
            self._seq += 1
            self._latest[key] = self._seq
            req = _Request(key, texts, self._seq)
        self._requests.put(req)
        return req.seq

    def poll(self) -> list[EncodeResult | EncodeFailure]:
        """Finished results since the last poll, oldest first; never blocks."""
        out: list[EncodeResult | EncodeFailure] = []
        while True:
            try:
                out.append(self._results.get_nowait())
            except queue.Empty:
                return out

    def encode_now(self, text: str) -> torch.Tensor:
        """Encode synchronously on the calling thread (through the cache); encode_fn's exceptions propagate."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {text!r}")
        return self._encode(text)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker (queued requests are dropped) and join it; idempotent."""
        self._closed.set()
        self._requests.put(None)
        if not self._worker.stop(timeout):
            logger.warning("prompt encoder worker still busy in encode_fn after %.1f s; leaving it (daemon)", timeout)

    def __enter__(self) -> PromptEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, stop: threading.Event) -> None:
        # One intra-op thread for this thread alone: a second full team would spin-wait on the engine's cores after
        # each encode and slow the frames around a prompt change. The lowest OS priority: on a busy machine the
        # encoder takes what the engine's threads leave idle, never a core a frame is waiting for.
        limit_torch_threads(1)
        lower_thread_priority()
        while not stop.is_set():
            req = self._requests.get()
            if req is None or self._closed.is_set():
                return
            with self._cache_lock:
                stale = self._latest.get(req.key) != req.seq
                if not stale:
                    del self._latest[req.key]  # keep the dict to keys with something queued
            if stale:
                continue
            self._results.put(self._serve(req))

    def _serve(self, req: _Request) -> EncodeResult | EncodeFailure:
        embeddings: list[torch.Tensor] = []
        for text in req.texts:
            try:
                embeddings.append(self._encode(text))
            except Exception as exc:  # encode_fn is user code: report it to the engine and keep the worker alive
                message = f"{type(exc).__name__}: {exc}"
                if self._failures_logged == 0:
                    logger.exception("prompt encoding failed for %r (key %r)", text, req.key)
                else:
                    logger.warning("prompt encoding failed for %r (key %r): %s", text, req.key, message)
                self._failures_logged += 1
                return EncodeFailure(req.key, text, message, req.seq)
        return EncodeResult(req.key, tuple(embeddings), req.seq)

    def _encode(self, text: str) -> torch.Tensor:
        cached = self._lookup(text)
        if cached is not None:
            return cached
        with self._encode_lock:
            cached = self._lookup(text)  # another thread may have encoded it while we waited
            if cached is not None:
                return cached
            with self._cache_lock:
                self._misses += 1
            emb = self._encode_fn(text)
            if not isinstance(emb, torch.Tensor):
                raise TypeError(f"encode_fn returned {type(emb).__name__} for {text!r}, expected torch.Tensor")
            with self._cache_lock:
                self._cache[text] = emb
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return emb

    def _lookup(self, text: str) -> torch.Tensor | None:
        with self._cache_lock:
            emb = self._cache.get(text)
            if emb is not None:
                self._cache.move_to_end(text)
                self._hits += 1
            return emb
