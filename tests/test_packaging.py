"""The set-up files agree with each other: pyproject.toml, environment.yml, the Makefile, .ci/run."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the dev extra installs tomli there
    import tomli as tomllib

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


def requires_python() -> SpecifierSet:
    return SpecifierSet(pyproject()["project"]["requires-python"])


def requirements() -> dict[str, Requirement]:
    return {(r := Requirement(d)).name: r for d in pyproject()["project"]["dependencies"]}


UPPER_BOUND_OPERATORS = {"<", "<=", "==", "===", "~="}


def test_environment_yml_python_matches_requires_python():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python" + str(requires_python())]  # conda's spelling of the same range, e.g. python>=3.10
    assert "pip" in env["dependencies"]


@pytest.mark.parametrize("version", ["3.10", "3.11", "3.12", "3.13", "3.14", "3.12.1", "3.13.0"])
def test_requires_python_admits_every_cpython_with_wheels_for_all_dependencies(version):
    """docs/python_versions.md: every dependency publishes wheels for CPython 3.10-3.14 (a few pure-Python ones are
    sdists or py3-none wheels), so requires-python admits them all."""
    assert Version(version) in requires_python(), requires_python()


def test_requires_python_is_a_lower_bound_only():
    spec = requires_python()
    assert not [s for s in spec if s.operator in UPPER_BOUND_OPERATORS], f"upper cap in requires-python: {spec}"
    assert [s.version for s in spec if s.operator == ">="] == ["3.10"], spec
    assert Version("3.9") not in spec  # end of life; the newest torch, numpy, av, ipykernel and pytest dropped it


def test_torch_and_torchvision_have_lower_bounds_only():
    deps = requirements()
    for name, lower in (("torch", "2.4"), ("torchvision", "0.19")):
        spec = deps[name].specifier
        assert not [s for s in spec if s.operator in UPPER_BOUND_OPERATORS], f"upper cap on {name}: {spec}"
        assert [s.version for s in spec if s.operator == ">="] == [lower], spec
    assert "opencv-python-headless" in deps  # what grad-cam requires, not opencv-python


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13", "3.14"])
def test_decord_is_restricted_by_machine_only_since_its_wheel_is_py3_none(python):
    """decord 0.6.0's one Linux wheel is py3-none-manylinux2010_x86_64, so it installs on every Python; elsewhere
    fusionkit.data.video reads through PyAV."""
    marker = requirements()["decord"].marker
    assert marker is not None
    assert marker.evaluate({"platform_machine": "x86_64", "python_version": python})
    assert not marker.evaluate({"platform_machine": "aarch64", "python_version": python})


def test_python_versions_doc_records_the_wheel_matrix():
    doc = (REPO / "docs" / "python_versions.md").read_text()
    assert "pip download --only-binary=:all:" in doc
    for version in ("3.10", "3.11", "3.12", "3.13", "3.14"):
        assert version in doc
    for name in ("torch", "torchvision", "numpy", "decord", "av", "opencv-python-headless", "grad-cam"):
        assert f"| {name} |" in doc, name


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


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}\s*:?=\s*(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, f"no {name} in the Makefile"
    return match.group(1).strip()


def test_makefile_python_min_is_the_lower_bound_of_requires_python():
    assert [s.version for s in requires_python() if s.operator == ">="] == [makefile_variable("PYTHON_MIN")]
    candidates = makefile_variable("PYTHON_CANDIDATES").split()
    assert candidates[0] == "python3"  # a machine whose python3 is recent enough keeps it: CI stays on its 3.11
    assert "python3.11" in candidates


def make_python(directory: Path, path: str | None, **variables: str) -> subprocess.CompletedProcess:
    """What the Makefile in ``directory`` takes for $(PYTHON), found on ``path`` (None: this PATH)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS", "MFLAGS")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([make, "-s", "-C", str(directory), "--eval", "print-python: ; $(info $(PYTHON))",
                           "print-python", *(f"{k}={v}" for k, v in variables.items())],
                          capture_output=True, text=True, env=env, timeout=60)


def fake_interpreters(bin_dir: Path) -> None:
    """python3 too old (its check exits 1), python3.13 an inactive pyenv shim (exits 127), python3.12 this Python."""
    bin_dir.mkdir()
    for name, code in (("python3", 1), ("python3.13", 127)):
        (bin_dir / name).write_text(f"#!/bin/sh\nexit {code}\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python3.12").symlink_to(sys.executable)


def test_makefile_uses_python3_where_it_satisfies_requires_python():
    found = make_python(REPO, None)
    assert found.returncode == 0, found.stderr
    chosen = found.stdout.strip()
    version = subprocess.run([chosen, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert Version(version) in requires_python(), (chosen, version)
    python3 = shutil.which("python3")
    python3_ok = python3 and subprocess.run([python3, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                                            capture_output=True, text=True).stdout.strip() == "True"
    if python3_ok:
        assert chosen == python3


def test_makefile_passes_over_interpreters_that_are_too_old_or_do_not_run(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    fake_interpreters(tmp_path / "bin")
    found = make_python(tmp_path, str(tmp_path / "bin"))
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == str(tmp_path / "bin" / "python3.12")


def test_make_install_says_so_when_no_interpreter_is_suitable(tmp_path):
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "bin").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "MAKEFLAGS", "MFLAGS")}
    env["PATH"] = str(tmp_path / "bin")
    for extra in ([], [f"PYTHON={tmp_path / 'bin' / 'python3'}"]):
        (tmp_path / "bin" / "python3").write_text("#!/bin/sh\nexit 1\n")  # too old
        (tmp_path / "bin" / "python3").chmod(0o755)
        result = subprocess.run([make, "-C", str(tmp_path), "install", *extra],
                                capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode != 0
        assert "no Python >= 3.10 found" in result.stderr, result.stderr
        assert not (tmp_path / ".venv").exists()


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
