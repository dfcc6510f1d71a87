"""Ableton Link as a tempo source (issue 19): the session's tempo, beat and peers reach the engine's beat clock,
and a tempo set here becomes the session's. Two aalink.Link instances on loopback in this process (ours on its
supervised thread, the "other app" on a test thread); where Link's discovery cannot run, that test is skipped
with the reason and a fake-driven test covers the same code."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from engine.control.link import LinkSource
from engine.core.supervisor import SupervisedThread
from engine.live.beat_clock import BeatClock


class FakeLink:
    """What LinkSource uses of aalink.Link, set by hand: another app's session."""

    def __init__(self, bpm: float) -> None:
        self.tempo, self.beat, self.num_peers, self.quantum, self.enabled = bpm, 0.0, 0, 1.0, False
        self.created = time.perf_counter()
        self.enabled_after: float | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "enabled" and value and hasattr(self, "created"):
            object.__setattr__(self, "enabled_after", time.perf_counter() - self.created)
        object.__setattr__(self, name, value)


def test_the_session_drives_the_clock_and_a_tempo_set_here_leads_the_session_fake_link():
    clock = BeatClock(120.0, 4)
    links: list[FakeLink] = []
    source = LinkSource(clock, factory=lambda bpm: links.append(FakeLink(bpm)) or links[-1], enable_delay_s=0.05)
    source.start()
    try:
        assert source.enabled.wait(5)
        link = links[0]
        assert link.enabled_after is not None and link.enabled_after >= 0.05  # the pitfall: not enabled at once
        assert link.quantum == 4
        link.tempo, link.beat, link.num_peers = 97.0, 33.0, 2  # the session, as another app set it
        wait_for(lambda: clock.bpm == 97.0 and clock.peers == 2)
        assert 33.0 <= clock.beat_at() < 34.0
        clock.set_bpm(141.0)  # tempo.bpm applied here: we lead
        wait_for(lambda: link.tempo == 141.0)
        assert clock.bpm == 141.0
        clock.quantum = 3
        wait_for(lambda: link.quantum == 3)
        assert isinstance(source._thread, SupervisedThread)
    finally:
        source.close()
    assert not link.enabled and clock.peers == 0


class Session:
    """Another app's running Link session: its tempo and how many peers a joining app finds."""

    def __init__(self, bpm: float, peers: int) -> None:
        self.tempo, self.peers = bpm, peers


class JoiningLink:
    """What LinkSource uses of aalink.Link, joining `session`, with aalink issue #7's pitfall: enabled less than
    PITFALL_S after it was created, it pushes its constructor's tempo onto the session (0.2 s was reported to do
    that, 0.5 s not to)."""

    PITFALL_S = 0.5

    def __init__(self, bpm: float, session: Session) -> None:
        self.session, self._own, self._enabled = session, bpm, False
        self.created = time.perf_counter()
        self.quantum, self.beat, self.pushed = 1.0, 0.0, False

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        if value and not self._enabled and time.perf_counter() - self.created < self.PITFALL_S:
            self.session.tempo, self.pushed = self._own, True
        self._enabled = value

    @property
    def num_peers(self) -> int:
        return self.session.peers if self._enabled else 0

    @property
    def tempo(self) -> float:
        return self.session.tempo if self._enabled else self._own

    @tempo.setter
    def tempo(self, bpm: float) -> None:
        if self._enabled:
            self.session.tempo = bpm
        else:
            self._own = bpm


def join(session: Session, clock: BeatClock, **timing: float) -> tuple[LinkSource, list[JoiningLink]]:
    links: list[JoiningLink] = []
    source = LinkSource(clock, factory=lambda bpm: links.append(JoiningLink(bpm, session)) or links[-1], **timing)
    return source.start(), links


