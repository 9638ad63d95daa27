"""condense: make trained PyTorch models small and fast, and prove it."""
__version__ = "0.1.0"
