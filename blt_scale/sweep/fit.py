"""Scaling-law fits: IsoFLOP parabolas in log model size, and power laws for the compute-optimal
size N*(C) and data D*(C), as in the Chinchilla "approach 2" the BLT paper follows."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class IsoFlopFit:
    budget: float
    coeffs: tuple[float, float, float]  # bpb = a x^2 + b x + c, x = ln(params)
    optimal_params: float  # N*: nan when the curve has no minimum inside the sizes trained
    optimal_bpb: float
    optimal_bytes: float  # D* = budget / training FLOPs per byte at N*


@dataclass
class PowerLaw:
    """y = coefficient * C ** exponent."""

    coefficient: float
    exponent: float

    def __call__(self, compute: float) -> float:
        return self.coefficient * compute**self.exponent


def fit_isoflop(
    budget: float, params: list[float], bpb: list[float], flops_per_byte: list[float]
) -> IsoFlopFit:
    if len(params) < 3:
        raise ValueError(f"an IsoFLOP fit at budget {budget:.3g} needs >= 3 model sizes, got {len(params)}")
    x = np.log(np.asarray(params, dtype=float))
    a, b, c = np.polyfit(x, np.asarray(bpb, dtype=float), 2)
    x_star = -b / (2 * a) if a > 0 else math.nan
    if not x.min() <= x_star <= x.max():  # no minimum, or one outside the sizes trained: not a measurement
        return IsoFlopFit(budget, (a, b, c), math.nan, math.nan, math.nan)
    # FLOPs/byte grows smoothly with size: interpolate it log-linearly at the optimum.
    slope, intercept = np.polyfit(x, np.log(np.asarray(flops_per_byte, dtype=float)), 1)
    fpb_star = math.exp(intercept + slope * x_star)
    return IsoFlopFit(budget, (a, b, c), math.exp(x_star), c - b * b / (4 * a), budget / fpb_star)


def fit_power_law(compute: list[float], values: list[float]) -> PowerLaw:
    pairs = [(c, v) for c, v in zip(compute, values) if math.isfinite(v) and v > 0]
    if len(pairs) < 2:
        raise ValueError(f"a power law needs >= 2 budgets with a finite optimum, got {len(pairs)}")
    logc, logv = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    exponent, log_coeff = np.polyfit(logc, logv, 1)
    return PowerLaw(math.exp(log_coeff), exponent)
