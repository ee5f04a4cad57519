"""Dockerfile and docker-compose.yml, checked without a Docker engine (none runs here).

hadolint lints the Dockerfile; the compose file is parsed, every file it mounts must exist,
and every host name, port and path it relies on must agree with the exporter and the configs.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from conftest import REPO, run_tool

from exporter.cli import DEFAULT_LISTEN
from exporter.server import parse_listen_address

DOCKERFILE = (REPO / "Dockerfile").read_text()
EXPORTER_PORT = parse_listen_address(DEFAULT_LISTEN)[1]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return data


def test_hadolint_is_clean() -> None:
    result = run_tool("hadolint", "Dockerfile")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_dockerfile_shape() -> None:
    """Multi-stage, slim base, non-root, health check on /-/healthy, the default port."""
    bases = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    assert len(bases) >= 2
    assert all(base.endswith("-slim") for base in bases)
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.MULTILINE)
    assert users
    assert users[-1] not in {"0", "root"}
    assert re.search(r"^HEALTHCHECK .*\n?.*/-/healthy", DOCKERFILE, re.MULTILINE)
    assert f"127.0.0.1:{EXPORTER_PORT}/-/healthy" in DOCKERFILE
    assert re.findall(r"^EXPOSE (\d+)", DOCKERFILE, re.MULTILINE) == [str(EXPORTER_PORT)]
    assert "--config.file=/etc/asyncjob-exporter/config.yaml" in DOCKERFILE
    # The storage directory is a volume the non-root user owns.
    assert "--storage.path=/var/lib/asyncjob-exporter" in DOCKERFILE
    assert 'VOLUME ["/var/lib/asyncjob-exporter"]' in DOCKERFILE
    assert f"chown {users[-1]} /var/lib/asyncjob-exporter" in DOCKERFILE


def test_compose_mounts_exist() -> None:
    """Bind mounts name files of the repository; named volumes are declared (the store's)."""
    stack = compose()
    services = stack["services"]
    assert set(services) == {"asyncjob-exporter", "prometheus", "alertmanager", "grafana"}
    mounts = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            host = volume.split(":")[0]
            if not host.startswith("."):
                assert host in stack["volumes"], f"{name} mounts undeclared volume {host}"
                continue
            assert (REPO / host).exists(), f"{name} mounts {host}, which does not exist"
            mounts += 1
    assert mounts >= 5
    store = services["asyncjob-exporter"]["volumes"]
    assert "asyncjob-data:/var/lib/asyncjob-exporter" in store


def test_compose_wiring_agrees_with_the_configs() -> None:
    services = compose()["services"]
    exporter = services["asyncjob-exporter"]
    assert "--demo" in exporter["command"]
    assert f"--web.listen-address=:{EXPORTER_PORT}" in exporter["command"]
    assert f"{EXPORTER_PORT}:{EXPORTER_PORT}" in exporter["ports"]
    assert exporter["build"] == "."

    def mounted(service: str, target: str) -> str:
        for volume in services[service]["volumes"]:
            host, path = str(volume).split(":")[:2]
            if path == target:
                return host
        raise AssertionError(f"{service} does not mount {target}")

    prometheus_config = yaml.safe_load(
        (REPO / mounted("prometheus", "/etc/prometheus/prometheus.yml")).read_text()
    )
    (scrape,) = prometheus_config["scrape_configs"]
    assert scrape["static_configs"][0]["targets"] == [f"asyncjob-exporter:{EXPORTER_PORT}"]
    rules = REPO / mounted("prometheus", "/etc/prometheus/rules")
    rule_files = [rules / name.removeprefix("rules/") for name in prometheus_config["rule_files"]]
    assert sorted(rule_files) == sorted(rules.glob("*.yaml"))  # alerts and recording rules
    am_target = prometheus_config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0]
    am_host, am_port = am_target.split(":")
    assert am_host in services
    assert f"{am_port}:{am_port}" in services["alertmanager"]["ports"]
    assert (
        mounted("alertmanager", "/etc/alertmanager/alertmanager.yml")
        == "./alerting/alertmanager.example.yaml"
    )

    provisioning = REPO / mounted("grafana", "/etc/grafana/provisioning")
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ][0]
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]
    provider = yaml.safe_load((provisioning / "dashboards" / "asyncjob.yaml").read_text())[
        "providers"
    ][0]
    dashboards = mounted("grafana", provider["options"]["path"])
    assert sorted(p.name for p in (REPO / dashboards).glob("*.json")) == [
        "asyncjob-job.json",
        "asyncjob-overview.json",
    ]
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/")
