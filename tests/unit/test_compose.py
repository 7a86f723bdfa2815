"""docker-compose.yml's cross-references (CI also validates it against the compose
schema): there is no Docker engine here, so what would break `docker compose up` is
checked by reading the file."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from inferfleet.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
BUILT = [name for name, service in SERVICES.items() if "build" in service]


def interpolated(value: str) -> str:
    """Compose's `${VAR:-default}` with the default (and `${VAR:?msg}` with a stand-in)."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "set", value)


def test_every_dependency_exists_and_is_waited_for_by_its_healthcheck() -> None:
    for name, service in SERVICES.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in SERVICES, f"{name} depends on a missing service {target}"
            assert condition == {"condition": "service_healthy"}, (name, target)
            assert "test" in SERVICES[target].get("healthcheck", {}), f"{target}: no healthcheck"


@pytest.mark.parametrize("name", BUILT)
def test_every_command_of_the_image_is_a_real_cli_entry_point(name: str) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["inferfleet"]' in dockerfile
    command = [interpolated(part) for part in SERVICES[name]["command"]]
    args = _parser().parse_args(command)  # exits (fails the test) on an unknown argument
    assert callable(args.run)


def test_redis_keeps_jobs_and_never_evicts_them() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_models_are_mounted_read_only_where_the_image_looks_for_them() -> None:
    assert "ENV INFERFLEET_MODELS_DIR=/models" in (ROOT / "Dockerfile").read_text()
    for name in ("worker", "demo"):
        assert "./models:/models:ro" in SERVICES[name]["volumes"], name


def test_flower_requires_basic_auth_and_the_demo_is_a_profile() -> None:
    assert "INFERFLEET_FLOWER_BASIC_AUTH" in SERVICES["flower"]["environment"]
    assert SERVICES["demo"]["profiles"] == ["demo"]
    assert "worker" in SERVICES and "deploy" not in SERVICES["worker"]  # --scale works


def test_prometheus_scrapes_the_workers_and_grafana_gets_the_dashboard() -> None:
    for name in ("prometheus", "grafana"):
        for volume in SERVICES[name]["volumes"]:
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), (name, source)
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert job["dns_sd_configs"][0] == {"names": ["worker"], "type": "A", "port": 9808}
    assert "9808" in SERVICES["worker"]["command"]