def test_joining_a_running_session_adopts_its_tempo_and_never_pushes_ours_fake_link():
    session, clock = Session(97.0, peers=1), BeatClock(120.0, 4)
    source, links = join(session, clock)  # the default delay before enabling (aalink #7's workaround)
    try:
        clock.set_bpm(150.0)  # a tempo set here before the join: not for a running session
        assert source.joined.wait(10)
        assert links[0].enabled and not links[0].pushed  # enabled late enough: the pitfall did not strike
        wait_for(lambda: clock.bpm == 97.0 and clock.peers == 1)
        assert session.tempo == 97.0  # the session's tempo is kept: neither our start tempo nor the 150
        clock.set_bpm(141.0)  # after the join, a tempo set here leads
        wait_for(lambda: session.tempo == 141.0)
    finally:
        source.close()
    early, links = join(Session(97.0, peers=1), BeatClock(120.0, 4), enable_delay_s=0.0, join_s=0.05)
    try:  # the fake's pitfall is real: enabled at once, our 120 overwrote the session's 97
        assert early.joined.wait(10) and links[0].pushed and links[0].session.tempo == 120.0
    finally:
        early.close()


def test_alone_a_tempo_set_before_the_join_becomes_the_sessions_fake_link():
    session, clock = Session(120.0, peers=0), BeatClock(120.0, 4)
    source, links = join(session, clock, enable_delay_s=0.55, join_s=0.2)
    try:
        clock.set_bpm(150.0)
        assert source.joined.wait(10) and not links[0].pushed
        wait_for(lambda: session.tempo == 150.0)
        assert clock.bpm == 150.0 and clock.peers == 0
    finally:
        source.close()


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, "timed out"
        time.sleep(0.01)


class OtherApp:
    """A second aalink.Link in its own event loop on a thread: another app in the session."""

    def __init__(self, aalink: Any, bpm: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(aalink, bpm), name="test-other-link", daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self, aalink: Any, bpm: float) -> None:
        asyncio.set_event_loop(self.loop)

        async def make() -> None:
            self.link = aalink.Link(bpm)
            self.link.quantum = 4
            self.link.enabled = True
            self.ready.set()

        self.loop.run_until_complete(make())
        self.loop.run_forever()

    def call(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn(self.link)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def close(self) -> None:
        self.call(lambda link: setattr(link, "enabled", False))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_two_link_instances_on_loopback_see_each_other_and_a_session_tempo_reaches_the_engine(engine):
    try:
        import aalink
    except ImportError as error:
        print(f"skipped: aalink is not installed here: {error}")
        pytest.skip(f"aalink is not installed here ({error}); the fake-driven test covers the same code")
    other = OtherApp(aalink, 100.0)
    time.sleep(0.3)  # the other app's session was there first, as when dreamwire joins a running set
    live = engine()  # tiny model; tempo.source is read by `dreamwire run`, which starts the same LinkSource
    tempo = live.tempo
    source = LinkSource(tempo.clock).start()
    try:
        deadline = time.perf_counter() + 8
        while tempo.clock.peers < 1 or other.call(lambda link: link.num_peers) < 1:
            if time.perf_counter() > deadline:
                reason = "Link discovery (UDP multicast 224.76.78.75:20808) found no peer on loopback within 8 s"
                print(f"skipped: {reason}")
                pytest.skip(f"{reason}; the fake-driven test covers the same code")
            time.sleep(0.05)
        wait_for(lambda: abs(tempo.clock.bpm - 100.0) < 0.01)  # joining adopts the session's tempo, not ours
        other.call(lambda link: setattr(link, "tempo", 133.0))  # the other app changes it
        wait_for(lambda: abs(live.status()["bpm"] - 133.0) < 0.01)
        assert live.status()["peers"] == 1
        beat = other.call(lambda link: link.beat)
        assert abs(live.status()["beat"] - beat) < 0.25  # the same beat, to within the polls
        live.set("tempo.bpm", 90.0)  # as /tempo/bpm from OSC or a MIDI fader would: we lead
        live.apply_pending_controls()
        wait_for(lambda: abs(other.call(lambda link: link.tempo) - 90.0) < 0.01)
    finally:
        source.close()
        other.close()
