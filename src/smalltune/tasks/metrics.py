"""Scores shared by the task kinds: character F1 and ROUGE-L for Chinese spans, label counts, set precision and
recall, length statistics, calibration."""

from __future__ import annotations

import functools
import statistics
from collections import Counter
from typing import Any

from smalltune.tasks.text import normalise


@functools.lru_cache(maxsize=65536)
def char_f1(prediction: str, reference: str) -> float:
    """Character-level F1 (bag of characters), the usual measure for Chinese spans."""
    pred, ref = Counter(normalise(prediction)), Counter(normalise(reference))
    if not pred and not ref:
        return 1.0
    common = sum((pred & ref).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(pred.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (one row of the table at a time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for char in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if char == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


@functools.lru_cache(maxsize=65536)
def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over characters (no word segmentation, so it suits Chinese), after `normalise`."""
    pred, ref = normalise(prediction), normalise(reference)
    if not pred and not ref:
        return 1.0
    common = _lcs_length(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def percentile(ordered: list[float], q: float) -> float:
    """The value at quantile q (0..1) of an ascending list: the element at index int(q * n), the last at most."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def length_stats(lengths: list[int]) -> dict[str, float]:
    """Mean, median, 90th percentile, min and max of a list of lengths (all 0 when empty)."""
    if not lengths:
        return dict.fromkeys(("mean", "median", "p90", "min", "max"), 0.0)
    ordered = sorted(lengths)
    return {
        "mean": statistics.fmean(ordered),
        "median": float(statistics.median(ordered)),
        "p90": float(percentile(ordered, 0.9)),
        "min": float(ordered[0]),
        "max": float(ordered[-1]),
    }


def label_counts(preds: list[Any], golds: list[Any], label: str) -> dict[str, float]:
    """Precision, recall, F1 and support (gold count) of one label."""
    tp = sum(p == label and g == label for p, g in zip(preds, golds))
    fp = sum(p == label and g != label for p, g in zip(preds, golds))
    fn = sum(p != label and g == label for p, g in zip(preds, golds))
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "support": tp + fn,
    }


def set_scores(tp: int = 0, fp: int = 0, fn: int = 0) -> dict[str, float]:
    """`list_precision`, `list_recall` and `list_f1` from counts of items found (tp), found wrongly (fp) and missed
    (fn); each is 1 where there was nothing to get wrong (no items answered, none to find, or neither)."""
    return {"list_precision": tp / (tp + fp) if tp + fp else 1.0, "list_recall": tp / (tp + fn) if tp + fn else 1.0,
            "list_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0}


def calibration(confidences: list[float], correct: list[bool], bins: int = 10) -> dict[str, Any]:
    """The expected calibration error and the reliability diagram's bins of answers with a confidence each.

    Confidences fall into `bins` equal-width bins over 0..1 (1.0 into the last); `ece` is the mean over answers of
    |accuracy - mean confidence| of their bin. Each bin with answers lists `low`, `high`, `count`, mean
    `confidence` and `accuracy`.
    """
    members: dict[int, list[int]] = {}
    for i, confidence in enumerate(confidences):
        members.setdefault(min(int(confidence * bins), bins - 1), []).append(i)
    rows, ece = [], 0.0
    for b in sorted(members):
        picked = members[b]
        confidence = statistics.fmean(confidences[i] for i in picked)
        accuracy = sum(correct[i] for i in picked) / len(picked)
        ece += len(picked) * abs(accuracy - confidence)
        rows.append({"low": b / bins, "high": (b + 1) / bins, "count": len(picked), "confidence": confidence,
                     "accuracy": accuracy})
    return {"ece": ece / max(len(confidences), 1), "bins": rows}
