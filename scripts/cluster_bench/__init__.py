"""The parts of ``scripts/bench_cluster.py``: load loops, worker processes, the node pair,
and the report. The script itself holds the plan of runs; its docstring states the method.
"""
