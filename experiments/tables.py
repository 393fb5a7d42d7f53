"""Every results table of the README: the runs behind it, and the report that fills it in.

  python experiments/tables.py list                       # tables, their rows and commands
  python experiments/tables.py run [--tables T ...] [--jobs N] [--data DIR] [--features DIR] [--runs DIR]
  python experiments/tables.py report [--tables T ...] [--readme README.md] [--runs DIR]

``run`` starts one ``experiments/run.py`` process per row (rows shared by two tables run once), ``--jobs``
at a time, each logging to ``RUN_DIR.log``; a row whose ``final.json`` exists is skipped, and an interrupted
row resumes from its checkpoints when started again. ``report`` rewrites each table between its README
markers from the rows' ``final.json`` (``experiments/report.py``). Keeping the commands here, once, is what
lets every table be regenerated the same way after a change that moves numbers.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from jaxrec import config as C  # noqa: E402
from jaxrec.cli import ArgParser, cli_main  # noqa: E402
from jaxrec.errors import ConfigError  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    """Row label in the table (``experiment`` column)."""
    run_dir: str
    """Run directory under the runs root."""
    exp: str
    seeds: int = 3
    sets: tuple[str, ...] = ()
    """``--set`` overrides of the run."""
    features: bool = False
    """Pass the features directory (multimodal experiments)."""
    report_dir: str | None = None
    """Directory the report reads, when it is not ``run_dir`` (e.g. one seed of a multi-seed run)."""


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    rows: tuple[Row, ...]
    metrics: str
    protocol: str = "full"
    part: str = "test"


MM = ("model.embed.modalities=text,meta",)
MF_MM = ("model.modalities=text,meta",)
COLD = "data.split.cold_items=0.2"
DRR_COLD = (COLD, "eval.protocols=drr,full,cold_start")
MF_COLD = (COLD, "eval.protocols=full,drr,cold_start")
DRR_ROWS = (Row("popularity", "ml1m/popularity", "popularity"), Row("mf", "ml1m/mf", "mf"),
            Row("ddpg_id", "ml1m/ddpg_id", "ddpg_id"))
UNIT = Row("ddpg_id, unit actions (sigma 0.1)", "ml1m/ddpg_id-unit", "ddpg_id",
           sets=("model.agent.action=unit", "model.agent.sigma=0.1"))
DDPG_TUNED = ("model.agent.actor_lr=1e-4", "model.agent.critic_lr=3e-4", "model.agent.gamma=0.5", "model.agent.tau=0.01")
"""The validation winner of the README's ddpg_id tuning (ablate.py's ddpg_* grids); the rest as registered."""
DDPG_64X4 = ("model.agent.n_envs=64", "model.agent.updates_per_step=4", "train.steps=5000", "train.eval_every=500",
             "train.ckpt_every=500", "train.log_every=50")
"""64 parallel users and 4 updates per vectorised step: the ddpg_envs grid's fastest point to the one-user quality."""
SEQ_STEPS = ("train.eval_every=500",)
ABLATION = ("train.steps=2000", "train.eval_every=500", "train.ckpt_every=500")


def _tuning() -> tuple[Row, ...]:
    rows = []
    for exp, steps, points, picked in (
            ("sasrec", 6000, [("1e-3", "0"), ("1e-3", "0.1"), ("1e-3", "0.3"), ("3e-3", "0"), ("3e-3", "0.1"),
                              ("3e-3", "0.3")], ("3e-3", "0.1")),
            ("gru4rec", 5000, [("1e-3", "0.1"), ("1e-3", "0.3"), ("3e-3", "0.1"), ("3e-3", "0.3"), ("3e-3", "0.5"),
                               ("1e-2", "0.3")], ("3e-3", "0.3"))):
        for lr, p in points:
            label = f"{exp} lr {lr} dropout {p}" + (" (picked)" if (lr, p) == picked else "")
            rows.append(Row(label, f"tune/{exp}-lr{lr}-p{p}", exp, seeds=1,
                            sets=(f"model.lr={lr}", f"model.dropout={p}", f"train.steps={steps}", *SEQ_STEPS)))
    return tuple(rows)


ABLATION_LABELS = {
    ("lambda", "lam0.0"): "λ = 0 (one-step TD)", ("lambda", "lam0.5"): "λ = 0.5",
    ("lambda", "lam1.0"): "λ = 1 (n-step Monte-Carlo)", ("nsteps", "n1"): "n = 1 (no SSL)",
    ("nsteps", "n3"): "n = 3", ("nsteps", "n10"): "n = 10", ("ssl", "none"): "SSL none",
    ("ssl", "ahead"): "SSL ahead (next items from s_t)",
    ("doubleq", "networks"): "double Q: two networks, coin-switched (SQN, seed)",
    ("doubleq", "none"): "double Q: none (one head, own target)",
}
"""README labels of the ablation points (ablate.py's grids); the default point, the same in every grid,
is one row."""


