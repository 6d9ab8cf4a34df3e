"""`python -m benchmarks.gpu_check` or `python benchmarks/gpu_check`: the run's clock starts
here, before the heavy imports, since the budget counts them too."""

import time

STARTED = time.perf_counter()


def run() -> int:
    """Make the checkout importable when run as a folder, then hand over to the harness."""
    import moco3

    # `python benchmarks/gpu_check`: sys.path[0] is this folder, whose modules (data, report,
    # ...) must not shadow top-level ones; the checkout's root takes its place.
    moco3.run_as_script(__file__, up=2)
    from benchmarks.gpu_check.harness import main

    return main(started=STARTED)


if __name__ == "__main__":
    raise SystemExit(run())
