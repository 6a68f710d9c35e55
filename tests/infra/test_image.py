"""The flows image: lint-clean Dockerfile, only locked packages, every flow imports, non-root."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "clang", "cc")
LOCK_FLAGS = {"-c", "--constraint", "-r", "--requirement"}
IMAGE_CHECK = ROOT / "deploy" / "image_check.py"
XGBOOST_ARG = "XGBOOST_WHEEL"


@dataclass
class Stage:
    """One FROM ... stage of a Dockerfile: its base and its instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args_of(self, keyword: str) -> list[str]:
        """Arguments of every instruction with this keyword."""
        return [args for kw, args in self.instructions if kw == keyword]


def logical_lines(text: str) -> list[str]:
    """Instructions with continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse_stages(text: str) -> list[Stage]:
    """The Dockerfile's stages, in order."""
    stages: list[Stage] = []
    for line in logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
    return stages


def pip_installs(run_args: str) -> list[list[str]]:
    """Every `pip install ...` command in a RUN, as argument lists."""
    commands = re.split(r"&&|;|\|\|", run_args)
    found = []
    for command in commands:
        words = shlex.split(command)
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":
                found.append(words[i + 2 :])
    return found


def requirements_in(args: list[str]) -> list[str]:
    """Positional requirement arguments of a pip install (options and their values skipped)."""
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "-t"}
    reqs, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            reqs.append(arg)
    return reqs


def is_pinned_or_local(requirement: str) -> bool:
    """`name==version`, or the project itself (`.`), whose dependencies the lock constrains."""
    if requirement == "." or requirement.startswith(("./", "/")):
        return True
    specifiers = list(Requirement(requirement).specifier)
    return len(specifiers) == 1 and specifiers[0].operator == "=="


def normalise(name: str) -> str:
    """PEP 503 name: case, `_` and `.` insensitive."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions() -> dict[str, str]:
    """constraints.txt as {normalised name: version}; only `==` lines count as pins."""
    pins = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name.split("[")[0])] = version.strip()
    return pins


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    """The repo's Dockerfile, parsed."""
    return parse_stages(DOCKERFILE.read_text())


# --- (a) lint -------------------------------------------------------------------------------


def _hadolint(path: Path) -> list[dict]:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "-f", "json", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return json.loads(result.stdout or "[]")


def test_dockerfile_passes_hadolint() -> None:
    findings = _hadolint(DOCKERFILE)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    codes = {f["code"] for f in _hadolint(bad)}
    assert {"DL3007", "DL3013"} <= codes


# --- (b) exactly the locked set ----------------------------------------------------------------


def test_parser_sees_the_pip_installs(stages: list[Stage]) -> None:
    runs = [run for stage in stages for run in stage.args_of("RUN")]
    assert len([cmd for run in runs for cmd in pip_installs(run)]) >= 2
    (parsed,) = pip_installs("apt-get update && pip install --no-cache-dir -c x .")
    assert parsed == ["--no-cache-dir", "-c", "x", "."]


def test_every_pip_install_uses_the_lock_and_pins(stages: list[Stage]) -> None:
    for stage in stages:
        for run in stage.args_of("RUN"):
            for args in pip_installs(run):
                assert LOCK_FLAGS & set(args), f"pip install without the lock: {args}"
                assert "constraints.txt" in args, f"pip install not constrained by the lock: {args}"
                unpinned = [r for r in requirements_in(args) if not is_pinned_or_local(r)]
                assert not unpinned, f"unpinned packages in the image: {unpinned}"


def test_pin_check_can_fail() -> None:
    assert not is_pinned_or_local("requests")
    assert not is_pinned_or_local("requests>=2")
    assert is_pinned_or_local("pip==26.3")


def test_package_builds_without_fetching_build_tools(stages: list[Stage]) -> None:
    project_installs = [
        args
        for stage in stages
        for run in stage.args_of("RUN")
        for args in pip_installs(run)
        if "." in requirements_in(args)
    ]
    assert project_installs, "the image never installs the project"
    for args in project_installs:
        # Build isolation would download an unpinned setuptools to build `.`; an sdist would
        # need a compiler the slim base does not have.
        assert "--no-build-isolation" in args
        assert "--only-binary=:all:" in args


def test_lock_pins_every_runtime_dependency() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = locked_versions()
    for declared in pyproject["project"]["dependencies"]:
        requirement = Requirement(declared)
        name = normalise(requirement.name)
        assert name in pins, f"{requirement.name} is declared but not pinned in constraints.txt"
        # A lock that contradicts pyproject would make `pip install -c constraints.txt .` fail.
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement.specifier}"
        )


