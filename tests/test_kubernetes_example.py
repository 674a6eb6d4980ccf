"""``examples/kubernetes.yaml`` holds together: its container's arguments are valid
``meshlimit node`` flags, its ConfigMap is a valid config file, peers are told the pod
IP while the socket binds every interface, and the probes name ``/healthz`` and
``/readyz``. No YAML library is needed: the manifest is read as text, the two blocks
this test needs (the ``args:`` list and the ConfigMap's file) by their indentation."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from meshlimit.cluster.daemon import main as daemon
from meshlimit.cluster.daemon.config_file import effective_config

MANIFEST = Path(__file__).resolve().parent.parent / "examples" / "kubernetes.yaml"


def block_after(lines: list[str], header: str) -> list[str]:
    """The lines indented deeper than ``header``'s line, right after it."""
    start = next(i for i, line in enumerate(lines) if line.strip() == header)
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = []
    for line in lines[start + 1 :]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    return block


def test_the_manifest_runs_a_node_that_binds_any_and_advertises_its_pod_ip(
    tmp_path: Path,
) -> None:
    lines = MANIFEST.read_text().splitlines()
    args = [re.sub(r"^\s*- ", "", line) for line in block_after(lines, "args:")]
    assert args[0] == "node"
    toml = "\n".join(line[4:] for line in block_after(lines, "meshlimit.toml: |"))
    (tmp_path / "meshlimit.toml").write_text(toml)
    (tmp_path / "cluster.key").write_text("0123456789abcdef0123456789abcdef\n")
    env = {"POD_NAME": "meshlimit-1", "POD_IP": "10.1.2.3", "POD_NAMESPACE": "default"}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in args[1:]]
    argv = [a.replace("/etc/meshlimit-key", str(tmp_path)) for a in argv]
    argv = [a.replace("/etc/meshlimit", str(tmp_path)) for a in argv]
    parser = argparse.ArgumentParser()
    daemon.add_arguments(parser)
    settings, _ = effective_config(parser.parse_args(argv))
    config = settings.node_config()
    assert config.node_id == "meshlimit-1"
    assert config.addr == ("10.1.2.3", 7400), "peers are told the pod IP"
    assert settings.cluster.bind == ("0.0.0.0", 7400)
    assert settings.cluster.seeds == (("meshlimit.default.svc.cluster.local", 7400),)
    assert config.cluster_keys and settings.limits.tiers
    text = MANIFEST.read_text()
    assert "path: /healthz" in text and "path: /readyz" in text
    assert "publishNotReadyAddresses: true" in text and "clusterIP: None" in text
