"""Benchmarks: each module has ``main(argv) -> int`` and prints ratios against an in-process baseline."""
