"""A real Prometheus (Debian's package, installed here when missing) scrapes a running service,
and its query API shows the requests that were sent."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.e2e.conftest import ROOT, Server, free_port, serving

pytestmark = pytest.mark.e2e


def installed(name: str) -> str:
    """``name`` from Debian's prometheus package, installing the package if it is missing."""
    found = shutil.which(name)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"{name} is missing: install Debian's prometheus package (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    found = shutil.which(name)
    assert found, f"{name} still missing after installing prometheus"
    return found


def promtool_check(config: Path) -> None:
    result = subprocess.run(
        [installed("promtool"), "check", "config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_shipped_scrape_config_is_valid() -> None:
    promtool_check(ROOT / "deploy" / "prometheus.yml")


@pytest.fixture
def service(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    with serving(settings, tmp_path) as server:
        yield server


@pytest.fixture
def prometheus(service: Server, tmp_path: Path) -> Iterator[str]:
    """Prometheus on a loopback port, scraping ``service`` every second."""
    target = service.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: embed\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    promtool_check(config)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            installed("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def query(prometheus: str, promql: str) -> float | None:
    result = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}).json()
    assert result["status"] == "success", result
    samples = result["data"]["result"]
    return float(samples[0]["value"][1]) if samples else None


def test_prometheus_scrapes_the_request_counter(service: Server, prometheus: str) -> None:
    for i in range(7):
        assert httpx.post(f"{service.url}/embed", json={"inputs": f"text {i}"}).status_code == 200
    for _ in range(2):
        assert httpx.post(f"{service.url}/embed", json={"inputs": []}).status_code == 422
    wanted = {
        'embed_requests_total{job="embed",route="/embed",status="200"}': 7.0,
        'embed_requests_total{job="embed",route="/embed",status="422"}': 2.0,
        'embed_inputs_total{job="embed",model="all-MiniLM-L6-v2"}': 7.0,
        'up{job="embed"}': 1.0,
    }
    deadline = time.monotonic() + 30
    seen: dict[str, float | None] = {}
    while time.monotonic() < deadline:
        seen = {promql: query(prometheus, promql) for promql in wanted}
        if seen == wanted:
            break
        time.sleep(0.5)
    assert seen == wanted