def _ablations() -> tuple[Row, ...]:
    """The points of ablate.py's m3s_tdlambda grids, each run once: the points equal to the registered
    config (one per grid) are the one default row."""
    from experiments.ablate import GRIDS
    from experiments.registry import EXPERIMENTS

    rows = [Row("default: λ 0.8, n 6, SSL future_states, double-Q heads", "ablate/default", "m3s_tdlambda", seeds=1,
                sets=ABLATION)]
    for grid_name in ("lambda", "nsteps", "ssl", "doubleq"):
        grid = GRIDS[grid_name]
        default = EXPERIMENTS[grid.exp].make_config()
        for label, overrides in grid.points:
            if C.apply_overrides(default, list(overrides)) != default:
                rows.append(Row(ABLATION_LABELS[grid_name, label], f"ablate/{grid_name}-{label}", grid.exp, seeds=1,
                                sets=(*ABLATION, *overrides)))
    return tuple(rows)


TABLES = (
    Table("ml1m-drr", DRR_ROWS, "drr:precision@5,drr:ndcg@5,drr:precision@10,drr:ndcg@10,full:hr@10,full:ndcg@10"),
    Table("ml1m-ddpg-tuned", (*DRR_ROWS, Row("ddpg_id, tuned", "ml1m/ddpg_id-tuned", "ddpg_id", sets=DDPG_TUNED),
                              Row("ddpg_id, tuned, 64 users x 4 updates, 5k steps", "ml1m/ddpg_id-tuned-64x4", "ddpg_id",
                                  sets=(*DDPG_TUNED, *DDPG_64X4))),
          "drr:precision@10,drr:ndcg@10,full:hr@10,full:ndcg@10"),
    Table("ml1m-vectorised", (
        Row("1 user, 100k steps", "ml1m/ddpg_id", "ddpg_id", report_dir="ml1m/ddpg_id/seed0"),
        Row("64 users, 5k steps", "ml1m/ddpg_id-64x5k", "ddpg_id", seeds=1,
            sets=("model.agent.n_envs=64", "train.steps=5000")),
        Row("64 users, 20k steps", "ml1m/ddpg_id-64x20k", "ddpg_id", seeds=1,
            sets=("model.agent.n_envs=64", "train.steps=20000"))),
        "drr:precision@10,drr:ndcg@10,full:hr@10"),
    Table("ml1m-mm", (*DRR_ROWS, Row("mf_multimodal", "ml1m/mf_multimodal", "mf_multimodal", sets=MF_MM, features=True),
                      Row("ddpg_multimodal", "ml1m/ddpg_multimodal", "ddpg_multimodal", sets=MM, features=True)),
          "drr:precision@10,drr:ndcg@10,full:hr@10,full:ndcg@10,full:ndcg@20"),
    Table("ml1m-cold", (
        Row("popularity", "ml1m-cold/popularity", "popularity", sets=DRR_COLD),
        Row("mf", "ml1m-cold/mf", "mf", sets=MF_COLD),
        Row("ddpg_id (seed 0)", "ml1m-cold/ddpg_id", "ddpg_id", seeds=1, sets=DRR_COLD),
        Row("mf_multimodal", "ml1m-cold/mf_multimodal", "mf_multimodal", sets=(*MF_MM, *MF_COLD), features=True),
        Row("ddpg_multimodal", "ml1m-cold/ddpg_multimodal", "ddpg_multimodal", sets=(*MM, *DRR_COLD), features=True)),
        "drr:ndcg@10,full:ndcg@10,cold_start:hr@10,cold_start:ndcg@10,cold_start:recall@20"),
    Table("ml1m-sequential", tuple(Row(exp, f"final/{exp}", exp)
                                   for exp in ("popularity_seq", "gru4rec", "sasrec", "sqn", "m3s_tdlambda")),
          "hr@5,ndcg@5,hr@10,ndcg@10,hr@20,ndcg@20,hr@40,ndcg@40", protocol="next_item"),
    # The field's standard protocol (issue #12): leave-last split (the plus family's default), full ranking.
    Table("ml1m-standard", (Row("popularity_seq", "standard/popularity_seq", "popularity_seq",
                                sets=("data.split.scheme=leave_last",)),
                            *(Row(exp, f"standard/{exp}", exp)
                              for exp in ("sasrec_plus", "gru4rec_plus", "sqn_plus", "m3s_plus"))),
          "hr@10,ndcg@10,hr@20,ndcg@20", protocol="next_item"),
    Table("ml1m-ddpg-actions", (DRR_ROWS[2], UNIT), "drr:precision@10,drr:ndcg@10,full:hr@10,full:ndcg@10"),
    Table("ml1m-sequential-tuning", _tuning(), "ndcg@10,hr@10", protocol="next_item", part="val"),
    Table("ml1m-ablations", _ablations(), "hr@10,ndcg@10,hr@20,ndcg@20", protocol="next_item"),
)
BY_NAME = {t.name: t for t in TABLES}


