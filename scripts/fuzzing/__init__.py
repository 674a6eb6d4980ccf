"""The parts of ``scripts/fuzz_campaign.py``: the targets' seeds, their oracles, the
structure-aware mutator, and the fuzzing child. The script itself runs the campaign; its
docstring states the method and each target's oracle.
"""
