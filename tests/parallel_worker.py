"""Run by tests/test_parallel.py in a subprocess whose XLA_FLAGS give the CPU 4 devices (the flag must be set
before JAX starts): ``python -m tests.parallel_worker CHECK DATA_DIR OUT_DIR`` prints one JSON line."""
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxrec import parallel
from jaxrec.data.sequences import sequence_chunks
from jaxrec.data.splits import train_view, user_split
from jaxrec.envs import simulator as S
from jaxrec.rl import ddpg, sqn
from tests.helpers import synthetic_interactions


def max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


RUN_ARGS = {"m3s": ["--exp=m3s_tdlambda", "--quick", "--set", "data.split.scheme=users",
                    "data.split.heldout_visible=5", "train.log_every=2"],
            "ddpg": ["--exp=ddpg_id", "--quick", "--set", "train.steps=60", "train.eval_every=30",
                     "train.ckpt_every=30", "train.log_every=10", "model.agent.n_envs=4", "model.agent.batch_size=16"]}
"""The end-to-end runs of ``runs`` and ``seed_runs``: a few chunks each (log, eval and checkpoint points)."""
SEED_RUN_ARGS = {**RUN_ARGS, "mf": ["--exp=mf", "--quick", "--set", "train.log_every=2"]}
"""``seed_runs`` also splits the seeds of ``mf`` (its epochs vmapped over seeds; no ``--devices`` mode)."""
SEED_SPLITS = {"m3s": (2,), "ddpg": (2, 4), "mf": (2,)}
"""Device counts each experiment's 4 seeds are split over in ``seed_runs`` (and run on 1 device to compare): 2
seeds per device for every trainer, and one seed per device for DDPG, whose state has the most kinds of leaves
(replay buffer, simulator, two networks and their targets). Each split is a full run of its own (~15 s here)."""


def final_diff(one: dict, other: dict) -> float:
    """Largest absolute difference between two final.json's val/test metrics."""
    return max(abs(one[part][p][m] - other[part][p][m]) for part in ("val", "test") for p in one[part]
               for m in one[part][p])


def all_reduces(jitted, *args) -> int:
    return jitted.lower(*args).compile().as_text().count("all-reduce(")


def ddpg_update() -> dict:
    """One DDPG update from the same filled replay on 1 and on 4 devices, and the critic gradient of both."""
    inter = synthetic_interactions(n_users=40, n_items=30, per_user=(12, 25))
    train = train_view(inter, user_split(inter, (0.8, 0.1, 0.1), seed=0))
    cfg = ddpg.DDPGConfig(dim=8, hidden=16, n_state=4, top_k=3, batch_size=8, n_envs=4, replay_capacity=256)
    scfg = cfg.sim_config(4.0)
    sim = S.make_sim_data(train, scfg)
    key = jax.random.key(3)
    emb = ddpg.Embeddings(user=0.3 * jax.random.normal(key, (inter.n_users, 8)),
                          item=0.3 * jax.random.normal(jax.random.fold_in(key, 1), (inter.n_items, 8)))
    init, train_fn = ddpg.make_train(cfg, sim, scfg)
    state, _ = jax.jit(train_fn, static_argnums=1)(jax.jit(init)(jax.random.key(0), emb), 12)  # replay filled
    mesh = parallel.make_mesh(4)
    shard = parallel.batch_sharder(mesh)
    one = jax.jit(ddpg.make_update(cfg))
    four = jax.jit(ddpg.make_update(cfg, shard))
    k = jax.random.key(9)
    s1, m1 = one(state, k)
    s4, m4 = four(parallel.replicate(state, mesh), k)
    critic_loss, _ = ddpg.make_losses(cfg)
    batch, _, weights = jax.jit(lambda r: S_sample(r, k, cfg))(state.replay)

    def grad(shard_fn):
        def g(st, b, w):
            b, w = shard_fn((b, w))
            def loss(critic):
                return critic_loss(critic, st.critic_target, st.actor_target, st.emb, b, w, cfg.gamma)[0]

            return jax.grad(loss)(st.critic)
        return jax.jit(g)

    g1 = grad(lambda t: t)(state, batch, weights)
    g4_fn = grad(shard)
    rep = parallel.replicate((state, batch, weights), mesh)
    g4 = g4_fn(*rep)
    ratio = float(jnp.linalg.norm(ravel_pytree(g4)[0]) / jnp.linalg.norm(ravel_pytree(g1)[0]))
    return {"params_diff": max_diff((s1.actor, s1.critic), (s4.actor, s4.critic)),
            "loss_diff": abs(float(m1["critic_loss"]) - float(m4["critic_loss"])),
            "grad_diff": max_diff(g1, g4), "grad_norm_ratio": ratio,
            "all_reduces": all_reduces(four, parallel.replicate(state, mesh), k),
            "all_reduces_one": all_reduces(one, state, k),
            "out_devices": len(jax.tree.leaves(s4.actor)[0].sharding.device_set)}


