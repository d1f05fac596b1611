"""pyproject.toml declares compatible ranges; constraints.txt pins the exact tested versions that make
installs, one for every declared dependency, each inside its range."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


def test_every_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    pins = dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", (REPO / "constraints.txt").read_text(), re.M))
    assert {r.name for r in reqs} == set(pins)
    for r in reqs:
        assert Version(pins[r.name]) in r.specifier, (r.name, pins[r.name], str(r.specifier))
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    for python in ("3.11", "3.12", "3.13"):  # the GPU machines run 3.12
        assert Version(python) in SpecifierSet(project["requires-python"])
