"""Training step time of the whole-sequence experiments on ML-1M: length strata against full-width rows.

  python benchmarks/seq_plus_speed.py [--quick] [--data DIR] [--exps sasrec_plus,m3s_plus] [--steps S] [--repeats R]

Methodology
-----------
1. Data: the prepared ML-1M (``data/ml-1m``), the experiments' default split (per-user leave-last), training part
   only; one row per user of its last 200 training items (``user_sequences``).
2. Ours: the registered config of each experiment (``sasrec_plus``: 128 users per step, ``length_strata=8`` with
   one gradient slice of 16 users per stratum, each stratum's rows cut to its longest history,
   ``UserSequences.strata``). Baseline: the same config with ``length_strata=1`` and ``micro_batches=8`` (every
   row 200 slots wide, the same 16-user slices, so the same memory per slice), and, informational, the plus
   family's previous default ``micro_batches=4`` (32-user slices).
3. Each setting is compiled and run for one step outside the timed region; a repeat times one
   ``train(state, data, S)`` call (default S = 10; ``--quick`` 3) to ``block_until_ready``. Repeats (default 3)
   alternate the settings so load from other processes hits all alike; reported numbers are MEDIANS of the
   seconds per step. The 1-minute load average is printed, with a warning when other processes compete.
4. Output: one JSON line per experiment and baseline (docs/design.md, section 7): ``EXP_step_s`` with
   ratio = baseline / ours (> 1: ours faster). ``--quick``: 2 repeats of 3 steps of ``sasrec_plus`` only.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.common import device, load_note, positive  # noqa: E402
from jaxrec.cli import ArgParser, cli_main  # noqa: E402
from jaxrec.data.prepared import check_prepared  # noqa: E402
from jaxrec.errors import InputError  # noqa: E402

KNOWN = ("sasrec_plus", "gru4rec_plus", "sqn_plus", "m3s_plus")


def parse_args(argv=None):
    p = ArgParser(prog="seq_plus_speed.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", default=str(REPO / "data" / "ml-1m"))
    p.add_argument("--exps", default=None, help="default sasrec_plus,m3s_plus (--quick: sasrec_plus)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    positive("--steps", args.steps)
    positive("--repeats", args.repeats)
    args.exps = (args.exps or ("sasrec_plus" if args.quick else "sasrec_plus,m3s_plus")).split(",")
    unknown = [e for e in args.exps if e not in KNOWN]
    if unknown or not [e for e in args.exps if e]:
        raise InputError("--exps", f"{','.join(unknown) or '(none)'}: expected some of {', '.join(KNOWN)}")
    args.steps = args.steps or (3 if args.quick else 10)
    args.repeats = args.repeats or (2 if args.quick else 3)
    args.data = str(check_prepared(args.data))
    return args


def settings(model):
    """(name, SQNConfig) of ours and the baselines."""
    return [("ours", model),
            ("full_width_same_slices", dataclasses.replace(model, length_strata=1,
                                                           micro_batches=model.length_strata * model.micro_batches)),
            ("full_width_previous_default", dataclasses.replace(model, length_strata=1, micro_batches=4))]


def main_args(argv) -> None:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp

    from experiments.sequential import configs
    from jaxrec.data.prepared import load_prepared
    from jaxrec.data.sequences import user_sequences
    from jaxrec.data.splits import leave_last_out, train_view
    from jaxrec.rl.sqn import make_train

    inter = load_prepared(args.data)[0]
    split = leave_last_out(inter)
    train = train_view(inter, split)
    dev = device()
    print(f"device: {dev}; jax {jax.__version__}; data: {args.data}, {len(train)} training rows", flush=True)
    for exp in args.exps:
        model = getattr(configs, f"{exp}_config")().model.for_split(split.heldout_users)
        seqs = user_sequences(train, model.max_len, model.min_history)
        runs = {}
        for name, m in settings(model):
            m.validate()
            data = jax.device_put(seqs.strata(m.length_strata) if m.length_strata > 1 else seqs.arrays())
            init, fn = make_train(m, m.network(inter.n_items))
            fn = jax.jit(fn)
            state, _ = fn(jax.jit(init)(jax.random.key(0)), data, jnp.int32(1))  # compile + one step
            jax.block_until_ready(state)
            runs[name] = [fn, state, data, []]
        if model.length_strata > 1:
            widths = [int(p["items"].shape[1]) for p in runs["ours"][2]]
            print(f"{exp}: {len(seqs)} users, strata widths {widths} (full width {model.max_len})", flush=True)
        load_note(f"{exp} before")
        for _ in range(args.repeats):
            for run in runs.values():
                fn, state, data, times = run
                t = time.perf_counter()
                run[1], _ = fn(state, data, jnp.int32(args.steps))
                jax.block_until_ready(run[1])
                times.append((time.perf_counter() - t) / args.steps)
        load_note(f"{exp} after")
        ours = statistics.median(runs["ours"][3])
        for name in ("full_width_same_slices", "full_width_previous_default"):
            base = statistics.median(runs[name][3])
            print(json.dumps({"metric": f"{exp}_step_s", "ours": round(ours, 3), "baseline": round(base, 3),
                              "ratio": round(base / ours, 2), "unit": "s/step", "device": dev, "baseline_setting": name,
                              "users_per_step": model.batch_size, "steps": args.steps, "repeats": args.repeats,
                              "ours_all": [round(x, 3) for x in runs["ours"][3]],
                              "baseline_all": [round(x, 3) for x in runs[name][3]]}), flush=True)


def main(argv=None) -> int:
    return cli_main(main_args, argv)


if __name__ == "__main__":
    sys.exit(main())
