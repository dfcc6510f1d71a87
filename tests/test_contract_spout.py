"""CONTRACT tests of the spout: bridge against a stand-in SpoutGL module that records every call.

They check what SpoutGL 0.1.1's documented API asks of a caller, which no Linux machine can run for real:
- every call, createOpenGL included, comes from one thread (the bridge's worker thread);
- sender: createOpenGL, setSenderName, then sendImage(buffer, width, height, GL_RGBA, invert, 0) per frame;
- receiver: receiveImage with no buffer until isUpdated(), then a buffer allocated at getSenderWidth/Height, in
  the sender's format (getSenderFormat 87 = BGRA); getSenderName (mis-bound in 0.1.1) is never called.
The real-device check is a manual step (README, "Manual checks").
"""

from __future__ import annotations

import importlib.machinery
import threading
import time
import types

import numpy as np
import pytest
from call_log import Calls

from bridges.base import BridgeUnavailable
from bridges.spout import DXGI_FORMAT_B8G8R8A8_UNORM, SpoutSink, SpoutSource
from bridges.uri import open_sink, open_source
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.instance import instance
from engine.core.slot import LatestFrameSlot
from engine.live.io_threads import SinkWorker, SourceWorker

GL_RGBA, GL_BGRA_EXT = 0x1908, 0x80E1
DXGI_RGBA = 28


class FakeSender:
    """What a Spout sender on the machine looks like to a receiver: size, format and the current image."""

    def __init__(self, image: np.ndarray, fmt: int) -> None:
        self.image, self.format, self.frame = image, fmt, 1


def make_spoutgl(calls: Calls, senders: dict[str, FakeSender]) -> types.ModuleType:
    enums = types.ModuleType("SpoutGL.enums")
    enums.GL_RGBA, enums.GL_BGRA_EXT = GL_RGBA, GL_BGRA_EXT

    class SpoutSender:
        def __init__(self) -> None:
            calls.add("SpoutSender")
            self.sent: list[np.ndarray] = []

        def createOpenGL(self) -> bool:
            calls.add("createOpenGL")
            return True

        def setSenderName(self, name: str) -> bool:
            calls.add("setSenderName", name)
            return True

        def sendImage(self, buffer, width, height, gl_format, invert, host_fbo) -> bool:
            calls.add("sendImage", width, height, gl_format, invert, host_fbo)
            view = memoryview(buffer)
            if not view.c_contiguous or view.nbytes < width * height * 4:  # what the binding refuses
                raise BufferError("Buffer not large enough / not contiguous")
            self.sent.append(np.frombuffer(view, np.uint8, width * height * 4).reshape(height, width, 4).copy())
            return True

        def setFrameSync(self, name: str) -> None:
            calls.add("setFrameSync", name)

        def releaseSender(self) -> None:
            calls.add("releaseSender")

        def closeOpenGL(self) -> bool:
            calls.add("closeOpenGL")
            return True

    class SpoutReceiver:
        def __init__(self) -> None:
            calls.add("SpoutReceiver")
            self.name = ""
            self.size: tuple[int, int, int] | None = None  # (width, height, format) the receiver knows
            self.updated = False
            self.seen_frame = 0

        def createOpenGL(self) -> bool:
            calls.add("createOpenGL")
            return True

        def setReceiverName(self, name: str) -> None:
            calls.add("setReceiverName", name)
            self.name = name

        def receiveImage(self, buffer, gl_format, invert, host_fbo) -> bool:
            calls.add("receiveImage", None if buffer is None else buffer.shape, gl_format, invert, host_fbo)
            sender = senders.get(self.name)
            if sender is None:
                self.size = None
                return False
            height, width = sender.image.shape[:2]
            if self.size != (width, height, sender.format) or buffer is None:
                if self.size != (width, height, sender.format):
                    self.size, self.updated = (width, height, sender.format), True
                return True  # connected or changed: nothing copied, the caller must look at isUpdated()
            if buffer.nbytes < width * height * 4:
                raise BufferError("Buffer not large enough")
            order = sender.image if gl_format == GL_RGBA else sender.image[:, :, [2, 1, 0, 3]]
            buffer[...] = order.reshape(buffer.shape)
            return True

        def isUpdated(self) -> bool:
            calls.add("isUpdated")
            updated, self.updated = self.updated, False
            return updated

        def isFrameNew(self) -> bool:
            calls.add("isFrameNew")
            sender = senders.get(self.name)
            new = sender is not None and sender.frame != self.seen_frame
            if new:
                self.seen_frame = sender.frame
            return new

        def getSenderWidth(self) -> int:
            calls.add("getSenderWidth")
            return self.size[0]

        def getSenderHeight(self) -> int:
            calls.add("getSenderHeight")
            return self.size[1]

        def getSenderFormat(self) -> int:
            calls.add("getSenderFormat")
            return self.size[2]

        def getSenderName(self) -> int:  # SpoutGL 0.1.1 binds this to GetSenderWidth
            calls.add("getSenderName")
            return self.size[0]

        def waitFrameSync(self, name: str, timeout: int) -> bool:
            calls.add("waitFrameSync", name, timeout)
            time.sleep(0.001)
            return True

        def releaseReceiver(self) -> None:
            calls.add("releaseReceiver")

        def closeOpenGL(self) -> bool:
            calls.add("closeOpenGL")
            return True

    module = types.ModuleType("SpoutGL")
    module.__spec__ = importlib.machinery.ModuleSpec("SpoutGL", None)
    module.SpoutSender, module.SpoutReceiver, module.enums = SpoutSender, SpoutReceiver, enums
    return module


