"""Statistics over seeds: the mean and the 95% Student-t interval of every reported metric.

Pure math on ``final.json`` dicts, kept out of the run loop so it can be checked by hand in isolation.
"""
from __future__ import annotations

import numpy as np


def t975(dof: int) -> float:
    """Two-sided 95% Student-t quantile for ``dof`` degrees of freedom (exact, for every dof)."""
    from scipy.stats import t

    if dof < 1:
        raise ValueError(f"t975 needs at least 1 degree of freedom, got {dof}")
    return float(t.ppf(0.975, dof))


def aggregate_seeds(finals: list[dict]) -> dict:
    """Mean and 95% interval half-width over seeds for every (part, protocol, metric)."""
    out = {"exp": finals[0]["exp"], "seed": [f["seed"] for f in finals], "seeds": finals,
           "wall_s": round(sum(f["wall_s"] for f in finals), 3),
           "env_steps": sum(f["env_steps"] for f in finals), "updates": sum(f["updates"] for f in finals)}
    for part in ("val", "test"):
        mean, ci = {}, {}
        for proto, metrics in finals[0][part].items():
            mean[proto], ci[proto] = {}, {}
            for name in metrics:
                v = np.array([f[part][proto][name] for f in finals], np.float64)
                mean[proto][name] = float(v.mean())
                ci[proto][name] = float(t975(len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
        out[part], out[f"{part}_ci95"] = mean, ci
    if "by_event" in finals[0]:
        out["by_event"], out["by_event_ci95"] = {}, {}
        for part in ("val", "test"):
            out["by_event"][part], out["by_event_ci95"][part] = {}, {}
            for group, metrics in finals[0]["by_event"][part].items():
                m, c = out["by_event"][part].setdefault(group, {}), out["by_event_ci95"][part].setdefault(group, {})
                for name in metrics:
                    v = np.array([f["by_event"][part][group][name] for f in finals], np.float64)
                    m[name] = float(v.mean())
                    c[name] = float(t975(len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
    return out
