"""Build Sources and Sinks from URIs: `scheme:path?key=value&...`.

    pattern:?width=512&height=512&fps=30     moving test pattern (fps=0: unpaced, at its reader's pace)
    file:clip.mp4?fps=30&loop=1              clip as source (.npy, video, image folder); as sink: file:out.npy?fps=30
    preview:?port=8765&host=127.0.0.1        the control page and MJPEG stream for a browser (sink only)
    spout:NAME syphon:NAME ndi:NAME shm:NAME camera:0
                                             platform bridges, imported only when asked for

Every source also takes `fit=stretch|letterbox|crop`: how frames of another aspect ratio reach the engine's size
(read with source_fit(); the source itself never sees the key).

open_source/open_sink construct the bridge; they do not call its open(): the worker thread does (bridges such as
Spout must be used from one thread only). Platform bridge modules `bridges/<scheme>.py` provide
`source_from_uri(u: ParsedUri, default_name: str) -> Source` and/or `sink_from_uri(...) -> Sink`; default_name is
the instance's sender name (engine/core/instance.py) for a URI given without one.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from bridges.base import BridgeUnavailable, Sink, Source
from bridges.pixels import FITS, Fit
from engine.core.errors import DreamwireError
from engine.core.instance import DEFAULT_INSTANCE, Instance

Direction = Literal["source", "sink"]
TIMEOUT_HELP = "seconds without a new frame before the sender counts as gone, default 2"  # every platform source


@dataclass(frozen=True)
class ParsedUri:
    uri: str
    scheme: str
    path: str
    query: dict[str, str] = field(default_factory=dict)

    def take(self, allowed: dict[str, str]) -> dict[str, str]:
        """The query, after checking every key is in `allowed` (key -> one-line help used in the error)."""
        for key in self.query:
            if key not in allowed:
                keys = ", ".join(f"{k} ({h})" for k, h in allowed.items()) or "none"
                raise DreamwireError(f"{self.scheme}: unknown key {key!r} in {self.uri!r}; allowed keys: {keys}")
        return self.query

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        raw = self.query.get(key)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise DreamwireError(f"{self.scheme}: {key}={raw!r} in {self.uri!r} is not an integer in {low}..{high}")
        return value

    def number(self, key: str, default: float | None, low: float) -> float | None:
        raw = self.query.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= low):
            raise DreamwireError(f"{self.scheme}: {key}={raw!r} in {self.uri!r} is not a number >= {low:g}")
        return value

    def timeout(self) -> float:
        """The `timeout` key of a platform source: seconds without a new frame before the sender counts as gone."""
        return self.number("timeout", 2.0, 0.01) or 2.0

    def flag(self, key: str) -> bool:
        raw = self.query.get(key, "0").lower()
        if raw not in ("0", "1", "true", "false"):
            raise DreamwireError(f"{self.scheme}: {key}={raw!r} in {self.uri!r} is not 0 or 1")
        return raw in ("1", "true")

    def no_path(self) -> None:
        if self.path:
            raise DreamwireError(
                f"{self.scheme}: takes no path, got {self.path!r} in {self.uri!r} (write {self.scheme}:?key=value)"
            )

    def need_path(self, example: str) -> str:
        if not self.path:
            raise DreamwireError(f"{self.scheme}: needs a path in {self.uri!r}, e.g. {example}")
        return self.path


def parse_uri(uri: str, direction: Direction) -> ParsedUri:
    """Split `scheme:path?query`; `file:///abs/path` and `file:rel/path` both work."""
    schemes = _SOURCES if direction == "source" else _SINKS
    allowed = ", ".join(sorted(schemes))
    scheme, colon, rest = uri.partition(":")
    scheme = scheme.strip().lower()
    if not colon or len(scheme) == 1:  # one letter: a Windows drive (C:\clip.mp4), not a scheme
        raise DreamwireError(f"{direction} {uri!r} has no scheme: write e.g. file:{uri} (schemes: {allowed})")
    if scheme not in schemes and scheme in (_SINKS if direction == "source" else _SOURCES):
        other = "sink" if direction == "source" else "source"
        raise DreamwireError(f"{scheme}: is a {other} only, not a {direction} ({uri!r})")
    if scheme not in schemes:
        raise DreamwireError(f"unknown {direction} scheme {scheme!r} in {uri!r}: use one of {allowed}")
    path, _, query_text = rest.partition("?")
    if path.startswith("//"):
        path = path[2:]
    if sys.platform == "win32" and re.match(r"/[A-Za-z]:[/\\]", path):
        path = path[1:]  # file:///C:/clips/a.mp4 names C:/clips/a.mp4
    try:
        pairs = parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError as e:
        raise DreamwireError(f"{scheme}: malformed query {query_text!r} in {uri!r}: use key=value&key=value") from e
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise DreamwireError(f"{scheme}: key {key!r} is given twice in {uri!r}")
        query[key] = value
    return ParsedUri(uri=uri, scheme=scheme, path=path, query=query)


def open_source(uri: str, instance: Instance = DEFAULT_INSTANCE) -> Source:
    """The Source for `uri` (not yet opened). Raises DreamwireError / BridgeUnavailable with a one-line reason.

    instance: names a spout:/syphon:/ndi:/shm: URI without a NAME (it reads `instance.input_name`)."""
    source_fit(uri)
    parsed = parse_uri(uri, "source")
    parsed = dataclasses.replace(parsed, query={k: v for k, v in parsed.query.items() if k != "fit"})
    return _SOURCES[parsed.scheme](parsed, instance)


def open_sink(uri: str, instance: Instance = DEFAULT_INSTANCE) -> Sink:
    """The Sink for `uri` (not yet opened). Raises DreamwireError / BridgeUnavailable with a one-line reason.

    instance: names a spout:/syphon:/ndi:/shm: URI without a NAME (`instance.output_name`) and gives preview: its
    port and page title."""
    parsed = parse_uri(uri, "sink")
    return _SINKS[parsed.scheme](parsed, instance)


def source_fit(uri: str) -> Fit:
    """The `fit` key of a source URI (default stretch): how frames are brought to the engine's size."""
    parsed = parse_uri(uri, "source")
    mode = parsed.query.get("fit", "stretch")
    if mode not in FITS:
        raise DreamwireError(f"{parsed.scheme}: fit={mode!r} in {uri!r} is unknown; allowed: {', '.join(FITS)}")
    return mode  # type: ignore[return-value]  # checked against FITS above


