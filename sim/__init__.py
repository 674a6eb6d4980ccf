"""The deterministic simulator: virtual time, simulated network, faults, workloads, checkers."""
