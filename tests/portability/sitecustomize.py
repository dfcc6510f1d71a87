"""Start-up shim for tests/test_portability.py: Python imports it before the program runs, in every interpreter
whose PYTHONPATH starts with this folder.

1. Everything that engine/ and bridges/ import from outside the project (read from their source, lazy imports
   inside functions too) loads first: psutil's Linux part, for one, imports resource, and which modules a
   library needs on Windows is that library's business. For `from X import Y` the name Y is fetched too
   (diffusers and transformers load their parts on first use). What is not installed here is skipped.
2. resource, fcntl and termios become unimportable (None in sys.modules makes `import` raise ImportError), as on
   Windows: our code may only need them inside a platform branch.
3. With DREAMWIRE_FAKE_PLATFORM=win32|darwin, sys.platform compares as that platform in our code (engine/,
   bridges/, the program run as __main__) and as the real one everywhere else, so the libraries' own platform
   branches still run the Linux code they need here (zeroconf reads sys.platform on every call, asyncio when it
   loads). Linux has no SIGBREAK (Ctrl-Break on Windows): SIGUSR1 stands in for it.
"""

import ast
import contextlib
import importlib
import os
import signal
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
_HIDDEN = ("resource", "fcntl", "termios")


def _outside_imports() -> dict[str, set[str]]:
    """{module: names taken from it} for every import in engine/ and bridges/ that is not the project's own."""
    found: dict[str, set[str]] = {}
    for package in ("engine", "bridges"):
        for path in sorted((_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        found.setdefault(alias.name, set())
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.setdefault(node.module, set()).update(alias.name for alias in node.names)
    return {m: names for m, names in found.items() if m.split(".")[0] not in ("engine", "bridges", "__future__")}


for _module, _names in sorted(_outside_imports().items()):
    if _module in _HIDDEN:
        continue
    with contextlib.suppress(Exception):  # not installed here (SpoutGL, tensorrt, ...), or fails to load: not ours
        _loaded = importlib.import_module(_module)
        for _name in _names:
            with contextlib.suppress(Exception):
                getattr(_loaded, _name)

for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]


class _ScopedPlatform(str):
    """The real platform's name, that compares (==, !=, hash, startswith, in) as `fake` in our own modules."""

    fake = ""

    def _seen(self) -> str:
        caller = sys._getframe(2).f_globals.get("__name__", "")  # 0: here, 1: the operator, 2: who compares
        ours = caller == "__main__" or caller.split(".")[0] in ("engine", "bridges")
        return self.fake if ours else str(self)

    def __eq__(self, other: object) -> bool:
        return self._seen() == other

    def __ne__(self, other: object) -> bool:
        return self._seen() != other

    def __hash__(self) -> int:
        return hash(self._seen())

    def startswith(self, *args) -> bool:  # type: ignore[override]
        return self._seen().startswith(*args)

    def __contains__(self, text: object) -> bool:
        return text in self._seen()  # type: ignore[operator]


_FAKE = os.environ.get("DREAMWIRE_FAKE_PLATFORM")
if _FAKE:
    if _FAKE == "win32" and not hasattr(signal, "SIGBREAK"):
        signal.SIGBREAK = signal.SIGUSR1  # type: ignore[attr-defined]
    _platform = _ScopedPlatform(sys.platform)
    _platform.fake = _FAKE
    sys.platform = _platform
