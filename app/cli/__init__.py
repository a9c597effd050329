"""The `sparsegate` command line: one entry point for every job."""
