"""What a newcomer meets first holds: the README's code passes the project's own ruff and
mypy, the LICENSE is the license pyproject declares, and the browser tests fail (not skip)
when the browser is missing unless told to skip."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from .helpers import environ_without_destinations

ROOT = Path(__file__).resolve().parents[1]

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

SKIP_BROWSER_TESTS = "LEMMA_SKIP_BROWSER_TESTS"

FRAGMENT = "<!-- fragment -->"
"""The line before a README code block that is deliberately an excerpt (not checked)."""


@dataclass
class Block:
    line: int  # of the README, where the code starts
    code: str
    fragment: bool


def readme_python_blocks() -> list[Block]:
    """Every ```python block of the README."""
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.strip() != "```python":
            continue
        end = lines.index("```", number + 1)
        before = [text.strip() for text in lines[:number] if text.strip()]
        fragment = bool(before) and before[-1] == FRAGMENT
        blocks.append(Block(number + 2, "\n".join(lines[number + 1 : end]) + "\n", fragment))
    return blocks


def checked_blocks(directory: Path) -> list[Path]:
    """The README's non-fragment blocks written to ``directory``, one module each, named
    after the README line they start on."""
    paths = []
    for block in readme_python_blocks():
        if not block.fragment:
            path = directory / f"readme_line_{block.line}.py"
            path.write_text(block.code)
            paths.append(path)
    return paths


def venv_tool(name: str) -> str:
    """A tool installed beside this interpreter (the project's venv)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed beside {sys.executable}"
    return found


def test_the_quick_start_snippets_are_checked_not_fragments() -> None:
    checked = [block.code for block in readme_python_blocks() if not block.fragment]
    assert any("FastAPI()" in code and "LemmaMiddleware" in code for code in checked)
    assert any("Flask(__name__)" in code and "LemmaFlask" in code for code in checked)


def test_the_readme_python_blocks_pass_ruff(tmp_path: Path) -> None:
    """Run where the blocks are, as in a user's project (``lemma_middleware`` is a
    third-party import there), with the project's rules."""
    paths = checked_blocks(tmp_path)
    result = subprocess.run(
        [venv_tool("ruff"), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml")]
        + [path.name for path in paths],  # (relative: ruff's first-party is what is here)
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_readme_python_blocks_pass_mypy(tmp_path: Path) -> None:
    """The project's mypy settings (strict), on the blocks only."""
    paths = checked_blocks(tmp_path)
    result = subprocess.run(
        [venv_tool("mypy"), "--config-file", str(ROOT / "pyproject.toml")]
        + [str(path) for path in paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_license_file_is_the_license_pyproject_declares() -> None:
    project = PYPROJECT["project"]
    declared = project["license"]
    assert project["license-files"], "pyproject declares no license-files"
    for name in project["license-files"]:
        text = (ROOT / name).read_text()
        assert declared in text.splitlines()[0], (name, declared)
        assert re.search(rf"Copyright \(c\) \d{{4}} the {project['name']} authors", text)


def test_the_build_backend_reads_an_spdx_license_and_license_files() -> None:
    """A ``license`` string and ``license-files`` (PEP 639) need setuptools 77 or later;
    an older one refuses the project's configuration."""
    requirements = [Requirement(text) for text in PYPROJECT["build-system"]["requires"]]
    [setuptools] = [r for r in requirements if r.name == "setuptools"]
    assert isinstance(PYPROJECT["project"]["license"], str)
    assert not setuptools.specifier.contains("76.9"), setuptools


def run_browser_tests(tmp_path: Path, **env: str) -> tuple[int, str]:
    """tests/test_inbox_web.py run by pytest with no browser on ``PATH`` (and no
    ``LEMMA_*`` variable but ``env``): its exit status and report."""
    web_tests = str(ROOT / "tests" / "test_inbox_web.py")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", web_tests],
        env={**environ_without_destinations(), "PATH": str(tmp_path), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode, result.stdout + result.stderr


def test_the_web_view_tests_fail_without_a_browser_and_skip_when_told(tmp_path: Path) -> None:
    """``PATH`` is an empty folder: the run fails naming what to install and how to skip."""
    status, report = run_browser_tests(tmp_path)
    assert status != 0 and "skipped" not in report, report
    assert "chromium-driver" in report and f"{SKIP_BROWSER_TESTS}=1" in report, report
    status, report = run_browser_tests(tmp_path, **{SKIP_BROWSER_TESTS: "1"})
    assert status in (0, 5) and "skipped" in report, report  # 5: none left to run
    assert f"{SKIP_BROWSER_TESTS}=1" in report, report
