"""CONTRACT tests of the syphon: bridge against stand-in syphon / Metal modules that record every call.

They check what syphon-python's documented API (0.2.0) asks of a caller, which no Linux machine can run for real:
- server: SyphonMetalServer(name); an RGBA8 texture from syphon.utils.raw.create_mtl_texture(server.device, w, h),
  re-created when the frame size changes; copy_image_to_mtl_texture with (H, W, 4) pixels;
  publish_frame_texture(texture, is_flipped=True) because our rows run top to bottom; stop() on close;
- client: a SyphonServerDirectory finds the server only while its run loop is pumped; SyphonMetalClient(description);
  has_new_frame / new_frame_image; copy_mtl_texture_to_image; BGRA textures converted by their pixel format;
- every call on the bridge's worker thread.
The real-device check is a manual step (README, "Manual checks").
"""

from __future__ import annotations

import importlib.machinery
import sys
import threading
import time
import types
from dataclasses import dataclass

import numpy as np
import pytest
from call_log import Calls

from bridges.syphon import SyphonSink, SyphonSource
from bridges.uri import open_sink, open_source
from engine.core.errors import DreamwireError
from engine.core.frames import Frame
from engine.core.instance import instance
from engine.core.slot import LatestFrameSlot
from engine.live.io_threads import SinkWorker, SourceWorker

RGBA8, BGRA8 = 70, 80  # MTLPixelFormatRGBA8Unorm, MTLPixelFormatBGRA8Unorm
PUMPS_BEFORE_ANNOUNCE = 3  # the stand-in directory sees a server only after its run loop ran this often


class FakeTexture:
    def __init__(self, width: int, height: int, fmt: int = RGBA8) -> None:
        self.w, self.h, self.fmt = width, height, fmt
        self.data = np.zeros((height, width, 4), np.uint8)

    def width(self) -> int:
        return self.w

    def height(self) -> int:
        return self.h

    def pixelFormat(self) -> int:
        return self.fmt


@dataclass
class FakeDescription:
    uuid: str
    name: str
    app_name: str
    icon: object
    raw: object


class World:
    """The Syphon servers other apps run: name → (app name, texture, frame count, still valid)."""

    def __init__(self) -> None:
        self.servers: dict[str, dict] = {}


def make_modules(calls: Calls, world: World) -> dict[str, types.ModuleType]:
    class SyphonMetalServer:
        def __init__(self, name: str, device: object = None, command_queue: object = None) -> None:
            calls.add("SyphonMetalServer", name)
            self.name, self.device = name, "mtl-device"
            self.published: list[tuple[FakeTexture, np.ndarray, bool]] = []

        def publish_frame_texture(self, texture, region=None, size=None, is_flipped=False, **_: object) -> None:
            calls.add("publish_frame_texture", (texture.w, texture.h), is_flipped)
            self.published.append((texture, texture.data.copy(), is_flipped))

        def stop(self) -> None:
            calls.add("server.stop")

    class SyphonServerDirectory:
        def __init__(self) -> None:
            calls.add("SyphonServerDirectory")
            self.run_loop_interval = 1.0
            self.pumps = 0

        def update_run_loop(self) -> None:
            calls.add("update_run_loop", self.run_loop_interval)
            self.pumps += 1

        @property
        def servers(self) -> list[FakeDescription]:
            self.update_run_loop()
            if self.pumps < PUMPS_BEFORE_ANNOUNCE:
                return []
            return [FakeDescription(n, n, s["app"], None, n) for n, s in world.servers.items()]

        def servers_matching_name(self, name=None, app_name=None) -> list[FakeDescription]:
            return [s for s in self.servers if (name is not None and s.name == name) or s.app_name == app_name]

    class SyphonMetalClient:
        def __init__(self, description: FakeDescription, device: object = None) -> None:
            calls.add("SyphonMetalClient", description.name)
            self.server, self.seen = description.raw, 0

        @property
        def is_valid(self) -> bool:
            return world.servers.get(self.server, {}).get("valid", False)

        @property
        def has_new_frame(self) -> bool:
            server = world.servers.get(self.server)
            return bool(server) and server["valid"] and server["frame"] != self.seen

        @property
        def new_frame_image(self) -> FakeTexture:
            calls.add("new_frame_image")
            server = world.servers[self.server]
            self.seen = server["frame"]
            return server["texture"]

        def stop(self) -> None:
            calls.add("client.stop")

    def create_mtl_texture(device: object, width: int, height: int, pixel_format: int = RGBA8) -> FakeTexture:
        calls.add("create_mtl_texture", device, width, height)
        return FakeTexture(width, height, pixel_format)

    def copy_image_to_mtl_texture(image: np.ndarray, texture: FakeTexture) -> None:
        calls.add("copy_image_to_mtl_texture", image.shape)
        if image.shape != (texture.h, texture.w, 4):  # the documented contract: (m, n, 4), the texture's size
            raise AssertionError("Image has to be of shape (m, n, 4)")
        texture.data[...] = image

    def copy_mtl_texture_to_image(texture: FakeTexture) -> np.ndarray:
        calls.add("copy_mtl_texture_to_image")
        return texture.data.copy()

    def module(name: str, **attrs: object) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.__dict__.update(attrs)
        return m

    raw = module("syphon.utils.raw", create_mtl_texture=create_mtl_texture)
    numpy_utils = module(
        "syphon.utils.numpy",
        copy_image_to_mtl_texture=copy_image_to_mtl_texture,
        copy_mtl_texture_to_image=copy_mtl_texture_to_image,
    )
    utils = module("syphon.utils", raw=raw, numpy=numpy_utils)
    syphon = module(
        "syphon",
        SyphonMetalServer=SyphonMetalServer,
        SyphonServerDirectory=SyphonServerDirectory,
        SyphonMetalClient=SyphonMetalClient,
        utils=utils,
    )
    metal = module("Metal", MTLPixelFormatRGBA8Unorm=RGBA8, MTLPixelFormatBGRA8Unorm=BGRA8)
    return {"syphon": syphon, "syphon.utils": utils, "syphon.utils.raw": raw, "syphon.utils.numpy": numpy_utils,
            "Metal": metal}  # fmt: skip


