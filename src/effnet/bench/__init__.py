"""Benchmarks: parameters, MACs, latency, throughput and memory, and their reports."""
