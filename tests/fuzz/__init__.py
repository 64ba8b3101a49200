"""Fuzzing harness: seeded DICOM mutants through the real batch, text and manifest mutants through the parsers.

``mutator`` makes the inputs (deterministic for a seed), ``harness`` runs the batch in a subprocess and
checks the invariants; ``test_*.py`` are the short run of ``make test``, ``bench/fuzz.py`` the long one
(``make fuzz``).
"""