@pytest.fixture
def stand_in(monkeypatch):
    calls, world = Calls(), World()
    for name, module in make_modules(calls, world).items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls, world


def _image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_contract_server_publishes_flipped_rgba_and_recreates_the_texture_on_resize(stand_in):
    calls, _ = stand_in
    sink = SyphonSink("to-resolume")
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SinkWorker(sink, slot)
    images = [_image(4, 6, 0), _image(4, 6, 1), _image(8, 4, 2)]
    published = []
    worker.start()
    for index, image in enumerate(images):
        slot.put(Frame(image, index, 0.0))
        deadline = time.perf_counter() + 5
        while worker.frames <= index and time.perf_counter() < deadline:
            time.sleep(0.005)
        published.append(sink._server.published[-1])
    worker.stop()
    assert worker.errors == 0
    for (texture, data, flipped), image in zip(published, images, strict=True):
        assert flipped is True and (texture.h, texture.w) == image.shape[:2]
        np.testing.assert_array_equal(data[:, :, :3], image)
        assert (data[:, :, 3] == 255).all()
    textures = [args for name, args, _ in calls.log if name == "create_mtl_texture"]
    assert textures == [("mtl-device", 6, 4), ("mtl-device", 4, 8)]  # once per size, on the server's device
    assert calls.names()[0] == "SyphonMetalServer" and calls.names()[-1] == "server.stop"
    assert len(calls.threads()) == 1 and threading.get_ident() not in calls.threads()


def test_contract_server_invert_flips_the_rows(stand_in):
    sink = SyphonSink("x", invert=True)
    sink.open()
    image = _image(4, 6, 3)
    sink.write(Frame(image, 0, 0.0))
    _, data, _ = sink._server.published[-1]
    sink.close()
    np.testing.assert_array_equal(data[:, :, :3], image[::-1])


def test_contract_client_discovers_by_pumping_the_run_loop_and_reads_bgra(stand_in):
    calls, world = stand_in
    bgra = np.random.default_rng(5).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    texture = FakeTexture(6, 4, BGRA8)
    texture.data[...] = bgra
    world.servers["from-max"] = {"app": "Max", "texture": texture, "frame": 1, "valid": True}
    slot: LatestFrameSlot[Frame] = LatestFrameSlot()
    worker = SourceWorker(SyphonSource("from-max"), slot)
    worker.start()
    frame = slot.get(timeout=5)
    world.servers["from-max"]["valid"] = False  # Max closes the server
    deadline = time.perf_counter() + 5
    while not worker.failing and time.perf_counter() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert frame is not None
    np.testing.assert_array_equal(frame.image, bgra[:, :, [2, 1, 0]])
    pumps = [args for name, args, _ in calls.log if name == "update_run_loop"]
    assert len(pumps) >= PUMPS_BEFORE_ANNOUNCE and all(interval < 0.1 for (interval,) in pumps)
    assert calls.names().index("SyphonMetalClient") > calls.names().index("update_run_loop")
    assert worker.failing and worker.errors >= 1  # the closed server was noticed; the worker retries
    assert "client.stop" in calls.names()
    assert len(calls.threads()) == 1


def test_contract_client_names_the_servers_it_found(stand_in):
    _, world = stand_in
    world.servers["other"] = {"app": "Resolume", "texture": FakeTexture(2, 2), "frame": 1, "valid": True}
    source = SyphonSource("missing", timeout=0.1)
    with pytest.raises(DreamwireError, match=r"syphon: no server named 'missing' \(found: Resolume: other\)"):
        source.open()


def test_syphon_uris_default_to_the_instance_names(stand_in, monkeypatch):
    monkeypatch.setattr("sys.platform", "darwin")
    assert open_sink("syphon:", instance("left")).name == "syphon:left"
    assert open_source("syphon:").name == "syphon:dreamwire-in"
