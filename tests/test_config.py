import dataclasses
import json

import pytest

from jaxrec import config as C
from jaxrec.errors import ConfigError


def test_overrides_parse_by_type_and_do_not_mutate_the_original():
    cfg = C.Config(exp="x")
    out = C.apply_overrides(cfg, ["train.steps=7", "data.split.fractions=0.7,0.2,0.1", "eval.ks=5,10",
                                  "eval.select=hr@5", "data.relevant_threshold=none", "data.split.scheme=users"])
    assert out.train.steps == 7 and isinstance(out.train.steps, int)
    assert out.data.split.fractions == (0.7, 0.2, 0.1)
    assert out.eval.ks == (5, 10) and out.eval.select == "hr@5"
    assert out.data.relevant_threshold is None and out.data.split.scheme == "users"
    assert cfg.train.steps == 0 and cfg.data.split.scheme == "leave_last"
    assert C.apply_overrides(cfg, ["data.relevant_threshold=3.5"]).data.relevant_threshold == 3.5


@pytest.mark.parametrize("override, message", [
    ("train.stpes=1", "unknown key (did you mean train.steps, train.patience, train.seed_devices?); valid keys: exp, seed"),
    ("train.steps=1.5", "'1.5' is not an integer"),
    ("train.steps=abc", "'abc' is not an integer"),
    ("data.split.scheme=random", "'random' is not one of leave_last, users, global_time"),
    ("data.split.fractions=0.5,0.5", "expected 3 comma-separated values"),
    ("data.split.fractions=0.5,0.4,0.3", "summing to 1"),
    ("eval.select=ndcg@7", "must be METRIC@K with K among the first protocol's cut-offs"),
    ("train.steps", "expected KEY=VALUE"),
    ("data.split.n_val=0", "model selection needs a validation part"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        C.apply_overrides(C.Config(exp="x"), [override])
    assert message in str(e.value)


def test_describe_lists_nested_keys_with_docs():
    rows = {key: (t, v, doc) for key, t, v, doc in C.describe(C.Config(exp="x"))}
    assert rows["data.split.scheme"][1] == "leave_last"
    assert "validation" in rows["train.eval_every"][2].lower()
    assert rows["eval.ks"][0] == "tuple[int, ...]"


@pytest.mark.parametrize("exp", ["popularity", "mf", "ddpg_id", "mf_multimodal", "ddpg_multimodal", "m3s_tdlambda",
                                 "popularity_seq"])
def test_from_dict_inverts_to_dict_through_json(exp):
    """What resume, --seeds and recommend.py rely on: config.json read back is the config that was written,
    nested model fields and tuples included, and a changed leaf is really read (not the default kept)."""
    import json

    from experiments.registry import EXPERIMENTS

    default = EXPERIMENTS[exp].make_config()
    cfg = C.apply_overrides(default, ["seed=3", "eval.ks=5,7", "data.split.fractions=0.7,0.2,0.1",
                                      "train.log_every=7", "eval.drr_ks=5,7", "eval.select=ndcg@7"])
    d = json.loads(json.dumps(C.to_dict(cfg)))
    assert d["data"]["split"]["fractions"] == [0.7, 0.2, 0.1] and d["seed"] == 3
    back = C.from_dict(default, d)
    assert back == cfg and back != default
    assert back.eval.ks == (5, 7) and isinstance(back.eval.ks, tuple)
    # A model leaf too: change the first boolean or number of the experiment's own dataclass.
    key, _, value, _ = next(row for row in C.describe(cfg)
                            if row[0].startswith("model.") and not row[0].endswith("dim")
                            and isinstance(row[2], (bool, int, float)))
    *path, leaf = key.split(".")
    node = d
    for part in path:
        node = node[part]
    node[leaf] = (not value) if isinstance(value, bool) else value + 1
    assert C.to_dict(C.from_dict(default, d))["model"] == d["model"] != C.to_dict(cfg)["model"]
    # An invalid value is refused like a --set.
    with pytest.raises(ConfigError):
        C.from_dict(default, {**d, "eval": {**d["eval"], "ks": []}})


def test_a_key_missing_from_an_old_config_is_read_as_its_declared_default(tmp_path):
    """A run started before an option existed was trained with the option's declared default (options are added
    with one that keeps the earlier behaviour), even where an experiment registers another value since:
    sasrec_plus registers ``position_origin="first"``, the declared default is ``"last"``. recommend.py (from_dict)
    must rebuild that run's network, and a resume with today's registered value must be refused, not silently
    continue a model trained with the other positions."""
    from experiments.registry import EXPERIMENTS
    from experiments.rundir import RunDir
    from jaxrec.errors import InputError

    registered = EXPERIMENTS["sasrec_plus"].make_config()
    assert registered.model.position_origin == "first"
    old = C.to_dict(registered)
    del old["model"]["position_origin"]
    assert C.from_dict(registered, old).model.position_origin == "last"
    assert C.from_dict(registered, {**old, "seed": 4}) == C.replace(C.replace(registered, "seed", 4),
                                                                     "model.position_origin", "last")
    assert C.declared_defaults(registered)["model"]["norm"] == "post"  # declared, not sasrec_plus's "sasrec"
    (tmp_path / "config.json").write_text(json.dumps(old))
    run = RunDir(tmp_path)
    with pytest.raises(InputError, match="model.position_origin: 'last' there, 'first' now"):
        run.check(C.to_dict(registered), defaults=C.declared_defaults(registered))
    run.check(C.to_dict(C.replace(registered, "model.position_origin", "last")), defaults=C.declared_defaults(registered))


def test_rows_of_one_family_share_split_relevance_and_protocols_by_default():
    """A floor baseline's defaults are its family's: `--exp=popularity` and `--exp=ddpg_id` on the same data
    used to differ in split and relevance (full NDCG@10 .019 against .359 on ML-1M)."""
    from experiments.registry import EXPERIMENTS

    families = {"drr": ("popularity", "mf", "ddpg_id", "mf_multimodal", "ddpg_multimodal"),
                "sequential": ("popularity_seq", "sqn", "m3s_tdlambda", "sasrec", "gru4rec")}
    for family, names in families.items():
        cfgs = {n: EXPERIMENTS[n].make_config() for n in names}
        ref = cfgs[names[1]]
        for name, cfg in cfgs.items():
            assert cfg.data == ref.data, (family, name)
            assert set(cfg.eval.protocols) == set(ref.eval.protocols), (family, name)
            assert (cfg.eval.ks, cfg.eval.drr_ks, cfg.eval.drr_n_state, cfg.eval.drr_ideal) == \
                   (ref.eval.ks, ref.eval.drr_ks, ref.eval.drr_n_state, ref.eval.drr_ideal), (family, name)
    assert EXPERIMENTS["popularity"].make_config().data.split.scheme == "users"
    assert EXPERIMENTS["popularity"].make_config().data.relevant_threshold == 4.0


def _config_classes():
    """Every config dataclass a user can set: the shared parts and each registered experiment's model tree."""
    from experiments.registry import EXPERIMENTS
    from jaxrec.envs.simulator import SimConfig

    seen = {SimConfig}

    def walk(obj):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            seen.add(type(obj))
            for f in dataclasses.fields(obj):
                walk(getattr(obj, f.name))

    for exp in EXPERIMENTS.values():
        walk(exp.make_config())
    return sorted(seen, key=lambda c: c.__qualname__)


def test_one_config_style_frozen_documented_hashable():
    """All configs are written one way: frozen dataclasses (immutable, hashable, so a config is a static jit
    argument as it is) with a docstring per field."""
    classes = _config_classes()
    assert {c.__name__ for c in classes} >= {"Config", "SimConfig", "MFConfig", "MMConfig", "SQNConfig", "DDPGConfig"}
    for cls in classes:
        assert cls.__dataclass_params__.frozen, cls.__qualname__
        docs = C.field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__qualname__} fields without a docstring: {missing}"
        cfg = cls()
        assert hash(cfg) == hash(cls()) and cfg == cls()
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(cfg, dataclasses.fields(cls)[0].name, None)


def test_replace_builds_a_new_config_sharing_the_untouched_parts():
    cfg = C.Config(exp="x")
    out = C.replace(cfg, "data.split.seed", 4)
    assert out.data.split.seed == 4 and cfg.data.split.seed == 0
    assert out.train is cfg.train and out.data.split.fractions == cfg.data.split.fractions


def test_a_compiled_mf_step_ignores_fields_it_does_not_read():
    """The static part of a config is what the compiled function reads: another epoch count or an embedding
    stage's own seed field must not recompile the MF training step; another learning rate must."""
    import jax
    import numpy as np

    from experiments.ddpg import DRREmbedConfig
    from jaxrec.embed import mf

    rng = np.random.default_rng(0)
    user, item = rng.integers(0, 20, 300), rng.integers(0, 30, 300)
    cfg = mf.MFConfig(dim=4, batch=64, positive_threshold=4.0)
    data = mf.prepare_data(user, item, rng.integers(1, 6, 300).astype(np.float32), 20, 30, cfg)
    params = mf.init_params(jax.random.key(0), data, 20, cfg)
    opt_state = mf.make_optimizer(cfg).init(params)
    mf._train_epochs.clear_cache()
    for variant in (cfg, dataclasses.replace(cfg, epochs=3, fold_in_iters=2),
                    DRREmbedConfig(**{**dataclasses.asdict(cfg), "seed": 7})):
        mf.train_epochs(params, opt_state, jax.random.key(1), 0, 1, data, variant)
    assert mf._train_epochs._cache_size() == 1
    mf.train_epochs(params, opt_state, jax.random.key(1), 0, 1, data, dataclasses.replace(cfg, lr=1e-3))
    assert mf._train_epochs._cache_size() == 2