@pytest.fixture
def spoutgl(monkeypatch):
    calls, senders = Calls(), {}
    module = make_spoutgl(calls, senders)
    monkeypatch.setitem(__import__("sys").modules, "SpoutGL", module)
    monkeypatch.setitem(__import__("sys").modules, "SpoutGL.enums", module.enums)
    return calls, senders


def _image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_contract_sender_call_sequence_all_on_the_worker_thread(spoutgl):
    calls, _ = spoutgl
    sink = SpoutSink("to-touchdesigner", invert=True)
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SinkWorker(sink, slot)
    images = [_image(4, 6, seed) for seed in range(3)]
    worker.start()
    for index, image in enumerate(images):
        slot.put(Frame(image, index, 0.0))
        deadline = time.perf_counter() + 5
        while worker.frames <= index and time.perf_counter() < deadline:
            time.sleep(0.005)
    worker.stop()
    assert worker.errors == 0 and worker.frames == 3
    names = calls.names()
    assert names[:3] == ["SpoutSender", "createOpenGL", "setSenderName"]
    assert names[3:-2] == ["sendImage", "setFrameSync"] * 3
    assert names[-2:] == ["releaseSender", "closeOpenGL"]
    assert calls.log[2][1] == ("to-touchdesigner",)
    assert calls.log[3][1] == (6, 4, GL_RGBA, True, 0)  # width, height, GL_RGBA, invert, host FBO
    assert len(calls.threads()) == 1 and threading.get_ident() not in calls.threads()


def test_contract_sender_sends_rgba_pixels(spoutgl):
    sink = SpoutSink("x")
    sink.open()
    image = _image(4, 6, 1)
    sink.write(Frame(image, 0, 0.0))
    sent = sink._sender.sent[0]
    sink.close()
    np.testing.assert_array_equal(sent[:, :, :3], image)
    assert (sent[:, :, 3] == 255).all()


def test_contract_a_call_from_another_thread_is_refused(spoutgl):
    sink = SpoutSink("x")
    sink.open()
    errors: list[Exception] = []

    def write() -> None:
        try:
            sink.write(Frame(_image(2, 2, 0), 0, 0.0))
        except DreamwireError as error:
            errors.append(error)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    sink.close()
    assert len(errors) == 1 and "another thread" in str(errors[0])


