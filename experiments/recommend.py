"""Recommends items for one user from a finished (or checkpointed) run.

  python experiments/recommend.py --run-dir DIR --user ORIGINAL_USER_ID [--k 10] [--data DIR]

Loads the run's config.json and its best checkpoint, takes the user's whole logged history from the
prepared data as the visible context (items they already interacted with are never recommended; a user
the model was not trained on is folded in from that history), and prints the top K items with titles.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd

from jaxrec.cli import ArgParser, cli_main
from jaxrec import config as C
from jaxrec.data.splits import EvalView
from jaxrec.errors import InputError, read_json


def recommend(run_dir: Path, original_user: str, k: int, data_path: str | None = None) -> pd.DataFrame:
    from experiments.dataset import load_dataset
    from experiments.embed_stage import stage_root
    from experiments.registry import EXPERIMENTS
    from experiments.rundir import Checkpoints, checkpoint_tree

    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise InputError(cfg_path, "missing: not a run directory")
    saved = read_json(cfg_path)
    if not isinstance(saved, dict):
        raise InputError(cfg_path, "malformed: expected the config.json of a run (a JSON object)")
    if saved.get("exp") not in EXPERIMENTS:
        raise InputError(cfg_path, f"unknown experiment {saved.get('exp')!r}")
    if "seeds" in saved:
        first = run_dir / f"seed{saved.get('seed', 0)}"
        raise InputError(run_dir, f"a multi-seed run: pass one of its seed directories, e.g. {first}")
    exp = EXPERIMENTS[saved["exp"]]
    cfg = C.from_dict(exp.make_config(), saved)
    if data_path:
        cfg = C.apply_overrides(cfg, [f"data.path={data_path}"])
    data = load_dataset(cfg)
    users_path = Path(cfg.data.path) / "users.csv"
    if not users_path.is_file():
        raise InputError(users_path, "missing: the user ids of the prepared data (data_prep/prepare.py writes it)")
    try:
        users = pd.read_csv(users_path, dtype={"original_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(users_path, f"not a readable users table ({' '.join(str(e).split())})") from None
    if not {"user", "original_id"} <= set(users.columns):
        raise InputError(users_path, f"columns {list(users.columns)}, expected 'user' and 'original_id'")
    match = users.index[users["original_id"].astype(str) == str(original_user)]
    if len(match) == 0:
        raise InputError(users_path, f"no user with original id {original_user!r}")
    user = int(users["user"].iloc[match[0]])
    trainer = exp.make_trainer(cfg, data)
    if hasattr(trainer, "stage_dir"):
        # init loads the run's saved pretrained embeddings instead of refitting them for a restore template.
        trainer.stage_dir = stage_root(run_dir, cfg.seed)
    state = trainer.init(jax.random.key(cfg.seed))
    manager = Checkpoints(run_dir / "checkpoints")
    try:
        latest = manager.latest()
        if latest is None:
            raise InputError(run_dir / "checkpoints", "no checkpoint: the run has not saved one yet")
        best = manager.restore(latest, checkpoint_tree(state, state, 0, 0.0, 0, 0.0))["best"]
    finally:
        manager.close()
    inter = data.inter
    rows = np.arange(inter.user_start[user], inter.user_start[user + 1])
    view = EvalView(users=np.array([user]), context=rows, target=np.array([], np.int64))
    context = np.zeros((1, inter.n_items), bool)
    context[0, inter.item[rows]] = True
    scores = np.asarray(trainer.score_fn(best, view)(np.array([user]), jax.numpy.asarray(context)))[0]
    scores = np.where(context[0], -np.inf, scores)
    top = np.argsort(-scores, kind="stable")[:k]
    items = data.items.set_index("item") if "item" in data.items else data.items
    out = pd.DataFrame({"rank": np.arange(1, len(top) + 1), "item": top, "score": scores[top]})
    for col in ("original_id", "title", "genres"):
        if col in items:
            out[col] = items[col].reindex(top).to_numpy()
    return out


def main_args(argv):
    p = ArgParser(prog="recommend.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--user", required=True, help="the user's original id (as in the raw data)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--data", help="prepared data directory (default: the run's data.path)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if args.k < 1:
        raise InputError("--k", "must be >= 1")
    out = recommend(Path(args.run_dir), args.user, args.k, args.data)
    print(out.to_string(index=False))


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
