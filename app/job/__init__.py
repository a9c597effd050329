"""The offline job (runs in the `compress` environment): import, compress, evaluate."""
