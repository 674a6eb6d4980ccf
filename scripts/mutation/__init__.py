"""The mutation check of the simulator (catalogue); run by ``scripts/mutants.py``."""
