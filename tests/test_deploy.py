"""The AWS deploy: the CloudFormation template and the script that builds, pushes and deploys.

No AWS account or Docker engine can be reached from here, so the script is checked three ways:
shellcheck, its --dry-run, and a run against stand-in `aws` and `docker` commands (the only
mocks in these tests) that record what they were asked and answer the stack's outputs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "template.yaml"
SCRIPT = ROOT / "deploy" / "deploy.sh"
BIN = Path(sys.executable).parent
KERNEL_MB = 172  # one viewer's kernel, measured (see benchmarks/bench_page.py)
TAG = re.compile(r"\b(?:[0-9a-f]{4,40}|local)-\d{14}\b")


class _Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags read as {'Fn': value}."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {suffix: value}


_Loader.add_multi_constructor("!", _tag)


def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_Loader)  # noqa: S506


def test_template_passes_cfn_lint() -> None:
    done = subprocess.run(
        [str(BIN / "cfn-lint"), str(TEMPLATE)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_template_runs_one_sized_task_with_its_health_check_and_secrets() -> None:
    t = template()
    resources = t["Resources"]
    repo = resources["Repository"]["Properties"]
    assert repo["ImageScanningConfiguration"]["ScanOnPush"] is True
    assert "imageCountMoreThan" in repo["LifecyclePolicy"]["LifecyclePolicyText"]

    service = resources["Service"]
    assert service["Type"] == "AWS::ECS::ExpressGatewayService"
    props = service["Properties"]
    assert props["HealthCheckPath"] == "/healthz"
    # a page and its WebSocket must reach the same task: one task
    assert props["ScalingTarget"] == {"MinTaskCount": 1, "MaxTaskCount": 1}
    container = props["PrimaryContainer"]
    assert container["ContainerPort"] == 8866
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["PORT"] == "8866"
    secrets = repr(container["Secrets"])
    assert "DRIVENDATA_TOKEN" in secrets and "DRIVENDATA_DATABASE_URL" in secrets

    params = t["Parameters"]
    assert params["OpenAccess"]["Default"] == "false"  # the token is on unless turned off
    memory = int(params["Memory"]["Default"])
    viewers = int(params["MaxViewers"]["Default"])
    # the server and one preheated kernel besides the viewers' kernels
    assert memory >= KERNEL_MB * (viewers + 2) + 256


def test_roles_have_least_privilege() -> None:
    resources = template()["Resources"]
    assert "Policies" not in resources["TaskRole"]["Properties"]
    infra = resources["InfrastructureRole"]["Properties"]
    assert "AmazonECSInfrastructureRoleforExpressGatewayServices" in repr(infra)
    assert "Policies" not in infra
    (policy,) = resources["ExecutionRole"]["Properties"]["Policies"]
    for statement in policy["PolicyDocument"]["Statement"]:
        if "If" in statement:
            statement = statement["If"][1]
        if statement["Resource"] == "*":
            assert statement["Action"] == "ecr:GetAuthorizationToken"
        actions = statement["Action"]
        assert "*" not in (actions if isinstance(actions, str) else " ".join(actions))


def test_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing; `make test-deps` installs it"
    done = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def commands(stderr: str) -> list[str]:
    """The commands the script printed, one line each, with the image tag made constant."""
    return [TAG.sub("TAG", line[2:]) for line in stderr.splitlines() if line.startswith("+ ")]


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no aws, no docker: the dry run needs none
    return subprocess.run(
        [str(SCRIPT), "--dry-run", "--region", "eu-west-1", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_dry_run_prints_every_command_in_order() -> None:
    done = dry_run("--database-url-secret", "arn:aws:secretsmanager:eu-west-1:1:secret:db-AbC")
    assert done.returncode == 0, done.stderr
    steps = commands(done.stderr)
    assert [s.split()[:3] for s in steps] == [
        ["aws", "cloudformation", "deploy"],
        ["aws", "cloudformation", "describe-stacks"],
        ["aws", "ecr", "get-login-password"],
        ["docker", "buildx", "build"],
        ["aws", "cloudformation", "deploy"],
        ["aws", "cloudformation", "describe-stacks"],
        ["aws", "cloudformation", "describe-stacks"],
    ]
    assert "ImageTag" not in steps[0] and "ImageTag=TAG" in steps[4]
    assert "DatabaseUrlSecretArn=arn:aws:secretsmanager" in steps[0]
    assert "--platform linux/amd64" in steps[3] and "--push" in steps[3]
    assert "docker login --username AWS --password-stdin" in steps[2]
    assert "The dashboard: https://<Url>" in done.stdout


def test_dry_run_of_rollback_and_teardown() -> None:
    rollback = commands(dry_run("--rollback", "abc1234-20260101000000").stderr)
    assert not any("docker" in s for s in rollback)
    assert "ImageTag=TAG" in rollback[0]
    teardown = commands(dry_run("--delete").stderr)
    assert [s.split()[:3] for s in teardown] == [
        ["aws", "cloudformation", "delete-stack"],
        ["aws", "cloudformation", "wait"],
    ]


FAKE = """#!/usr/bin/env bash
# A stand-in for {name}: records its arguments, answers the stack's outputs.
# one write per call: the two commands of the login pipeline run at the same time
line="$(printf '%s' {name}; printf ' %q' "$@")"
printf '%s\\n' "$line" >> "$CALLS"
# like docker login, read the password piped in (else the writer may die of SIGPIPE)
case "$*" in *--password-stdin*) cat > /dev/null ;; esac
case "$*" in
  *RepositoryUri*) echo 123456789012.dkr.ecr.eu-west-1.amazonaws.com/drivendata-repo ;;
  *"'Url'"*) echo dd-abc.ecs.eu-west-1.on.aws ;;
  *TokenSecretArn*) echo arn:aws:secretsmanager:eu-west-1:123456789012:secret:tok ;;
  *get-login-password*) echo pw ;;
esac
"""


def test_the_script_runs_what_its_dry_run_prints(tmp_path: Path) -> None:
    """Against stand-in aws and docker commands (mocks: no AWS account is reachable here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("aws", "docker"):
        (bin_dir / name).write_text(FAKE.format(name=name))
        (bin_dir / name).chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls)}
    done = subprocess.run(
        [str(SCRIPT), "--region", "eu-west-1"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "The dashboard: https://dd-abc.ecs.eu-west-1.on.aws" in done.stdout
    ran = [TAG.sub("TAG", c) for c in calls.read_text().splitlines()]
    printed = commands(done.stderr)
    # the login pipeline is printed as one line and runs as two commands, in either order
    login = next(i for i, p in enumerate(printed) if "get-login-password" in p)
    printed[login : login + 1] = sorted(printed[login].split(" | "))
    ran[login : login + 2] = sorted(ran[login : login + 2])
    assert [shlex.split(c) for c in ran] == [shlex.split(p) for p in printed]
    build = next(c for c in ran if c.startswith("docker buildx"))
    assert "123456789012.dkr.ecr.eu-west-1.amazonaws.com/drivendata-repo:TAG" in build


@pytest.mark.parametrize("bad", [["--access", "public"], ["--nope"]])
def test_the_script_refuses_unknown_options(bad: list[str]) -> None:
    done = dry_run(*bad)
    assert done.returncode == 2 and done.stderr.strip().endswith(".")