def test_both_stages_use_the_same_pinned_base(stages: list[Stage]) -> None:
    bases = {stage.base for stage in stages}
    # The venv copied between stages symlinks to the base's interpreter: one base for both.
    assert len(bases) == 1
    (base,) = bases
    # Tag for humans, digest for the bytes: a re-pushed tag cannot change what we build on.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base)


# --- (c) every flow module imports ------------------------------------------------------------


def test_image_check_imports_every_flow_module(tmp_path: Path) -> None:
    home = ROOT / ".mlre" / "test-home" / "image-check"
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLRE_HOME": str(home),
        "PREFECT_HOME": str(home / "prefect"),
        "TMPDIR": str(home / "tmp"),
        "MPLCONFIGDIR": str(home / "matplotlib"),
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
    }
    # As the Dockerfile runs it in the CPU image (this venv has the lock's xgboost-cpu).
    env["MLRE_XGBOOST_WHEEL"] = "xgboost-cpu"
    result = subprocess.run(
        [sys.executable, str(IMAGE_CHECK)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "xgboost from xgboost-cpu, built without CUDA" in result.stdout
    expected = sorted(
        f"flows.{p.stem}" for p in (ROOT / "flows").glob("*.py") if p.stem != "__init__"
    )
    assert expected
    for module in expected:
        assert module in result.stdout


def test_image_check_names_a_failing_module(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "__init__.py").write_text("")
    (tmp_path / "flows" / "good.py").write_text("VALUE = 1\n")
    (tmp_path / "flows" / "broken.py").write_text("import mlre_no_such_module\n")
    script = ROOT / "deploy" / "image_check.py"
    code = (
        "import runpy, sys; from pathlib import Path; "
        f"m = runpy.run_path({str(script)!r}); sys.exit(m['main'](Path({str(tmp_path)!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert "flows.broken" in result.stderr
    assert "mlre_no_such_module" in result.stderr
    assert "flows.good" not in result.stderr


# --- (d) the final stage ----------------------------------------------------------------------


def test_final_stage_runs_as_a_numeric_non_root_user(stages: list[Stage]) -> None:
    users = stages[-1].args_of("USER")
    assert users, "the final stage never switches away from root"
    user = users[-1].split(":")[0]
    assert user.isdigit()
    assert int(user) >= 10000


def test_final_stage_has_no_build_tools(stages: list[Stage]) -> None:
    final = stages[-1]
    for run in final.args_of("RUN"):
        words = set(shlex.split(run.replace("&&", " ")))
        assert not words & set(BUILD_TOOLS), f"build tools in the final stage: {run}"
        assert "apt-get" not in words
        assert "pip" not in words
    copies_from_builder = [c for c in final.args_of("COPY") if c.startswith("--from=")]
    assert copies_from_builder == [f"--from={stages[0].name} /opt/venv /opt/venv"]


def test_final_stage_copies_only_code_and_the_venv(stages: list[Stage]) -> None:
    sources = {
        args.split()[0] for args in stages[-1].args_of("COPY") if not args.startswith("--from=")
    }
    # serving/ and relay/ too: the same image runs the prediction service (`python -m serving`)
    # and the alert relay (`python -m relay`).
    assert sources == {
        "flows/",
        "mlre/",
        "serving/",
        "relay/",
        "cli/",
        "feature_repo/",
        "slos/",
        "deploy/image_check.py",
    }


def test_final_stage_environment_and_command(stages: list[Stage]) -> None:
    final = stages[-1]
    env = " ".join(final.args_of("ENV"))
    for setting in ("PATH=/opt/venv/bin:$PATH", "PYTHONDONTWRITEBYTECODE=1", "MLRE_HOME=/tmp/mlre"):
        assert setting in env
    assert final.args_of("WORKDIR") == ["/opt/mlre"]
    # The worker passes `prefect flow-run execute` as args: an ENTRYPOINT would swallow them.
    assert not final.args_of("ENTRYPOINT")
    assert json.loads(final.args_of("CMD")[-1]) == ["python", "deploy/image_check.py"]


def test_dockerignore_keeps_state_and_tests_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".mlre", ".git", "tests", "bench/results", "docs"} <= ignored


# --- (e) the CPU and the GPU image: one build arg picks the xgboost build -------------------


def _stage(stages: list[Stage], name: str) -> Stage:
    (stage,) = [s for s in stages if s.name == name]
    return stage


def _swap_run(stage: Stage) -> str:
    """The builder's RUN that acts on the build arg."""
    (run,) = [run for run in stage.args_of("RUN") if f"${XGBOOST_ARG}" in run]
    return run


def test_build_arg_defaults_to_the_cpu_wheel_in_both_stages(stages: list[Stage]) -> None:
    before_first_from = DOCKERFILE.read_text().split("\nFROM ", 1)[0]
    # One default for both stages: a global ARG, redeclared (without a value) in each stage.
    assert re.search(rf"^ARG {XGBOOST_ARG}=xgboost-cpu$", before_first_from, re.MULTILINE)
    for stage in stages:
        assert XGBOOST_ARG in stage.args_of("ARG"), f"stage {stage.name} never declares it"
        env = " ".join(stage.args_of("ENV"))
        # image_check (at build time and as the image's command) knows which build to expect.
        assert f"MLRE_XGBOOST_WHEEL=${XGBOOST_ARG}" in env


def test_builder_swaps_the_wheel_after_the_install_and_before_the_check(
    stages: list[Stage],
) -> None:
    builder = stages[0]
    order = [(kw, args) for kw, args in builder.instructions if kw in {"ARG", "RUN"}]
    runs = [args for kw, args in order if kw == "RUN"]
    install = next(
        i for i, run in enumerate(runs) if any("." in requirements_in(a) for a in pip_installs(run))
    )
    swap = runs.index(_swap_run(builder))
    check = runs.index("python deploy/image_check.py")
    assert install < swap < check
    # The arg is declared after the big install, so both images share its cached layer.
    arg_at = order.index(("ARG", XGBOOST_ARG))
    assert order.index(("RUN", runs[install])) < arg_at < order.index(("RUN", runs[swap]))


def test_cuda_build_is_pinned_to_the_locked_version(stages: list[Stage]) -> None:
    pins = locked_versions()
    assert "xgboost" not in pins, "the lock is the CPU install: xgboost (CUDA) must not be in it"
    (args,) = pip_installs(_swap_run(stages[0]))
    requirements = {Requirement(r).name: r for r in requirements_in(args)}
    assert set(requirements) == {"xgboost", "nvidia-nccl-cu12"}
    # The GPU image trains with the same XGBoost release as the CPU image and `make test`.
    assert requirements["xgboost"] == f"xgboost=={pins['xgboost-cpu']}"
    assert "--only-binary=:all:" in args
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {normalise(Requirement(d).name) for d in dependencies}
    assert "xgboost-cpu" in names
    assert "xgboost" not in names, "pyproject must never pull both xgboost distributions"


def _run_swap(run: str, wheel: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list]:
    """The swap's shell with a stub `pip` that logs its arguments instead of installing."""
    log = tmp_path / f"pip-{wheel}.log"
    stub = tmp_path / "bin" / "pip"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n')
    stub.chmod(0o755)
    result = subprocess.run(
        ["/bin/sh", "-c", run],
        env={"PATH": f"{stub.parent}:/usr/bin:/bin", XGBOOST_ARG: wheel},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_swap_shell_per_build_arg_value(stages: list[Stage], tmp_path: Path) -> None:
    run = _swap_run(stages[0])
    result, calls = _run_swap(run, "xgboost-cpu", tmp_path)
    assert result.returncode == 0
    assert calls == [], "the CPU image keeps the locked xgboost-cpu untouched"

    result, calls = _run_swap(run, "xgboost", tmp_path)
    assert result.returncode == 0, result.stderr
    # Uninstall first: both distributions own xgboost/; removing xgboost-cpu after installing
    # xgboost would delete the CUDA build's files.
    assert calls[0] == "uninstall --yes xgboost-cpu"
    assert calls[1].startswith("install ")
    assert "xgboost==" in calls[1]
    assert len(calls) == 2

    result, calls = _run_swap(run, "xgboost-gpu", tmp_path)
    assert result.returncode != 0
    assert "xgboost-gpu" in result.stderr
    assert calls == []


def test_image_check_refuses_the_wrong_xgboost_build() -> None:
    import runpy

    check = runpy.run_path(str(IMAGE_CHECK))
    # This venv holds the lock's CPU-only build, as the CPU image does.
    assert check["xgboost_problems"]("xgboost-cpu") == []
    problems = "\n".join(check["xgboost_problems"]("xgboost"))
    assert "found ['xgboost-cpu']" in problems
    assert "USE_CUDA=False" in problems
    assert "'cuda'" not in problems
    (unknown,) = check["xgboost_problems"]("xgboost-gpu")
    assert "MLRE_XGBOOST_WHEEL='xgboost-gpu'" in unknown
    assert check["check_xgboost"]("xgboost") == 1
    assert check["check_xgboost"](None) == 0  # outside an image build nothing is expected