def selected(names) -> list[Table]:
    unknown = [n for n in names or () if n not in BY_NAME]
    if unknown:
        raise ConfigError("--tables", f"unknown table(s) {unknown}; known: {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names] if names else list(TABLES)


def command(row: Row, data: str, features: str, runs: Path) -> list[str]:
    cmd = [sys.executable, "experiments/run.py", f"--exp={row.exp}", "--data", data,
           "--seeds", str(row.seeds), "--run-dir", str(runs / row.run_dir), "--quiet"]
    if row.features:
        cmd += ["--features", features]
    if row.sets:
        cmd += ["--set", *row.sets]
    return cmd


def unique_rows(tables: list[Table]) -> list[Row]:
    """Each run directory once, in table order; two rows naming one directory must be the same run."""
    rows: dict[str, Row] = {}
    for t in tables:
        for r in t.rows:
            same = rows.setdefault(r.run_dir, r)
            if (same.exp, same.seeds, same.sets, same.features) != (r.exp, r.seeds, r.sets, r.features):
                raise ConfigError("tables", f"{r.run_dir} is two different runs ({same.label!r}, {r.label!r})")
    return list(rows.values())


def run_rows(rows: list[Row], data: str, features: str, runs: Path, jobs: int, progress=print) -> int:
    todo = [r for r in rows if not (runs / r.run_dir / "final.json").is_file()]
    progress(f"{len(rows) - len(todo)} of {len(rows)} runs already finished; {len(todo)} to run, {jobs} at a time")

    def one(row: Row) -> int:
        log = runs / f"{row.run_dir}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "w") as fh:
            rc = subprocess.call(command(row, str(Path(data).resolve()), str(Path(features).resolve()), runs.resolve()),
                                 stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        progress(f"{'done' if rc == 0 else f'FAILED (exit {rc}, see {log})'}: {row.run_dir} in {time.time() - start:.0f} s")
        return rc

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        codes = list(pool.map(one, todo))
    return 0 if all(c == 0 for c in codes) else 1


def report(tables: list[Table], runs: Path, readme: str) -> int:
    from experiments import report as report_cli

    for t in tables:
        missing = [r.run_dir for r in t.rows if not (runs / (r.report_dir or r.run_dir) / "final.json").is_file()]
        if missing:
            print(f"{t.name}: skipped, runs not finished: {', '.join(missing)}")
            continue
        argv = ["--runs", *[f"{r.label}={runs / (r.report_dir or r.run_dir)}" for r in t.rows],
                "--protocol", t.protocol, "--metrics", t.metrics, "--part", t.part, "--readme", readme,
                "--section", t.name]
        if report_cli.main(argv) != 0:
            return 1
    return 0


def main_args(argv) -> int:
    p = ArgParser(prog="tables.py", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("list", "run", "report"))
    p.add_argument("--tables", nargs="+", help=f"table names (default all): {', '.join(BY_NAME)}")
    p.add_argument("--data", default="data/ml-1m", help="prepared ML-1M directory")
    p.add_argument("--features", default="data/features/ml-1m", help="extracted ML-1M features directory")
    p.add_argument("--runs", default="runs", help="root of the run directories")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    tables, runs = selected(args.tables), Path(args.runs)
    if args.jobs < 1:
        raise ConfigError("--jobs", f"must be >= 1, got {args.jobs}")
    if args.action == "list":
        for t in tables:
            print(f"{t.name} ({t.protocol}, {t.part}: {t.metrics})")
            for r in t.rows:
                print(f"  {r.label}: python {' '.join(command(r, args.data, args.features, runs)[1:])}")
        return 0
    if args.action == "run":
        from jaxrec.data.prepared import check_prepared

        check_prepared(args.data)
        return run_rows(unique_rows(tables), args.data, args.features, runs, args.jobs)
    return report(tables, runs, args.readme)


def main(argv=None) -> int:
    status = [0]

    def body(a):
        status[0] = main_args(a)

    return cli_main(body, argv) or status[0]


if __name__ == "__main__":
    sys.exit(main())
