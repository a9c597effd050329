"""sparsegate: compress language models, register the variants, serve and compare them."""

__version__ = "0.1.0"