# ---------------------------------------------------------------------------------------------------- factories


def _pattern_source(u: ParsedUri, _instance: Instance) -> Source:
    from bridges.pattern import PatternSource

    u.no_path()
    u.take({"width": "8..8192, default 512", "height": "8..8192, default 512", "fps": ">= 0, default 30, 0 = unpaced"})
    return PatternSource(
        width=u.integer("width", 512, 8, 8192), height=u.integer("height", 512, 8, 8192), fps=u.number("fps", 30.0, 0)
    )


def _file_source(u: ParsedUri, _instance: Instance) -> Source:
    from bridges.file import FileSource

    path = u.need_path("file:clip.mp4 or file:frames/ or file:clip.npy")
    u.take({"fps": "> 0, default: unpaced", "loop": "0 or 1"})
    return FileSource(path, fps=u.number("fps", None, 0) or None, loop=u.flag("loop"))


def _file_sink(u: ParsedUri, _instance: Instance) -> Sink:
    from bridges.file import FileSink

    path = u.need_path("file:out.mp4 or file:out.npy or file:frames/")
    u.take({"fps": "> 0, default 30"})
    fps = u.number("fps", 30.0, 0)
    if not fps:
        raise DreamwireError(f"file: fps=0 in {u.uri!r} is invalid for a sink: use a rate > 0")
    return FileSink(path, fps=fps)


