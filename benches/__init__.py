"""Benchmarks of mmx_fast (pytest-benchmark suites, memory, report and GPU-check scripts); not shipped."""
