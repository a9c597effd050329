"""Benchmarks: serving load through the gateway, the gateway's own overhead."""
