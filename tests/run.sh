#!/usr/bin/env bash
# The test command (README): installs what the suite needs on a fresh machine, then runs it.
# torch is pinned to 2.13.0 so that pip takes the CPU wheel on CPU-only machines that carry it; every other
# package the suite installs is held at the version in tests/constraints/ci.txt (tests/constraints/refresh.sh rewrites it).
set -euo pipefail
cd "$(dirname "$0")/.."
# The preview test drives a real browser; Debian's chromium is the one that runs headless here. apt installs it
# beside pip (both mostly download and unpack), and the tests start once both are done.
browser=""
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium could not be installed: the browser tests will skip (and fail under CI=true)"; } &
  browser=$!
  trap 'wait "$browser"' EXIT  # never leave apt running behind a failed pip install
fi
python3 -m pip install -q -c tests/constraints/ci.txt torch==2.13.0 -e ".[dev]"
if [ -n "$browser" ]; then
  wait "$browser"
  trap - EXIT
fi
exec python3 -m pytest "$@"
