"""Start-up shim for tests/test_portability.py: Python imports it before the program runs, in every interpreter
whose PYTHONPATH starts with this folder.

1. Everything that engine/ and bridges/ import from outside the project (read from their source, lazy imports
   inside functions too) loads first, as on the real platform: how the standard library, psutil, torch or
   zeroconf find their way on Windows is theirs to test (psutil's Linux part imports resource; torch, seeing
   win32, would look for its DLLs; asyncio would pick its Windows event loop). For `from X import Y` the name Y
   is fetched too (diffusers and transformers load their parts on first use). What is not installed is skipped.
2. resource, fcntl and termios become unimportable (None in sys.modules makes `import` raise ImportError), as on
   Windows: our code may only need them inside a platform branch.
3. With DREAMWIRE_FAKE_PLATFORM=win32|darwin, what is imported from now on (engine/, bridges/) sees that
   sys.platform. Linux has no SIGBREAK (Ctrl-Break on Windows): SIGUSR1 stands in for it.
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

_FAKE = os.environ.get("DREAMWIRE_FAKE_PLATFORM")
if _FAKE:
    if _FAKE == "win32" and not hasattr(signal, "SIGBREAK"):
        signal.SIGBREAK = signal.SIGUSR1  # type: ignore[attr-defined]
    sys.platform = _FAKE
