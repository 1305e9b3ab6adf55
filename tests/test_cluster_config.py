"""cluster.yaml is checked offline with Ray's own launcher validation (schema + defaults),
the same code `ray up` runs before touching a cloud (private API: pinned Ray version)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_validation():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    prepared = _validate(config)
    types = prepared["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}  # the head runs the driver and MLflow, no trials
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    setup = " ".join(prepared["setup_commands"])
    import ray

    assert f"ray[tune]=={ray.__version__}" in setup  # the same Ray version as here
    starts = prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=disabled" in c for c in starts if "ray start" in c)
    servers = [c for c in prepared["head_start_ray_commands"] if "mlflow server" in c]
    assert servers and all("--host 127.0.0.1" in c for c in servers)  # loopback: the driver is local
    assert all("--dashboard-host=127.0.0.1" in c for c in starts if "ray start --head" in c)


@pytest.mark.parametrize(("key", "value"), [("initial_workers", 2), ("target_utilization_fraction", 0.8)])
def test_stale_keys_are_rejected(key, value):
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config[key] = value
    with pytest.raises(Exception):
        _validate(config)


def test_fractional_node_resources_are_rejected():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
    with pytest.raises(Exception):
        _validate(config)


def test_onprem_variant_in_docs_passes_validation():
    """The on-prem (local provider) variant documented in docs/studies.md."""
    text = (ROOT / "docs" / "studies.md").read_text()
    block = text.split("```yaml cluster-onprem\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    assert config["provider"]["type"] == "local"
    _validate(config)
    servers = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    assert servers and all("--host 127.0.0.1" in c for c in servers)
