"""The parts of the two cluster benchmarks; each script holds its plan of runs, and its
docstring states the method.

- ``scripts/bench_pair.py`` (two in-process nodes, forwarded checks, limits+Redis): load
  loops, worker processes, the node pair, the report (``constants``, ``loops``, ``workers``,
  ``pair``, ``header``, ``report``).
- ``scripts/bench_cluster.py`` (three daemons under redis-benchmark, redis-server beside):
  the daemons and their metrics (``daemons``), redis-benchmark runs (``redis_load``), the
  phases of load (``phases``), the output (``daemons_report``).
"""
