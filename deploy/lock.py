"""Write requirements.lock: every package the served image needs, pinned, resolved by pip.

The roots are the package's dependencies in pyproject.toml plus IMAGE_EXTRAS; JupyterLab and
the test tools stay out. Run it after changing a dependency, on the image's Python (3.11):

    .venv/bin/python deploy/lock.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"

# Anything the image needs beyond pyproject.toml's dependencies (the kernel is one of those now).
IMAGE_EXTRAS: list[str] = []

HEADER = """\
# The served image's dependencies, pinned (Python 3.11, linux/amd64). Written by
# deploy/lock.py from pyproject.toml's dependencies plus {extras}; do not edit by hand.
# The Dockerfile installs exactly these with --no-deps, then checks them with pip check.
"""


def roots() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *IMAGE_EXTRAS]


def resolve() -> dict[str, str]:
    """Return {name: version} for the roots and everything they need, as pip resolves them."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
             "--no-cache-dir", "--report", str(report), *roots()],
            check=True,
            stderr=subprocess.DEVNULL,  # this machine's pip config warns once per package
        )
        installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def main() -> None:
    pins = resolve()
    lines = [f"{name}=={pins[name]}" for name in sorted(pins)]
    extras = ", ".join(IMAGE_EXTRAS) or "nothing else"
    LOCK.write_text(HEADER.format(extras=extras) + "\n".join(lines) + "\n")
    print(f"Wrote {len(lines)} pins to {LOCK.relative_to(ROOT)}.")


if __name__ == "__main__":
    main()
