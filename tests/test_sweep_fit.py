"""Scaling-law fits recover the laws that generated synthetic sweep results."""

import math

import numpy as np
import pytest

from blt_scale.sweep.fit import fit_isoflop, fit_power_law
from blt_scale.sweep.report import fit_results, plot_results, write_results

BUDGETS = [1e15, 1e16, 1e17, 1e18]


def synthetic_rows(k=0.3, alpha=0.55, curvature=0.04, floor=0.9):
    """bpb = floor - 0.05 ln C + curvature (ln N - ln N*(C))^2, N*(C) = k C^alpha; FLOPs/byte = 6 N."""
    rows = []
    for c in BUDGETS:
        n_star = k * c**alpha
        for factor in (0.25, 0.5, 1.3, 2.0, 4.0):
            n = n_star * factor
            rows.append(
                {
                    "variant": "v",
                    "size": f"x{factor}",
                    "params": n,
                    "budget_flops": c,
                    "train_flops": c,
                    "bytes": c / (6 * n),
                    "val_bpb": floor - 0.05 * math.log(c) + curvature * math.log(factor) ** 2,
                    "mean_patch_bytes": 1.0,
                    "steps": 1,
                    "inference_flops_per_byte": 2 * n,
                    "run_dir": "",
                }
            )
    return rows


def test_isoflop_parabola_finds_the_generating_optimum():
    fits = fit_results(synthetic_rows())["v"]
    for f in fits["isoflop"]:
        assert f.optimal_params == pytest.approx(0.3 * f.budget**0.55, rel=1e-6)
        assert f.optimal_bytes == pytest.approx(f.budget / (6 * f.optimal_params), rel=1e-6)
    assert fits["params_law"].exponent == pytest.approx(0.55, abs=1e-6)
    assert fits["params_law"].coefficient == pytest.approx(0.3, rel=1e-5)
    assert fits["bytes_law"].exponent == pytest.approx(0.45, abs=1e-6)


def test_chinchilla_law_exponent_is_recovered_approximately():
    """L(N, D) = E + A/N^a + B/D^b with D = C/(6N): the optimum scales as N* ~ C^(b/(a+b))."""
    a, b, A, B, E = 0.34, 0.28, 400.0, 410.0, 1.7
    exponent = b / (a + b)
    rows = []
    for c in BUDGETS:
        for n in np.geomspace(1e6, 1e9, 13):
            d = c / (6 * n)
            rows.append((c, n, E + A / n**a + B / d**b))
    optima = []
    for c in BUDGETS:
        pts = [(n, loss) for cc, n, loss in rows if cc == c]
        best = min(range(len(pts)), key=lambda i: pts[i][1])
        window = pts[
            max(0, best - 2) : best + 3
        ]  # the parabola is a local approximation: fit around the minimum
        fit = fit_isoflop(c, [p[0] for p in window], [p[1] for p in window], [6 * p[0] for p in window])
        optima.append(fit.optimal_params)
    assert fit_power_law(BUDGETS, optima).exponent == pytest.approx(exponent, abs=0.02)


def test_curve_without_a_minimum_is_reported_not_invented():
    fit = fit_isoflop(1e15, [1e6, 1e7, 1e8], [3.0, 2.0, 1.5], [6e6, 6e7, 6e8])
    assert math.isnan(fit.optimal_params)


def test_too_few_points_is_a_clear_error():
    with pytest.raises(ValueError, match=">= 3 model sizes"):
        fit_isoflop(1e15, [1e6, 1e7], [2.0, 1.9], [1, 1])
    with pytest.raises(ValueError, match=">= 2 budgets"):
        fit_power_law([1e15], [1e7])


def test_results_table_and_plots_are_written(tmp_path):
    rows = synthetic_rows()
    write_results(rows, tmp_path)
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert {"variant", "params", "budget_flops", "train_flops", "val_bpb"} <= set(header)
    assert len((tmp_path / "results.csv").read_text().splitlines()) == len(rows) + 1
    for png in plot_results(rows, fit_results(rows), tmp_path):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
