"""How ``meshlimit node`` builds its Envoy front-end, without importing gRPC until it must.

The daemon (``main.py``) imports this module always; it imports grpcio, the
Envoy protos and PyYAML (the ``envoy`` extra) only when ``--grpc`` or
``--ratelimit-config`` is given, and says which extra is missing otherwise.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshlimit.cluster.daemon.config_file import ClusterSettings
    from meshlimit.cluster.daemon.rls.server import EnvoyFrontend
    from meshlimit.cluster.runtime import Runtime

log = logging.getLogger("meshlimit.envoy")


def envoy_frontend(runtime: Runtime, cluster: ClusterSettings, poll_s: float) -> EnvoyFrontend:
    """The Envoy front-end of ``cluster``'s settings, its YAML files loaded; ``ValueError``
    naming a bad file (its line, path and key) or the missing ``envoy`` extra."""
    try:
        from meshlimit.cluster.daemon.rls.server import EnvoyFrontend
    except ImportError as error:
        raise ValueError(
            f"--grpc and --ratelimit-config need the envoy extra ({error}): "
            "pip install 'meshlimit[envoy]'"
        ) from None
    envoy = EnvoyFrontend(
        runtime,
        cluster.ratelimit_config or (),
        merge_domains=bool(cluster.merge_domain_config),
        algorithm=cluster.ratelimit_algorithm,
        poll_interval_s=poll_s,
    )
    envoy.load()
    if cluster.grpc is None:
        log.warning("--ratelimit-config without --grpc: nothing serves it")
    elif not cluster.ratelimit_config:
        log.warning("--grpc without --ratelimit-config: every domain is unknown (all OK)")
    return envoy
