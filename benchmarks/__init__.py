"""Benchmark scripts of unet3d, run from the repository root as ``python -m benchmarks.<name>``.

Not part of the installed ``unet3d`` package. The shared helpers are ``benchmarks._common``
(result files keyed by host, runner subprocesses), ``benchmarks._profile`` and
``benchmarks._predict_inputs``; one-off studies are in ``benchmarks.studies``. What each script
measures and its latest figures: benchmarks/README.md.
"""
