"""The test run is reproducible: every dependency of the project and of its `dev` extra has an exact pin in
tests/constraints/ci.txt (written by tests/constraints/refresh.sh), and each pin lies inside the project's own range."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "tests" / "constraints" / "ci.txt"


def normalise(name: str) -> str:
    """PEP 503: runs of -, _ and . are one -, case-insensitive."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> tuple[dict[str, Version], list[str]]:
    """`name==version` lines → {normalised name: version}, and the lines that are not such a pin."""
    pins: dict[str, Version] = {}
    bad: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;+]+)", line)
        if match is None:
            bad.append(raw)
        else:
            pins[normalise(match[1])] = Version(match[2])
    return pins, bad


def unpinned(requirements: list[str], constraints: str) -> list[str]:
    """The requirements that constraints don't pin with ==, or pin outside the requirement's own range."""
    pins, _ = parse_pins(constraints)
    problems = []
    for text in requirements:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": "dev"}):
            continue  # for another platform: this file is made on Linux (see tests/constraints/refresh.sh)
        version = pins.get(normalise(requirement.name))
        if version is None:
            problems.append(f"{requirement.name}: no == pin")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}: pin {version} is outside {requirement.specifier}")
    return problems


def _project_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["dev"]]


def test_every_dependency_and_dev_extra_is_pinned_in_the_constraints():
    requirements = _project_requirements()
    assert any(Requirement(r).name == "torch" for r in requirements)  # the list really was read
    problems = unpinned(requirements, CONSTRAINTS.read_text(encoding="utf-8"))
    assert not problems, f"run `bash tests/constraints/refresh.sh` and commit tests/constraints/ci.txt: {problems}"


def test_constraints_are_exact_and_portable():
    pins, bad = parse_pins(CONSTRAINTS.read_text(encoding="utf-8"))
    assert not bad, f"tests/constraints/ci.txt lines that are not name==version: {bad}"
    assert "dreamwire" not in pins  # the project itself is installed from the checkout
    assert not [name for name in pins if name.startswith("nvidia-") or name == "triton"]  # CUDA-only wheels
    assert pins["torch"] == Version("2.13.0") and pins["torch"].local is None  # +cpu exists on Linux only


def test_the_checker_finds_a_missing_a_loose_and_an_out_of_range_pin():
    constraints = "# header\nfoo.bar==1.2\nBaz_Qux==0.9\nloose>=1\nnew==3.0  # comment\n"
    requirements = ["Foo-Bar>=1", "baz-qux>=1", "loose", "absent>=2", "new[extra]>=2,<4", "win; sys_platform=='win32'"]
    assert unpinned(requirements, constraints) == [
        "baz-qux: pin 0.9 is outside >=1",
        "loose: no == pin",
        "absent: no == pin",
    ]
    assert parse_pins(constraints)[1] == ["loose>=1"]
    assert parse_pins("torch==2.13.0+cpu")[1] == ["torch==2.13.0+cpu"]
