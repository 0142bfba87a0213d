"""One-off studies: scripts that answered one question once.

Run them from the repository root as ``python -m benchmarks.studies.<name>``.

The scripts a user reruns to compare hosts stay in ``benchmarks/``; these keep the measurement
behind a decision reproducible. Their results are in ``benchmarks/results/``; benchmarks/README.md
says which figures they gave.
"""
