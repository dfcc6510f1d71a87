#!/usr/bin/env bash
# The test command (README): installs what the suite needs on a fresh machine, then runs it.
# torch is pinned to 2.13.0 so that pip takes the CPU wheel on CPU-only machines that carry it; every other
# package the suite installs is held at the version in constraints/ci.txt (constraints/refresh.sh rewrites it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -c constraints/ci.txt torch==2.13.0 -e ".[dev]"
# The preview test drives a real browser; Debian's chromium is the one that runs headless here.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed: the browser test will skip"
fi
exec python3 -m pytest "$@"