def S_sample(replay, key, cfg):
    from jaxrec.rl import replay as replay_lib

    return replay_lib.sample(replay, key, cfg.batch_size, cfg.per_beta)


def sqn_update() -> dict:
    """One M3S update (4 micro-batches) of the same batch on 1 and on 4 devices."""
    cfg = sqn.SQNConfig(window=4, dim=8, heads=2, ff_dim=16, n_steps=3, batch_size=32, chunk=2, micro_batches=2,
                        negatives=3, bootstrap_at_end=False)
    inter = synthetic_interactions(n_users=30, n_items=25, per_user=(10, 20), seed=2)
    data = jax.device_put(sequence_chunks(inter, cfg.window, cfg.lookahead, cfg.chunk, cfg.min_history).arrays())
    net = cfg.network(inter.n_items)
    mesh = parallel.make_mesh(4)
    init, train1 = sqn.make_train(cfg, net)
    _, train4 = sqn.make_train(cfg, net, parallel.batch_sharder(mesh))
    state = jax.jit(init)(jax.random.key(0))
    one, four = jax.jit(train1), jax.jit(train4)
    s1, m1 = one(state, data, jnp.int32(1))
    s4, m4 = four(parallel.replicate(state, mesh), parallel.replicate(data, mesh), jnp.int32(1))
    # Adam's first step moves every parameter by ~lr whatever the gradient's scale: compare the gradients'
    # own scale through the first moment (mu = (1 - b1) g after one step).
    mu1, mu4 = (np.asarray(optax.tree_utils.tree_get(s.opt_state, "mu")) for s in (s1, s4))
    ratio = float(np.linalg.norm(mu4) / np.linalg.norm(mu1))
    return {"params_diff": max_diff(s1.params, s4.params), "loss_diff": abs(float(m1["loss"]) - float(m4["loss"])),
            "grad_norm_diff": abs(float(m1["grad_norm"]) - float(m4["grad_norm"])), "moment_ratio": ratio,
            "all_reduces": all_reduces(four, *parallel.replicate((state, data), mesh), jnp.int32(1)),
            "out_devices": len(s4.params.sharding.device_set)}


def runs(data_dir: str, out_dir: str) -> dict:
    """--devices 4 against --devices 1 end to end (m3s_tdlambda, ddpg_id), and how often each traced its step."""
    from experiments.ddpg import ddpg as ddpg_mod
    from experiments.run import main
    from experiments.sequential import trainer as seq_trainer

    traces = []

    def counting(make):
        def wrapped(*args, **kwargs):
            init, train = make(*args, **kwargs)

            def counted(*a):
                traces.append(1)
                return train(*a)

            return init, counted

        return wrapped

    seq_trainer.make_train = counting(seq_trainer.make_train)
    ddpg_mod.make_train = counting(ddpg_mod.make_train)
    args = RUN_ARGS
    out = {}
    for name, a in args.items():
        finals = {}
        for devices in (1, 4):
            before = len(traces)
            run = Path(out_dir) / f"{name}{devices}"
            assert main(["--data", data_dir, "--run-dir", str(run), "--devices", str(devices), "--quiet"] + a) == 0
            out[f"{name}_traces_{devices}"] = len(traces) - before
            finals[devices] = json.loads((run / "final.json").read_text())
        one, four = finals[1], finals[4]
        out[f"{name}_metric_diff"] = final_diff(one, four)
        out[f"{name}_chunks"] = sum(1 for _ in (Path(out_dir) / f"{name}4" / "metrics.jsonl").open())
    # 4 parallel users do not split over 3 devices: refused before anything is written.
    bad = Path(out_dir) / "bad"
    out["indivisible_rc"] = main(["--data", data_dir, "--run-dir", str(bad), "--devices", "3", "--quiet"]
                                 + args["ddpg"])
    out["indivisible_left_nothing"] = not bad.exists()
    return out


