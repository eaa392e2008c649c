"""Brain -> text scores with bootstrap 95% confidence intervals.

Every corpus metric here is a function of per-window sufficient statistics, so a bootstrap
resample (windows drawn with replacement) is a weighted sum, not a re-scoring:

BLEU-n   nltk's corpus_bleu with smoothing method 1 (epsilon 0.1): per window the clipped n-gram
         matches and max(1, hypothesis n-grams) for n = 1..4, hypothesis and reference lengths;
         BLEU = BP x exp(mean_k log p_k), p_k = sum matches / sum n-grams (epsilon / sum n-grams
         where no match), BP = 1 if c > r, 0 if c = 0, else exp(1 - r / c); 0 without any
         unigram match (as nltk).
ROUGE-L  mean over windows of rouge-score's ROUGE-L F1 (whitespace words, no stemming).
WER      jiwer: word errors (substitutions + deletions + insertions) over reference words,
         windows with an empty reference left out.
exact    share of windows whose text equals the reference.

Intervals: percentile bootstrap (2.5 %, 97.5 %) over `resamples` draws of the windows, seeded.
The noise control is scored on the same windows and each draw uses the same windows for both,
so the margin (signal minus noise; for WER noise minus signal: positive always means the
signal helps) has a paired interval: a margin whose interval excludes 0 is a real effect at
the 5 % level, one whose interval includes 0 is not distinguishable from the text prior.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "wer", "exact")
LOWER_IS_BETTER = {"wer"}
EPSILON = 0.1  # nltk SmoothingFunction().method1


class _Words:
    """rouge-score tokenizer: whitespace words, kept as written (its default drops non-ASCII)."""

    def tokenize(self, text: str) -> list[str]:
        return text.split()


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def window_stats(references: list[str], hypotheses: list[str]) -> dict[str, np.ndarray]:
    """Per-window sufficient statistics of every metric (arrays over windows)."""
    import jiwer
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())
    N = len(references)
    st = {
        "match": np.zeros((N, 4)),
        "total": np.zeros((N, 4)),
        "hyp_len": np.zeros(N),
        "ref_len": np.zeros(N),
        "rougeL": np.zeros(N),
        "errors": np.zeros(N),
        "ref_words": np.zeros(N),
        "exact": np.zeros(N),
    }
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        r, h = ref.split(), hyp.split()
        for n in range(1, 5):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            st["match"][i, n - 1] = sum(min(c, rc[g]) for g, c in hc.items())
            st["total"][i, n - 1] = max(1, sum(hc.values()))
        st["hyp_len"][i], st["ref_len"][i] = len(h), len(r)
        st["rougeL"][i] = scorer.score(ref, hyp)["rougeL"].fmeasure
        if ref.strip():
            out = jiwer.process_words(ref, hyp)
            st["errors"][i] = out.substitutions + out.deletions + out.insertions
            st["ref_words"][i] = out.substitutions + out.deletions + out.hits
        st["exact"][i] = float(ref == hyp)
    return st


def corpus_metrics(st: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of the corpora that hold window i weights[b, i] times: {metric: [B]}."""
    w = np.asarray(weights, dtype=np.float64)
    match, total = w @ st["match"], w @ st["total"]  # [B, 4]
    c, r = w @ st["hyp_len"], w @ st["ref_len"]
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(c > r, 1.0, np.where(c == 0, 0.0, np.exp(1 - r / np.maximum(c, 1e-300))))
        p = np.where(match > 0, match, EPSILON) / total
        logp = np.log(p)
        out = {}
        for n in range(1, 5):
            bleu = bp * np.exp(logp[:, :n].mean(axis=1))
            out[f"bleu{n}"] = np.where(match[:, 0] > 0, bleu, 0.0)
        count = w.sum(axis=1)
        out["rougeL"] = (w @ st["rougeL"]) / count
        ref_words = w @ st["ref_words"]
        out["wer"] = np.where(
            ref_words > 0, (w @ st["errors"]) / np.where(ref_words > 0, ref_words, 1), math.nan
        )
        out["exact"] = (w @ st["exact"]) / count
    return out


def point(st: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(v[0]) for k, v in corpus_metrics(st, np.ones((1, len(st["exact"])))).items()}


def advantage(metric: str, real, noise):
    """Signal minus noise, oriented so that positive means the signal helps."""
    return noise - real if metric in LOWER_IS_BETTER else real - noise


def bootstrap(
    real: dict[str, np.ndarray], noise: dict[str, np.ndarray], resamples: int = 1000, seed: int = 0
) -> dict:
    """{"real"|"noise"|"margin": {metric: [low, high]}} and "margin_value": {metric: point}: paired
    percentile intervals over `resamples` draws of the windows with replacement."""
    N = len(real["exact"])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, N, size=(resamples, N))
    counts = np.zeros((resamples, N))
    np.add.at(counts, (np.arange(resamples)[:, None], idx), 1.0)
    r, z = corpus_metrics(real, counts), corpus_metrics(noise, counts)
    pr, pz = point(real), point(noise)

    def ci(values: np.ndarray) -> list[float]:
        values = values[np.isfinite(values)]
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if len(values) else []

    return {
        "real": {m: ci(r[m]) for m in METRICS},
        "noise": {m: ci(z[m]) for m in METRICS},
        "margin": {m: ci(advantage(m, r[m], z[m])) for m in METRICS},
        "margin_value": {m: advantage(m, pr[m], pz[m]) for m in METRICS},
        "resamples": resamples,
    }
