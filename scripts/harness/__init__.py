"""The shared harness of meshlimit's benchmark and tool scripts.

Scripts run as ``.venv/bin/python scripts/NAME.py``, so ``scripts/`` is the first entry of
``sys.path`` and they import this package as ``harness``. It holds what every script used to
copy from the others, one job per module:

- :mod:`harness.processes`: free ports, starting servers and waiting until they answer,
  stopping every process a script started (also on an error, Ctrl-C or SIGTERM), spawned
  worker processes driven over a pipe, child runs that answer with one JSON line.
- :mod:`harness.proc`: what Linux's ``/proc`` says: a process's CPU time and run-queue wait,
  its resident memory, how busy the whole machine is.
- :mod:`harness.machine`: the machine and software versions a benchmark header names.
- :mod:`harness.stats`: timing a span (wall and CPU), medians, nearest-rank percentiles.
- :mod:`harness.report`: number formats, ratios, aligned tables, JSON reports.

It imports only the standard library and ``meshlimit.processes`` (which the demo and the
tests use to run ``meshlimit node`` daemons), never a script, so nothing loops.
"""
