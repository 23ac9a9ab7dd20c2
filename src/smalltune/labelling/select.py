"""Choosing a few representative records out of many: deterministic, diverse, not merely random.

Each text becomes a TF-IDF vector of its character 1- and 2-grams (hashed to a fixed width, so no
vocabulary is built), projected to a few dimensions, plus its log length; k-means over a seeded pool
groups similar texts, and the record nearest each group's centre is chosen. Rare kinds of text so get a share next to the common ones,
and exact repeats are never chosen twice. The same records and seed always give the same choice.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Sequence

import numpy as np

from smalltune.data.records import Record
from smalltune.tasks.text import normalise

WIDTH = 2048  # hashed n-gram buckets
DIMENSIONS = 128  # random projection of the TF-IDF vectors: k-means cost grows with it
POOL_PER_PICK = 10  # k-means runs on at most this many candidates per record chosen (at least MIN_POOL)
MIN_POOL = 2000
ITERATIONS = 15
LENGTH_WEIGHT = 0.5  # weight of the (standardised) log length next to the unit-length n-gram vector


def _ngram_counts(text: str) -> dict[int, int]:
    """Hashed bucket -> count of the text's character unigrams and bigrams."""
    counts: dict[int, int] = {}
    grams = list(text) + [text[i : i + 2] for i in range(len(text) - 1)]
    for gram in grams:
        bucket = zlib.crc32(gram.encode("utf-8")) % WIDTH
        counts[bucket] = counts.get(bucket, 0) + 1
    return counts


def vectorise(texts: Sequence[str]) -> np.ndarray:
    """One row per text: L2-normalised TF-IDF of hashed character n-grams, randomly projected, then log length."""
    tf = np.zeros((len(texts), WIDTH), dtype=np.float32)
    for row, text in enumerate(texts):
        for bucket, count in _ngram_counts(normalise(text)).items():
            tf[row, bucket] = 1.0 + math.log(count)
    document_frequency = (tf > 0).sum(axis=0)
    tfidf = tf * (np.log((1 + len(texts)) / (1 + document_frequency)) + 1).astype(np.float32)
    tfidf /= np.maximum(np.linalg.norm(tfidf, axis=1, keepdims=True), 1e-9)
    projection = np.random.default_rng(0).standard_normal((WIDTH, DIMENSIONS), dtype=np.float32)
    projected = tfidf @ (projection / math.sqrt(DIMENSIONS))
    lengths = np.log1p([len(t) for t in texts]).astype(np.float32)
    lengths = (lengths - lengths.mean()) / max(float(lengths.std()), 1e-6)
    return np.hstack([projected, LENGTH_WEIGHT * lengths[:, None]])


def _squared_distances(points: np.ndarray, point_norms: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(points x centres) squared Euclidean distances; point_norms are the points' squared lengths."""
    return np.maximum(point_norms[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None, :], 0)


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k starting centres, each drawn with probability proportional to its squared distance to the chosen ones."""
    chosen = [int(rng.integers(len(points)))]
    nearest = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(nearest.sum())
        index = int(rng.choice(len(points), p=nearest / total)) if total > 0 else int(rng.integers(len(points)))
        chosen.append(index)
        nearest = np.minimum(nearest, ((points - points[index]) ** 2).sum(1))
    return points[chosen].copy()


def cluster_representatives(points: np.ndarray, k: int, seed: int) -> list[int]:
    """Row indices of k points: the one nearest each k-means centre, topped up with the worst-served points."""
    rng = np.random.default_rng(seed)
    norms = (points**2).sum(1)
    centres = _kmeans_plus_plus(points, k, rng)
    for _ in range(ITERATIONS):
        assignment = _squared_distances(points, norms, centres).argmin(1)
        sums = np.zeros_like(centres)
        np.add.at(sums, assignment, points)
        sizes = np.bincount(assignment, minlength=k)
        filled = sizes > 0  # an empty cluster keeps its centre
        centres[filled] = sums[filled] / sizes[filled, None]
    distances = _squared_distances(points, norms, centres)
    assignment = distances.argmin(1)
    chosen: list[int] = []
    for cluster in range(k):
        members = np.flatnonzero(assignment == cluster)
        if len(members):
            chosen.append(int(members[distances[members, cluster].argmin()]))
    taken = set(chosen)
    worst_served = np.argsort(-distances.min(1), kind="stable")
    chosen += [int(i) for i in worst_served if int(i) not in taken][: k - len(chosen)]
    return chosen


def select_diverse(records: Sequence[Record], n: int, seed: int = 0) -> list[Record]:
    """n representative records with distinct texts, in their original order (all of them when n covers them)."""
    distinct: dict[str, int] = {}
    for index, record in enumerate(records):
        distinct.setdefault(normalise(record.input), index)
    candidates = sorted(distinct.values())
    if n >= len(candidates):
        return [records[i] for i in candidates]
    pool_size = min(len(candidates), max(POOL_PER_PICK * n, MIN_POOL))
    pool = sorted(random.Random(seed).sample(candidates, pool_size))
    points = vectorise([records[i].input for i in pool])
    return [records[pool[i]] for i in sorted(cluster_representatives(points, n, seed))]


def choose(records: Sequence[Record], limit: int | None, holdout: int, seed: int) -> tuple[list[Record], list[Record]]:
    """(records to label, held-out records): both representative and disjoint; limit None means all the rest."""
    if holdout <= 0:
        return (list(records) if limit is None else select_diverse(records, limit, seed)), []
    if limit is None:
        held = select_diverse(records, holdout, seed)
        held_ids = {r.id for r in held}
        return [r for r in records if r.id not in held_ids], held
    chosen = select_diverse(records, limit + holdout, seed)
    held_ids = {r.id for r in random.Random(seed).sample(chosen, min(holdout, len(chosen)))}
    return [r for r in chosen if r.id not in held_ids], [r for r in chosen if r.id in held_ids]
