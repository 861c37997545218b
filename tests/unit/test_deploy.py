"""Deployment files, checked offline (no Docker engine or cluster here): hadolint on the Dockerfile, which
must run the README's own commands; kubernetes-validate (strict) on the manifests, whose probes, GPU,
grace period and autoscaling metric must match what the server really serves."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from parakeet.core import metrics
from parakeet.core.settings import Settings

from helpers import ROOT

BIN = Path(sys.executable).parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
UVICORN_GRACEFUL_S = 30  # serve.sh: --timeout-graceful-shutdown 30


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_deploy_dockerfile_passes_hadolint() -> None:
    out = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_deploy_image_runs_the_readmes_commands_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "RUN scripts/setup.sh requirements.txt" in dockerfile  # what serve.sh runs first
    assert 'CMD ["scripts/serve.sh"]' in dockerfile and "./scripts/serve.sh" in readme.split("\n\n")[2]
    assert "USER 10001:10001" in dockerfile and "STOPSIGNAL SIGTERM" in dockerfile
    assert "/health/ready" in dockerfile.split("HEALTHCHECK", 1)[1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and ".git/" in ignored


def test_deploy_compose_reserves_a_gpu_and_outlasts_the_drain() -> None:
    (compose,) = docs(ROOT / "compose.yaml")
    service = compose["services"]["parakeet"]
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    grace_s = int(service["stop_grace_period"].removesuffix("s"))
    assert grace_s > UVICORN_GRACEFUL_S + Settings().shutdown_drain_s
    assert "/data/hf" in service["volumes"][0]


def test_deploy_manifests_pass_strict_validation() -> None:
    cmd = [str(BIN / "kubernetes-validate"), "--strict", "--quiet", *map(str, MANIFESTS)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_deploy_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "deployment.yaml"
    shutil.copy(ROOT / "deploy" / "kubernetes" / "deployment.yaml", broken)
    broken.write_text(broken.read_text().replace("readinessProbe:", "readynessProbe:"))
    out = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(broken)], capture_output=True, text=True)
    assert out.returncode != 0 and "readynessProbe" in out.stdout + out.stderr


def test_deploy_pod_matches_the_server() -> None:
    from server import create_app

    (deployment, *_) = docs(ROOT / "deploy" / "kubernetes" / "deployment.yaml")  # (and its volume claims)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    paths = set(create_app(on_fatal=pytest.fail).openapi()["paths"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in paths
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "WEB_CONCURRENCY", "value": "1"} in container["env"]
    assert pod["terminationGracePeriodSeconds"] > UVICORN_GRACEFUL_S + Settings().shutdown_drain_s
    (hpa,) = docs(ROOT / "deploy" / "kubernetes" / "hpa.yaml")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == metrics.BACKLOG._name


def test_deploy_grafana_dashboard_uses_metrics_that_exist() -> None:
    import json
    import re

    from prometheus_client.metrics import MetricWrapperBase

    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"parakeet_[a-z_]+", e)}
    series = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {
        m._name + suffix
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
        for suffix in series[m._type]
    }
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for needed in ("requests per second", "p95", "queue", "batch size", "rtfx", "rejections"):
        assert needed in titles
