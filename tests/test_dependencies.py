"""pyproject.toml's lower bounds keep out releases with known vulnerabilities, and admit what is installed."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement  # pytest depends on it

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# The last vulnerable release of each (advisory): a bound that admits it is a bug.
KNOWN_VULNERABLE = {
    "litestar": ("2.12.1", "CVE-2024-52581: request bodies read without a size limit (and CVE-2024-32982)"),
    "pillow": ("10.2.0", "CVE-2024-28219: buffer overflow in _imagingcms"),
    "tqdm": ("4.66.2", "CVE-2024-34062: CLI arguments passed to eval"),
    "torch": ("2.5.1", "CVE-2025-32434: torch.load code execution with weights_only=True"),
    "transformers": ("4.52.4", "CVE-2025-5197 and earlier: ReDoS, unsafe deserialization"),
    "onnx": ("1.16.2", "CVE-2024-5187: path traversal extracting test data"),
}


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    listed = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return {req.name.lower(): req for req in map(Requirement, listed) if not req.name.startswith("clipalbum")}


@pytest.mark.parametrize("name", sorted(KNOWN_VULNERABLE))
def test_known_vulnerable_releases_are_excluded(name: str) -> None:
    version, advisory = KNOWN_VULNERABLE[name]
    requirement = _requirements()[name]
    assert not requirement.specifier.contains(version, prereleases=True), f"{requirement} admits {advisory}"


def test_every_bound_admits_the_installed_release() -> None:
    for name, requirement in _requirements().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment does not install
        assert requirement.specifier.contains(installed, prereleases=True), f"{requirement} refuses {installed}"
