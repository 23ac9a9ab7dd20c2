"""Synthetic data-set generators for fine-tuning experiments."""
