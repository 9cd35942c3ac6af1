"""The set-up files agree with each other: pyproject.toml, environment.yml, the Makefile, .ci/run."""
from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def conda_pip_requirements() -> list[str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml should have exactly one pip: section"
    return pip_sections[0]


def test_environment_yml_mirrors_pyproject_dependencies_and_dev_extra():
    project = pyproject()["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["dev"]
    pip = conda_pip_requirements()
    assert "-e ." in pip  # installs fusionkit itself
    got = [r for r in pip if r != "-e ."]
    assert len(got) == len(set(got)), "duplicate requirement in environment.yml"
    assert sorted(got) == sorted(expected), {"only in environment.yml": sorted(set(got) - set(expected)),
                                             "only in pyproject.toml": sorted(set(expected) - set(got))}


def test_environment_yml_python_matches_requires_python():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]
    assert pyproject()["project"]["requires-python"] == ">=3.11,<3.12"
    assert "pip" in env["dependencies"]


def test_torch_ranges_do_not_require_anything_newer_than_the_design_allows():
    deps = {re.split(r"[<>=;! ]", d, maxsplit=1)[0]: d for d in pyproject()["project"]["dependencies"]}
    assert deps["torch"] == "torch>=2.4,<=2.14.1"
    assert deps["torchvision"] == "torchvision>=0.19,<=0.29.1"
    assert "opencv-python-headless" in deps  # what grad-cam requires, not opencv-python


def test_the_fusionkit_command_is_the_cli_main():
    assert pyproject()["project"]["scripts"]["fusionkit"] == "fusionkit.cli:main"


def test_ci_runs_make_test():
    script = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert "make test" in commands
    assert script.startswith("#!")
    assert (REPO / ".ci" / "run").stat().st_mode & 0o111, ".ci/run must be executable"


def makefile_recipe(target: str) -> list[str]:
    """The recipe lines of a Makefile target (tab-indented lines after 'target:')."""
    lines = (REPO / "Makefile").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(target)}\s*:(?!=)", line):
            recipe = []
            for follow in lines[i + 1:]:
                if not follow.startswith("\t"):
                    break
                recipe.append(follow.strip())
            return recipe
    raise AssertionError(f"no '{target}:' target in the Makefile")


def test_make_test_runs_pytest_after_installing():
    recipe = makefile_recipe("test")
    assert any(re.search(r"-m pytest\b|\bpytest\b", line) for line in recipe), recipe
    test_line = next(line for line in (REPO / "Makefile").read_text().splitlines() if line.startswith("test:"))
    assert "$(STAMP)" in test_line  # installs the package with its dev extras first
    assert any('pip install -e ".[dev]"' in line for line in makefile_recipe("$(STAMP)"))


def test_pytest_runs_the_tests_folder():
    assert pyproject()["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]


def test_every_package_file_is_tracked_by_git_not_ignored():
    """A stray ignore pattern (e.g. `data/` for the data folder) must not hide package sources."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    sources = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "fusionkit").rglob("*.py"))
    result = subprocess.run(["git", "check-ignore", "--no-index", *sources], cwd=REPO, capture_output=True, text=True)
    ignored = result.stdout.split()
    assert ignored == [], f"git ignores package files (fix .gitignore, e.g. '/data/' instead of 'data/'): {ignored}"