def seed_runs(data_dir: str, out_dir: str) -> dict:
    """--seeds 4 split over SEED_SPLITS' devices against 1 (m3s_tdlambda, ddpg_id, mf): metrics, how many devices
    the vmapped stack of seeds lived on, whether its program has collectives, and how often each traced."""
    from experiments.run import main
    from jaxrec import seeds as seeds_lib

    traces, spans, collectives = [], [], []
    unstack = seeds_lib.unstack

    def recording(states, n):
        spans.append(len(jax.tree.leaves(states)[0].sharding.device_set))
        return unstack(states, n)

    seeds_lib.unstack = recording
    vmap_train = seeds_lib.vmap_train

    def inspected(train, *args, **kwargs):
        def counted(*a):
            traces.append(1)
            return train(*a)

        many = vmap_train(counted, *args, **kwargs)
        mesh = kwargs.get("mesh")
        if mesh is None:
            return many

        checked_once = []

        def checked(states, *rest):
            if not checked_once:  # the split program, compiled once more: seeds never talk to each other
                split = parallel.split_leading(mesh)
                static = tuple(i for i, x in enumerate(rest, 1) if isinstance(x, int))
                text = jax.jit(lambda s, *r: many(s, *r), static_argnums=static).lower(
                    jax.device_put(jax.tree.map(jnp.copy, states), split), *rest).compile().as_text()
                collectives.append(sum(text.count(op) for op in ("all-reduce(", "all-gather(", "all-to-all(",
                                                                  "collective-permute(", "reduce-scatter(")))
                checked_once.append(True)
            return many(states, *rest)

        return checked

    seeds_lib.vmap_train = inspected
    args = SEED_RUN_ARGS
    out = {}
    for name, a in args.items():
        finals = {}
        for devices in (1, *SEED_SPLITS[name]):
            before, spans_before = len(traces), len(spans)
            run = Path(out_dir) / f"{name}{devices}"
            assert main(["--data", data_dir, "--run-dir", str(run), "--seeds", "4", "--quiet"] + a
                        + [f"train.seed_devices={devices}"]) == 0
            out[f"{name}_traces_{devices}"] = len(traces) - before
            out[f"{name}_spans_{devices}"] = sorted(set(spans[spans_before:]))
            finals[devices] = [json.loads((run / f"seed{s}" / "final.json").read_text()) for s in range(4)]
        for devices in SEED_SPLITS[name]:
            out[f"{name}_metric_diff_{devices}"] = max(final_diff(one, other)
                                                       for one, other in zip(finals[1], finals[devices]))
    out["collectives"] = collectives
    # 4 seeds do not split over 3 devices: refused before anything is written.
    bad = Path(out_dir) / "bad"
    out["indivisible_rc"] = main(["--data", data_dir, "--run-dir", str(bad), "--seeds", "4", "--quiet"]
                                 + args["ddpg"] + ["train.seed_devices=3"])
    out["indivisible_left_nothing"] = not bad.exists()
    return out


if __name__ == "__main__":
    check = sys.argv[1]
    result = {"devices": jax.device_count()}
    if check == "ddpg_update":
        result.update(ddpg_update())
    elif check == "sqn_update":
        result.update(sqn_update())
    elif check == "runs":
        result.update(runs(sys.argv[2], sys.argv[3]))
    elif check == "seed_runs":
        result.update(seed_runs(sys.argv[2], sys.argv[3]))
    print(json.dumps(result))
