"""Prometheus metrics of the gateway, cost attribution, and the dense-vs-variant comparison."""
