"""Print exact pins (`name==version`) for webui's dependency closure as installed in this environment.

The closure is pyproject.toml's dependencies plus every extra (`test`, `cluster`), followed through each installed
distribution's own requirements (markers evaluated here, extras followed). Local version labels are
dropped (`torch==2.13.0`, not `2.13.0+cpu`), so on Linux pip takes PyPI's CUDA build of the same release.
Refresh after upgrading on purpose (README, "Reproducible installs"):

    pip install -U -e ".[test,cluster]" && pip install -U --no-deps spandrel && python -m pytest \
        && python .ci/pin_constraints.py > constraints.txt
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# Installed beside the project with `--no-deps` (README): pinned as installed, their own requirements not followed
# (spandrel asks for torchvision, which PyPI cannot give beside a CPU torch and which upscaling does not need).
NO_DEPS = ("spandrel",)


def _wanted(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    environment = default_environment()
    return any(requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras or {""})


def closure(roots: list[Requirement]) -> dict[str, str]:
    """{canonical name: installed version} of every distribution the roots need, transitively."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [(requirement, {""}) for requirement in roots]
    while pending:
        requirement, parent_extras = pending.pop()
        if not _wanted(requirement, parent_extras):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{requirement.name} is required but not installed; run pip install -e '.[test,cluster]' first")
        pinned[name] = dist.version.split("+")[0]
        extras = {"", *requirement.extras}
        pending += [(Requirement(text), extras) for text in dist.requires or []]
    return pinned


def main() -> int:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [text for group in project["optional-dependencies"].values() for text in group]
    roots = [Requirement(text) for text in [*project["dependencies"], *extras]]
    print(f"# Exact versions CI ran: pip install -c constraints.txt -e \".[test,cluster]\". Written by {Path(__file__).name}")
    print("# (see its docstring or the README to refresh); pyproject.toml keeps the open ranges.")
    pins = closure(roots)
    for name in NO_DEPS:
        try:
            pins[canonicalize_name(name)] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            sys.exit(f"{name} is not installed; run pip install -c constraints.txt --no-deps {name} first")
    for name, version in sorted(pins.items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
