"""One command that checks the CUDA path of the MoCo v3 step and measures it, in <= 8 minutes.

    python -m benchmarks.gpu_check --out DIR      # on one CUDA GPU: the full check
    python -m benchmarks.gpu_check --device cpu   # anywhere: the reduced CPU version

(`python benchmarks/gpu_check ...` runs the same.) One module per section (environment,
correctness, distributed, resume, data, speed), the sizes and bounds in profiles, the rows in
report, shared machinery in machinery, and the harness that runs them in harness. What each
check compares, and how every bound was calibrated: docs/gpu-check.md.

Kept free of imports: `python -m` imports this package before __main__ starts the run's clock.
"""
