"""Lowbit: run quantized language models locally on an ordinary CPU."""

__version__ = "0.1.0"
