"""Inference: the engine seam (engine), its engines (transformers, vLLM), constrained decoding, predict."""
