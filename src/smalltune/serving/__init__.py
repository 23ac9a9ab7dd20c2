"""Serving: the HTTP app (app) over micro-batched engine calls (batcher), and exports other servers load (export)."""
