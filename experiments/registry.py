"""Experiment registry: name -> ``Experiment`` (config factory, trainer factory, --quick overrides)."""
from __future__ import annotations

from experiments import ddpg, mf, multimodal, popularity, sequential
from experiments.trainer import Experiment

EXPERIMENTS: dict[str, Experiment] = {}


def register(exp: Experiment) -> Experiment:
    if exp.name in EXPERIMENTS:
        raise ValueError(f"experiment {exp.name!r} registered twice")
    EXPERIMENTS[exp.name] = exp
    return exp


register(Experiment(
    name="popularity",
    description="most-popular items on the training part (the non-personalised floor)",
    make_config=popularity.make_config,
    make_trainer=popularity.make_trainer,
    quick=("eval.batch_users=256",),
    protocols=("full", "drr", "cold_start"),
))
register(mf.EXPERIMENT)
register(ddpg.EXPERIMENT)
for _exp in (*multimodal.EXPERIMENTS, *sequential.EXPERIMENTS):
    register(_exp)
