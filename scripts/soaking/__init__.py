"""The parts of ``scripts/soak.py``: shared state, the cluster and its faults, the load
threads, and the judging and report. The script itself wires them together; its
docstring says what the soak does and what it checks.
"""
