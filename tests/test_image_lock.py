"""The images' pinned packages (image/requirements*.txt) are regenerated whenever pyproject's dependencies change."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support.helpers import REPO_ROOT

LOCKS = (REPO_ROOT / "image/requirements.txt", REPO_ROOT / "image/requirements-build.txt")


def _digest_line(path: Path) -> str:
    return next(line for line in path.read_text().splitlines() if line.startswith("# dependencies: "))


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_locks_were_made_from_the_current_dependency_list() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_lock", REPO_ROOT / "image/lock.py")
    assert spec and spec.loader
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    for path in LOCKS:
        assert _digest_line(path) == f"# dependencies: {lock.dependencies_digest()}", (
            f"{path.name} is stale: pyproject's dependencies changed; run `make image-lock` and commit"
        )


def test_every_dependency_is_pinned_to_a_version_it_allows() -> None:
    pins = _pins(LOCKS[0])
    assert all(version for version in pins.values()), pins  # exact `name==version` lines only
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in map(Requirement, deps):
        if dep.marker and not dep.marker.evaluate({"sys_platform": "linux", "platform_machine": "x86_64"}):
            continue
        name = canonicalize_name(dep.name)
        assert name in pins, f"{name} is not pinned in image/requirements.txt: run `make image-lock`"
        assert dep.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {dep}"
    assert not set(_pins(LOCKS[1])) & set(pins), "a build tool is pinned twice"
