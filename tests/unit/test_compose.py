"""compose.yaml is a valid Compose file (checked against the compose specification by the
``compose-spec`` package, a check shown to fail on a broken copy) and runs the whole mesh: every
server on its port behind a healthcheck, everything started once what it needs is healthy,
Prometheus scraping every /metrics, Grafana's dashboard asking only for metrics we export, and
every server and setting the README's production section names."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyOptions
from prometheus_client import REGISTRY

# These register their metrics on import.
import orchestrator.consumer
import orchestrator.runner  # noqa: F401
import servers.analytics.server  # noqa: F401
from clients.registry import SERVERS

ROOT = Path(__file__).parent.parent.parent
COMPOSE = (ROOT / "compose.yaml").read_text()


def validated(text: str) -> dict[str, Any]:
    compose = PyOptions(apply_merge=True).from_yaml(text)
    compose.validate()
    return compose.to_dict()


def test_compose_yaml_passes_the_compose_specification() -> None:
    validated(COMPOSE)


@pytest.mark.parametrize(
    ("broken", "by"),
    [
        ("condition: service_healthy", "condition: healthy"),
        ('ports: ["8701:8701"]', 'ports: ["87o1:8701"]'),
        ("restart: unless-stopped", "restart: sometimes"),
    ],
)
def test_the_specification_check_refuses_a_broken_copy(broken: str, by: str) -> None:
    assert broken in COMPOSE
    with pytest.raises(ValueError):
        validated(COMPOSE.replace(broken, by, 1))


def test_every_server_the_orchestrator_and_the_backends_run_behind_healthchecks() -> None:
    services = validated(COMPOSE)["services"]
    wanted = {*SERVERS, "orchestrator", "worker", "beat", "postgres", "redis", "qdrant", "kafka",
              "prometheus", "grafana"}  # fmt: skip
    assert wanted <= set(services)
    for name, entry in SERVERS.items():
        service = services[name]
        assert service["command"][:2] == ["serve", name]
        assert f"{entry.port}:{entry.port}" in service["ports"]
        assert f"127.0.0.1:{entry.port}/readyz" in " ".join(service["healthcheck"]["test"])
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        needs = service.get("depends_on", {})
        assert isinstance(needs, dict), f"{name}: depends_on without conditions"
        for other, condition in needs.items():
            assert other in services and condition["condition"] == "service_healthy", name
    assert set(SERVERS) <= set(services["orchestrator"]["depends_on"])
    urls = json.loads(services["orchestrator"]["environment"]["SUPPORTMESH_MCP_URLS"])
    assert urls == {name: f"http://{name}:{e.port}/mcp" for name, e in SERVERS.items()}


def test_prometheus_scrapes_every_server_and_grafana_asks_only_for_our_metrics() -> None:
    scraped = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = set(scraped["scrape_configs"][0]["static_configs"][0]["targets"])
    assert targets == {f"{n}:{e.port}" for n, e in SERVERS.items()} | {"orchestrator:8700"}
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/supportmesh.json").read_text())
    exported = {metric.name for metric in REGISTRY.collect()}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"supportmesh_[a-z_]+", target["expr"]):
                base = re.sub(r"_(total|bucket|sum|count)$", "", name)
                assert base in exported, f"{panel['title']}: {name} is not a metric of ours"


def test_every_server_and_setting_the_readmes_production_section_names_is_in_compose() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Going to production with compose", 1)[1].split("\n## ", 1)[0]
    settings = set(re.findall(r"SUPPORTMESH_[A-Z_]+", section))
    assert settings, "the section names no settings"
    for setting in settings:
        assert setting in COMPOSE, f"the README names {setting}; compose.yaml does not set it"
    for name in SERVERS:
        assert f"`{name}`" in section and name in validated(COMPOSE)["services"]


def test_every_supportmesh_container_runs_a_command_the_cli_has() -> None:
    from typer.testing import CliRunner

    from clients.cli import app

    services = validated(COMPOSE)["services"]
    ours = {n: s for n, s in services.items() if s.get("image") == "supportmesh:latest"}
    assert {"worker", "beat", "orchestrator", *SERVERS} <= set(ours)
    for name, service in ours.items():
        command = service["command"][: 2 if service["command"][0] == "serve" else 1]
        got = CliRunner().invoke(app, [*command, "--help"])
        assert got.exit_code == 0, (name, command, got.output)
    # The servers leave background work to the worker and periodic tasks to the beat.
    env = services["worker"]["environment"]
    assert env["SUPPORTMESH_WORKER_IN_PROCESS"] == env["SUPPORTMESH_BEAT_IN_PROCESS"] == "false"
