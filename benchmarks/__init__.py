"""pytest-benchmark suites, the report and the runner of mnv3_kernels.

    python -m benchmarks.run [--full] [--out DIR]          demo + suites + report
    python -m benchmarks.report RESULTS.json --out DIR      report from pytest-benchmark JSON
    MNV3_BENCH_MODE=ci pytest benchmarks/ --benchmark-disable -q   minimal CI pass (checks only)
"""
