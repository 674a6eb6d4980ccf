"""Envoy's rate limit service on a meshlimit node: envoyproxy/ratelimit's protocol and YAML.

- :mod:`.yaml_config`: envoy ratelimit's YAML files, read and validated into domain trees;
- :mod:`.matcher`: a request's descriptors resolved to their limits, its semantics exactly;
- :mod:`.counting`: an Envoy limit as a meshlimit rule, and a decision back as Envoy's answer;
- :mod:`.stats`: per-descriptor statistics (total, over, near, within, shadow), bounded;
- :mod:`.loader`: the files of ``--ratelimit-config``, reloaded on SIGHUP and on change;
- :mod:`.service`: the grpc.aio ``RateLimitService`` and the standard health service.

``docs/envoy.md`` says how it maps onto meshlimit and where it differs from envoy ratelimit.
Needs the ``envoy`` extra (grpcio, xds-protos, pyyaml); nothing else imports this package.
"""
