"""Ableton Link, a tempo source (`tempo.source: link`): the session's tempo, beat and phase (for `tempo.quantum`)
and its number of peers go into the engine's beat clock; a tempo set here (tempo.bpm from OSC, MIDI, Python or
tap) becomes the session's, so dreamwire can lead as well as follow.

aalink is asyncio: it runs in its own event loop on its own supervised thread ("dreamwire-link"), which polls the
session `POLL_HZ` times a second (Link keeps its own time; between polls the beat clock runs on at the tempo).

A known pitfall (aalink issue #7): enabling Link right after creating it sometimes pushes our initial tempo onto
an existing session instead of adopting the session's. Link is therefore enabled `ENABLE_DELAY_S` after it is
created (0.2 s was reported not to be enough, 0.5 s was; we take 1 s of margin, on the Link thread), and our
tempo is only ever proposed when someone here sets one, never at start: joining a session adopts its tempo.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

from engine.core.errors import DreamwireError
from engine.core.supervisor import SupervisedThread, spawn
from engine.live.beat_clock import BeatClock

log = logging.getLogger(__name__)

ENABLE_DELAY_S = 1.0
POLL_HZ = 100.0


def link_factory() -> Callable[[float], Any]:
    """aalink.Link; one DreamwireError line when it is not installed."""
    try:
        import aalink
    except ImportError as error:
        raise DreamwireError(f"tempo.source link needs aalink (pip install 'dreamwire[link]'): {error}") from None
    return aalink.Link


class LinkSource:
    def __init__(
        self,
        clock: BeatClock,
        factory: Callable[[float], Any] | None = None,
        enable_delay_s: float = ENABLE_DELAY_S,
        poll_hz: float = POLL_HZ,
    ) -> None:
        self.clock = clock
        self.factory = factory or link_factory()
        self.enable_delay_s, self.poll_hz = enable_delay_s, poll_hz
        self.enabled = threading.Event()  # set once Link is enabled (tests wait on it)
        self._proposed: float | None = None  # a tempo set here, for the session (one float: written whole)
        self._thread: SupervisedThread | None = None

    def start(self) -> LinkSource:
        self.clock.add_bpm_listener(self.propose)
        self._thread = spawn("dreamwire-link", self._run)
        return self

    def close(self) -> None:
        self.clock.remove_bpm_listener(self.propose)
        if self._thread is not None:
            self._thread.stop()
            self._thread = None
        self.clock.peers = 0

    def propose(self, bpm: float) -> None:
        """A tempo set here (the clock's listener, any thread): the session's on the next poll."""
        self._proposed = bpm

    def _run(self, stop: threading.Event) -> None:
        asyncio.run(self._session(stop))

    async def _session(self, stop: threading.Event) -> None:
        link = self.factory(self.clock.bpm)
        link.quantum = self.clock.quantum
        await asyncio.sleep(self.enable_delay_s)  # the pitfall above: not enabled at once
        link.enabled = True
        self.enabled.set()
        log.info("Ableton Link enabled (quantum %d)", self.clock.quantum)
        peers = -1
        try:
            while not stop.is_set():
                self.poll(link)
                if link.num_peers != peers:
                    peers = link.num_peers
                    log.info("Ableton Link: %d peer%s", peers, "" if peers == 1 else "s")
                await asyncio.sleep(1.0 / self.poll_hz)
        finally:
            link.enabled = False
            self.enabled.clear()

    def poll(self, link: Any) -> None:
        """One look at the session: our proposal first (so it is not overwritten), then the session's state."""
        proposed, self._proposed = self._proposed, None
        if proposed is not None:
            link.tempo = proposed
        if link.quantum != self.clock.quantum:
            link.quantum = self.clock.quantum
        self.clock.follow(bpm=float(link.tempo), beat=float(link.beat))
        self.clock.peers = int(link.num_peers)
