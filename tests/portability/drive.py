"""Run by tests/test_portability.py in a subprocess, with this folder's sitecustomize.py loaded: imports every
module of engine/ and bridges/, then runs `dreamwire --help`, `render`, (with --bench) `bench --frames 4` and
`run --duration 2` in this one process, and prints a JSON report as the last line of stdout (after the help).

    python tests/portability/drive.py WORK_FOLDER [--bench]
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SIZE = ["--set", "stream.width=64", "--set", "stream.height=64"]


def project_modules() -> list[str]:
    names = []
    for package in ("engine", "bridges"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def main() -> None:
    work = Path(sys.argv[1])
    report: dict[str, Any] = {
        "platform": next(name for name in ("win32", "darwin", "linux") if sys.platform == name),  # as ours sees it
        "hidden": sorted(name for name in ("resource", "fcntl", "termios") if sys.modules.get(name, 0) is None),
    }
    modules = project_modules()
    for name in modules:
        importlib.import_module(name)
    report["imported"] = len(modules)

    import numpy as np

    from engine.commands.cli import main as dreamwire

    codes: dict[str, Any] = {}
    try:
        dreamwire(["--help"])  # to the real stdout: the test gives "Windows" a cp1252 one, as a redirected console has
    except SystemExit as done:  # argparse leaves after printing the help
        codes["help"] = done.code

    frames = np.stack([np.full((64, 64, 3), 40 * i, np.uint8) for i in range(3)])
    np.save(work / "in.npy", frames)
    render = ["render", "--preset", "offline-demo", *SIZE, "--input", str(work / "in.npy")]
    codes["render"] = dreamwire([*render, "--output", str(work / "render.npy")])
    report["render_frames"] = len(np.load(work / "render.npy"))

    if "--bench" in sys.argv:
        bench_out = io.StringIO()
        with contextlib.redirect_stdout(bench_out):
            codes["bench"] = dreamwire(["bench", "--json", "--frames", "4", *SIZE])
        report["bench_measurements"] = len(json.loads(bench_out.getvalue())["measurements"])

    run = ["run", "--preset", "offline-demo", *SIZE, "--input", "pattern:?width=64&height=64&fps=30"]
    run += ["--set", "osc.port=0"]  # any free port: a dreamwire already on 9000 (or another test's) is no failure
    codes["run"] = dreamwire([*run, "--output", f"file:{work / 'run.npy'}", "--duration", "2"])
    report["run_frames"] = len(np.load(work / "run.npy"))
    report["codes"] = codes

    # Where the code branches on sys.platform.
    from bridges.uri import parse_uri
    from bridges.web import REUSE_ADDRESS
    from engine.bench.live import _rss_mb
    from engine.commands.run import stop_signals

    report["stop_signals"] = [int(sig) for sig in stop_signals()]
    report["preview_reuses_address"] = REUSE_ADDRESS
    report["file_uri_path"] = parse_uri("file:///C:/clips/a.mp4", "source").path
    report["rss_mb"] = _rss_mb()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
