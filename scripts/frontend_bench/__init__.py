"""The parts of ``scripts/bench_frontends.py``: the servers under test, one generator run,
the settings and their repetitions, the profile and the report. The script itself holds
the plan of runs; its docstring states the method.
"""
