"""Offline quality metrics for binary generative models (see distribution.py and digits.py)."""
