"""Recipes: the shipped task files, the demo that runs one end to end, and every data writer (synth)."""
