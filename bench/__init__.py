"""Benchmarks and the GPU check; `bench.common` holds what the scripts share."""
