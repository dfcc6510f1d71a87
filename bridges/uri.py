"""Build Sources and Sinks from URIs: `scheme:path?key=value&...`.

    pattern:?width=512&height=512&fps=30     moving test pattern (fps=0: unpaced)
    file:clip.mp4?fps=30&loop=1              clip as source (.npy, video, image folder); as sink: file:out.npy?fps=30
    preview:?port=8765&window=0              MJPEG stream for a browser (sink only)
    spout: syphon: ndi: shm: camera:         platform bridges, imported only when asked for

open_source/open_sink construct the bridge; they do not call its open(): the worker thread does (bridges such as
Spout must be used from one thread only). Platform bridge modules `bridges/<scheme>.py` provide
`source_from_uri(path: str, query: dict[str, str]) -> Source` and/or `sink_from_uri(...) -> Sink`.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from bridges.base import BridgeUnavailable, Sink, Source
from engine.core.errors import DreamwireError

Direction = Literal["source", "sink"]


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


def open_source(uri: str) -> Source:
    """The Source for `uri` (not yet opened). Raises DreamwireError / BridgeUnavailable with a one-line reason."""
    parsed = parse_uri(uri, "source")
    return _SOURCES[parsed.scheme](parsed)


def open_sink(uri: str) -> Sink:
    """The Sink for `uri` (not yet opened). Raises DreamwireError / BridgeUnavailable with a one-line reason."""
    parsed = parse_uri(uri, "sink")
    return _SINKS[parsed.scheme](parsed)


# ---------------------------------------------------------------------------------------------------- factories


def _pattern_source(u: ParsedUri) -> Source:
    from bridges.pattern import PatternSource

    u.no_path()
    u.take({"width": "8..8192, default 512", "height": "8..8192, default 512", "fps": ">= 0, default 30, 0 = unpaced"})
    return PatternSource(
        width=u.integer("width", 512, 8, 8192), height=u.integer("height", 512, 8, 8192), fps=u.number("fps", 30.0, 0)
    )


def _file_source(u: ParsedUri) -> Source:
    from bridges.file import FileSource

    path = u.need_path("file:clip.mp4 or file:frames/ or file:clip.npy")
    u.take({"fps": "> 0, default: unpaced", "loop": "0 or 1"})
    return FileSource(path, fps=u.number("fps", None, 0) or None, loop=u.flag("loop"))


def _file_sink(u: ParsedUri) -> Sink:
    from bridges.file import FileSink

    path = u.need_path("file:out.mp4 or file:out.npy or file:frames/")
    u.take({"fps": "> 0, default 30"})
    fps = u.number("fps", 30.0, 0)
    if not fps:
        raise DreamwireError(f"file: fps=0 in {u.uri!r} is invalid for a sink: use a rate > 0")
    return FileSink(path, fps=fps)


def _preview_sink(u: ParsedUri) -> Sink:
    from bridges.preview import PreviewSink

    u.no_path()
    u.take({"port": "0..65535, default 8765", "window": "0 or 1 (1 is not built yet)"})
    return PreviewSink(port=u.integer("port", 8765, 0, 65535), window=u.flag("window"))


@dataclass(frozen=True)
class _Platform:
    """A bridge that lives in its own module and needs a platform package; imported only when used."""

    scheme: str
    package: str  # what the user installs ("" = nothing)
    extra: str  # pip extra, "" when only the standard library is needed

    def __call__(self, u: ParsedUri, direction: Direction) -> Any:
        module_name = f"bridges.{self.scheme}"
        install = f"pip install 'dreamwire[{self.extra}]'" if self.extra else ""
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                hint = f": {install}" if install else ""
                raise BridgeUnavailable(f"{self.scheme}: package {e.name!r} is missing ({self.package}){hint}") from e
            needs = f"; it will need {self.package}" + (f" ({install})" if install else "") if self.package else ""
            raise BridgeUnavailable(f"{self.scheme}: bridge is not built yet in this dreamwire{needs}") from e
        factory: Callable[[str, dict[str, str]], Any] | None = getattr(module, f"{direction}_from_uri", None)
        if factory is None:
            raise BridgeUnavailable(f"{self.scheme}: has no {direction} side (bridges/{self.scheme}.py)")
        return factory(u.path, u.query)


_SPOUT = _Platform("spout", "SpoutGL on Windows", "spout")
_SYPHON = _Platform("syphon", "syphon-python on macOS", "syphon")
_NDI = _Platform("ndi", "cyndilib", "ndi")
_SHM = _Platform("shm", "", "")  # multiprocessing.shared_memory: nothing to install
_CAMERA = _Platform("camera", "opencv-python-headless", "camera")

_SOURCES: dict[str, Callable[[ParsedUri], Source]] = {
    "pattern": _pattern_source,
    "file": _file_source,
    "camera": lambda u: _CAMERA(u, "source"),
    "spout": lambda u: _SPOUT(u, "source"),
    "syphon": lambda u: _SYPHON(u, "source"),
    "ndi": lambda u: _NDI(u, "source"),
    "shm": lambda u: _SHM(u, "source"),
}
_SINKS: dict[str, Callable[[ParsedUri], Sink]] = {
    "file": _file_sink,
    "preview": _preview_sink,
    "spout": lambda u: _SPOUT(u, "sink"),
    "syphon": lambda u: _SYPHON(u, "sink"),
    "ndi": lambda u: _NDI(u, "sink"),
    "shm": lambda u: _SHM(u, "sink"),
}

SOURCE_SCHEMES = tuple(sorted(_SOURCES))
SINK_SCHEMES = tuple(sorted(_SINKS))