def _preview_sink(u: ParsedUri, instance: Instance) -> Sink:
    from bridges.preview import PreviewSink

    u.no_path()
    port = instance.preview_port
    u.take(
        {
            "port": f"0..65535, default {port} (from the instance name)",
            "host": "the interface to bind, default 127.0.0.1 (0.0.0.0: every interface)",
            "window": "0 or 1 (1 is not built yet)",
        }
    )
    host = u.query.get("host", "127.0.0.1")
    return PreviewSink(port=u.integer("port", port, 0, 65535), host=host, window=u.flag("window"), title=instance.name)


_SYSTEMS = {"win32": "Windows", "darwin": "macOS", "linux": "Linux"}


def _installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (find_spec loads nothing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


@dataclass(frozen=True)
class _Platform:
    """A bridge in its own module, imported only when used, that may need an OS and an optional package."""

    scheme: str
    module: str  # import name of the package it needs ("" = the standard library is enough)
    package: str  # the package's name on PyPI
    extra: str  # the dreamwire extra that installs it
    system: str | None = None  # the sys.platform it runs on; None = any

    def check(self) -> None:
        """One line naming the platform and the extra when this bridge cannot run here."""
        install = f"pip install 'dreamwire[{self.extra}]'"
        if self.system is not None and sys.platform != self.system:
            here = _SYSTEMS.get(sys.platform, sys.platform)
            raise BridgeUnavailable(
                f"{self.scheme}: needs {_SYSTEMS[self.system]} (this is {here}) and the '{self.extra}' extra: {install}"
            )
        if self.module and not _installed(self.module):
            raise BridgeUnavailable(
                f"{self.scheme}: needs the '{self.extra}' extra ({self.package} is not installed): {install}"
            )

    def __call__(self, u: ParsedUri, direction: Direction, instance: Instance) -> Any:
        self.check()
        module = importlib.import_module(f"bridges.{self.scheme}")
        factory: Callable[[ParsedUri, str], Any] | None = getattr(module, f"{direction}_from_uri", None)
        if factory is None:
            raise BridgeUnavailable(f"{self.scheme}: has no {direction} side (bridges/{self.scheme}.py)")
        return factory(u, instance.input_name if direction == "source" else instance.output_name)


_SPOUT = _Platform("spout", "SpoutGL", "SpoutGL", "spout", system="win32")
_SYPHON = _Platform("syphon", "syphon", "syphon-python", "syphon", system="darwin")
_NDI = _Platform("ndi", "cyndilib", "cyndilib", "ndi")
_SHM = _Platform("shm", "", "", "")  # multiprocessing.shared_memory: nothing to install
_CAMERA = _Platform("camera", "cv2", "opencv-python-headless", "camera")

_Factory = Callable[[ParsedUri, Instance], Any]
_SOURCES: dict[str, _Factory] = {
    "pattern": _pattern_source,
    "file": _file_source,
    "camera": lambda u, i: _CAMERA(u, "source", i),
    "spout": lambda u, i: _SPOUT(u, "source", i),
    "syphon": lambda u, i: _SYPHON(u, "source", i),
    "ndi": lambda u, i: _NDI(u, "source", i),
    "shm": lambda u, i: _SHM(u, "source", i),
}
_SINKS: dict[str, _Factory] = {
    "file": _file_sink,
    "preview": _preview_sink,
    "spout": lambda u, i: _SPOUT(u, "sink", i),
    "syphon": lambda u, i: _SYPHON(u, "sink", i),
    "ndi": lambda u, i: _NDI(u, "sink", i),
    "shm": lambda u, i: _SHM(u, "sink", i),
}

SOURCE_SCHEMES = tuple(sorted(_SOURCES))
SINK_SCHEMES = tuple(sorted(_SINKS))
