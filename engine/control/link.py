"""Ableton Link, a tempo source (`tempo.source: link`): the session's tempo, beat and phase (for `tempo.quantum`)
and its number of peers go into the engine's beat clock; a tempo set here (tempo.bpm from OSC, MIDI, Python or
tap) becomes the session's, so dreamwire can lead as well as follow.

aalink is asyncio: it runs in its own event loop on its own supervised thread ("dreamwire-link"), which polls the
session `POLL_HZ` times a second (Link keeps its own time; between polls the beat clock runs on at the tempo).

A known pitfall (aalink issue #7, artfwo/aalink): enabling Link right after creating it sometimes (about one try in
ten) pushes the tempo given to the constructor onto an existing session instead of adopting the session's. The
workaround from that thread: a delay between creating Link and enabling it (0.2 s was reported not to be enough,
0.5 s was); we wait ENABLE_DELAY_S = 1 s, on the Link thread. Then, as Link's test plan asks (TEMPO-2: joining must
not change a running session's tempo; TEMPO-5: enabling Link alone must not change ours), the first JOIN_S after
enabling only count peers: nothing is proposed and the clock keeps its own tempo. The join is settled when a peer
shows up (the session's tempo is adopted, and a tempo set here meanwhile is dropped, with one log line) or when
JOIN_S passes alone (a tempo set here meanwhile becomes the session's). After that, a tempo set here leads.
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

ENABLE_DELAY_S = 1.0  # s between creating Link and enabling it (aalink #7: 0.5 s was enough, 0.2 s was not)
JOIN_S = 1.0  # s after enabling to find the session's peers before our own tempo may lead
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
        join_s: float = JOIN_S,
    ) -> None:
        self.clock = clock
        self.factory = factory or link_factory()
        self.enable_delay_s, self.poll_hz, self.join_s = enable_delay_s, poll_hz, join_s
        self.enabled = threading.Event()  # set once Link is enabled (tests wait on it)
        self.joined = threading.Event()  # set once the join is settled: the session's tempo adopted, or ours
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
        loop = asyncio.get_running_loop()
        join_until = loop.time() + self.join_s
        peers = -1
        try:
            while not stop.is_set():
                if not self.joined.is_set():
                    self.clock.peers = int(link.num_peers)
                    if self.clock.peers > 0 or loop.time() >= join_until:
                        self.settle(link)
                if self.joined.is_set():
                    self.poll(link)
                if link.num_peers != peers:
                    peers = link.num_peers
                    log.info("Ableton Link: %d peer%s", peers, "" if peers == 1 else "s")
                await asyncio.sleep(1.0 / self.poll_hz)
        finally:
            link.enabled = False
            self.enabled.clear()
            self.joined.clear()

    def settle(self, link: Any) -> None:
        """The end of the join (see the module docstring): with peers, a tempo set here meanwhile is dropped."""
        proposed = self._proposed
        if link.num_peers > 0 and proposed is not None:
            self._proposed = None
            log.info(
                "Ableton Link: joined a session of %d peer(s) at %.2f bpm; the tempo set here before (%.2f) is "
                "not proposed (joining never changes a running session's tempo)",
                link.num_peers,
                float(link.tempo),
                proposed,
            )
        self.joined.set()

    def poll(self, link: Any) -> None:
        """One look at the session: our proposal first (so it is not overwritten), then the session's state."""
        proposed, self._proposed = self._proposed, None
        if proposed is not None:
            link.tempo = proposed
        if link.quantum != self.clock.quantum:
            link.quantum = self.clock.quantum
        self.clock.follow(bpm=float(link.tempo), beat=float(link.beat))
        self.clock.peers = int(link.num_peers)