def _read_frames(source: SpoutSource, count: int, senders: dict, change: dict | None = None) -> list[Frame]:
    """Run `source` on a SourceWorker until `count` frames arrived (applying `change` to the senders after one)."""
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SourceWorker(source, slot, backoff_start=0.01, backoff_max=0.05)
    frames: list[Frame] = []
    worker.start()
    try:
        deadline = time.perf_counter() + 10
        while len(frames) < count and time.perf_counter() < deadline:
            frame = slot.get(timeout=0.05)
            if frame is None:
                continue
            frames.append(frame)
            for sender in senders.values():
                sender.frame += 1  # the sender draws its next frame
            if change and len(frames) == 1:
                senders.update(change)
    finally:
        worker.stop()
    return frames


def test_contract_receiver_allocates_after_is_updated_in_the_senders_format(spoutgl):
    calls, senders = spoutgl
    bgra = np.random.default_rng(3).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    senders["from-resolume"] = FakeSender(bgra[:, :, [2, 1, 0, 3]], DXGI_FORMAT_B8G8R8A8_UNORM)  # stored as RGBA
    wide = np.random.default_rng(4).integers(0, 256, (3, 10, 4), dtype=np.uint8)
    frames = _read_frames(
        SpoutSource("from-resolume"), 3, senders, change={"from-resolume": FakeSender(wide, DXGI_RGBA)}
    )
    assert len(frames) == 3
    np.testing.assert_array_equal(frames[0].image, bgra[:, :, [2, 1, 0]])  # BGRA → RGB
    np.testing.assert_array_equal(frames[-1].image, wide[:, :, :3])  # the new size, RGBA → RGB
    log = calls.log
    first_buffer = next(i for i, (name, args, _) in enumerate(log) if name == "receiveImage" and args[0] is not None)
    updates = [i for i, (name, _, _) in enumerate(log) if name == "isUpdated"]
    assert log[first_buffer][1][0] == (4, 6, 4)  # the buffer has the sender's size, 4 bytes a pixel
    assert any(u < first_buffer for u in updates)
    assert all(args[0] is None for name, args, _ in log[:first_buffer] if name == "receiveImage")
    assert ("getSenderFormat", (), log[0][2]) in log
    assert log[first_buffer][1][1] == GL_BGRA_EXT  # asked in the sender's own (BGRA) format
    shapes = [args[0] for name, args, _ in log if name == "receiveImage" and args[0] is not None]
    assert (3, 10, 4) in shapes  # re-allocated when the sender changed size
    assert "getSenderName" not in calls.names()
    assert calls.names()[:3] == ["SpoutReceiver", "createOpenGL", "setReceiverName"]
    assert calls.names()[-2:] == ["releaseReceiver", "closeOpenGL"]
    assert len(calls.threads()) == 1


def test_contract_receiver_reports_a_closed_sender_and_reconnects(spoutgl):
    _, senders = spoutgl
    source = SpoutSource("gone", timeout=0.1)
    source.open()
    with pytest.raises(DreamwireError, match=r"no frame from sender 'gone' for 0\.1 s"):
        source.read()
    source.close()
    senders["gone"] = FakeSender(np.full((2, 2, 4), 7, np.uint8), DXGI_RGBA)
    frames = _read_frames(SpoutSource("gone", timeout=0.1), 1, senders)
    assert frames and (frames[0].image == 7).all()


def test_spout_uris_need_windows_and_the_extra(spoutgl, monkeypatch):
    monkeypatch.setattr("sys.platform", "win32")
    sink, source = open_sink("spout:"), open_source("spout:?invert=1", instance("stage"))
    assert sink.name == "spout:dreamwire" and source.name == "spout:stage-in" and source.invert
    monkeypatch.setitem(__import__("sys").modules, "SpoutGL", None)
    with pytest.raises(BridgeUnavailable) as info:
        open_sink("spout:")
    assert str(info.value) == (
        "spout: needs the 'spout' extra (SpoutGL is not installed): pip install 'dreamwire[spout]'"
    )
