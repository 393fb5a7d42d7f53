"""Sequential recommenders on one harness and one split: ``m3s_tdlambda``, ``sqn``, ``sasrec``,
``gru4rec`` and ``popularity_seq``; and the whole-sequence ("plus") family ``sasrec_plus``, ``gru4rec_plus``,
``sqn_plus`` and ``m3s_plus`` (``SQNConfig.mode="sequence"``) at the field's standard leave-last protocol (their registry entries; trainers in ``trainer``, configs in
``configs``).

All five are trained on the training part only (``train_view``) and scored by the same next-item
protocol, reported under the protocol name ``next_item`` (``jaxrec.eval.next_item``: one query per
held-out target interaction, ranked over the full catalogue from the ``model.window`` items before it;
``model.eval_targets=relevant`` keeps only the relevant targets, ``model.exclude_seen`` excludes the
items seen before the target). Model selection uses the validation part only.

It is not the built-in ``full`` protocol (one query per user, every later interaction relevant), hence
its own name; ``popularity_seq`` gives the popularity floor under this protocol, and ``popularity``'s
numbers are not comparable with these. ``drr`` (the built-in one-step top-K from each user's state
items) works through ``score_fn``.

Events sources, click vs purchase (as the SQN papers report): on data with event types every run also
reports its final validation and test metrics per target group, clicks (non-purchase event types) and
purchases (``model.purchase_events``), under ``by_event`` in ``final.json``; ``model.eval_events=click|purchase``
makes ``next_item`` itself (and so model selection) score one group only.
"""
from __future__ import annotations

from experiments.sequential.configs import (QUICK, QUICK_PLUS, gru4rec_config, gru4rec_plus_config, m3s_config,
                                            m3s_plus_config, popularity_seq_config, sasrec_config, sasrec_plus_config,
                                            sqn_config, sqn_plus_config)
from experiments.sequential.trainer import PopularitySeqTrainer, SequentialTrainer
from experiments.trainer import Experiment

PROTOCOLS = ("next_item", "drr")


def _sequential(name: str, description: str, make_config, quick=QUICK) -> Experiment:
    """A registry entry of the SQNConfig family: SequentialTrainer, next_item and drr protocols, data-parallel."""
    return Experiment(name, description, make_config, SequentialTrainer, quick=quick, protocols=PROTOCOLS,
                      data_parallel=True)


EXPERIMENTS = [
    _sequential("m3s_tdlambda", "sequential transformer: CE + multi-step self-supervision + double-Q TD(lambda) "
                "over n steps with negatives (M3S seed, corrected); next_item protocol", m3s_config),
    _sequential("sqn", "SQN (Xin et al. 2020): same encoder, CE + one-step double Q-learning; next_item protocol",
                sqn_config),
    _sequential("sasrec", "same transformer encoder, supervised cross-entropy only; next_item protocol", sasrec_config),
    _sequential("gru4rec", "GRU over the last items, supervised cross-entropy only; next_item protocol", gru4rec_config),
    _sequential("sasrec_plus", "SASRec+ (Klenitskiy & Vasilev 2023): whole-sequence training of a 2-block causal "
                "transformer on each user's last 200 items, full cross-entropy at every position; leave-last split",
                sasrec_plus_config, QUICK_PLUS),
    _sequential("gru4rec_plus", "GRU on the same whole sequences, full cross-entropy at every position; leave-last split",
                gru4rec_plus_config, QUICK_PLUS),
    _sequential("sqn_plus", "SQN's one-step double Q-learning at every position of the SASRec+ backbone; leave-last "
                "split", sqn_plus_config, QUICK_PLUS),
    _sequential("m3s_plus", "M3S (lambda-returns over n steps along the sequence, multi-step self-supervision, "
                "negatives, double Q) on the SASRec+ backbone; leave-last split", m3s_plus_config, QUICK_PLUS),
    Experiment("popularity_seq", "most-popular training items under the sequential next-item protocol "
               "(the floor of the rows above)", popularity_seq_config, PopularitySeqTrainer,
               quick=("eval.batch_users=256",), protocols=PROTOCOLS),
]
