"""cluster.yaml and its on-prem twin cluster/local.yaml, checked with Ray's own cluster-config validation."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
            "file_mounts", "rsync_filter")


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster/local.yaml"])
def test_ray_accepts_the_cluster_config(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(name)))  # what `ray up` runs first; raises on any error


def test_cluster_has_a_gpu_worker_type_and_a_cpu_only_head():
    c = _load("cluster.yaml")
    types = c["available_node_types"]
    gpu = [t for name, t in types.items() if name != c["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] >= t["min_workers"] >= 0 for t in gpu)
    assert types[c["head_node_type"]]["resources"].get("CPU") == 0  # no trial lands on the head


def test_the_head_starts_the_mlflow_server_on_its_private_address_with_token_auth():
    c = _load("cluster.yaml")
    start = " && ".join(c["head_start_ray_commands"])
    assert "cluster/start_head.sh" in start
    script = (ROOT / "cluster" / "start_head.sh").read_text()
    assert 'mlflow server --host "$ip"' in script and "--artifacts-destination" in script  # proxied artifacts
    assert "ray start --head" in script and "--dashboard-host=127.0.0.1" in script
    assert "RAY_AUTH_MODE=token" in script and "RAY_AUTH_MODE=token" in (ROOT / "cluster" / "setup.sh").read_text()
    assert c["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "install --quiet --disable-pip-version-check -e" in (ROOT / "cluster" / "setup.sh").read_text()
    assert c["file_mounts"]["~/maskclf"] == "."


def test_local_cluster_runs_the_same_commands_as_cluster_yaml():
    aws, local = _load("cluster.yaml"), _load("cluster/local.yaml")
    assert local["provider"]["type"] == "local" and local["provider"]["head_ip"] == "127.0.0.1"
    for key in COMMANDS:
        assert local[key] == aws[key], key


@pytest.mark.integration
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "cluster").glob("*.sh")))
def test_cluster_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(ROOT / "cluster" / script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
