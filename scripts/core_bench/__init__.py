"""The parts of ``scripts/bench_core.py``: the subjects it times and the tables it prints.
The script itself runs each subject in a fresh child process; its docstring states the
method.
"""
