#!/usr/bin/env bash
# Rewrites tests/constraints/ci.txt: the exact version of every package that the test run installs.
#
# It installs the project as tests/run.sh does, but without the constraints, into a throwaway venv, so
# it takes the newest releases that satisfy pyproject.toml's ranges; then it writes `pip freeze`.
# Run it on purpose (after changing a dependency or the dev extra, or to move the test run to newer
# releases), run the suite, and commit ci.txt with the change it goes with:
#     bash tests/constraints/refresh.sh && bash tests/run.sh
# The product's own dependencies stay ranges; these pins are for the test run only.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=$(mktemp -d "${TMPDIR:-/tmp}/dreamwire-constraints.XXXXXX")
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q torch==2.13.0 -e ".[dev]"
{
  echo "# The exact versions the test run installs (tests/run.sh: pip install -c tests/constraints/ci.txt ...)."
  echo "# Written by tests/constraints/refresh.sh, not by hand: to move to newer releases on purpose, run"
  echo "#     bash tests/constraints/refresh.sh && bash tests/run.sh"
  echo "# and commit this file with the change it goes with. tests/test_packaging.py checks that every"
  echo "# dependency in pyproject.toml (and the dev extra) is pinned here."
  echo "# Portable: local version labels (torch's +cpu) are cut, and CUDA-only wheels (nvidia-*, triton) are"
  echo "# left out, so the same file serves Linux, Windows and macOS."
  # Local labels (2.13.0+cpu) exist on one index only: ==2.13.0 still matches them. nvidia-* and triton
  # come with a CUDA build of torch on Linux and have no wheels elsewhere.
  "$venv/bin/python" -m pip freeze --exclude-editable --all \
    | grep -v -i -E '^(pip|setuptools|wheel|nvidia-[a-z0-9-]+|triton|cuda-[a-z0-9-]+)==' \
    | sed -E 's/^([^=]+==[^+ ;]+)\+[A-Za-z0-9.]+/\1/' \
    | LC_ALL=C sort -f
} >tests/constraints/ci.txt.part
mv tests/constraints/ci.txt.part tests/constraints/ci.txt
echo "tests/constraints/ci.txt: $(grep -c '==' tests/constraints/ci.txt) pins"
