"""Multimodal user/item embeddings: the seed's ``UserMovieMultiModalEmbedding`` (drr-mm-training), trained.

The seed concatenates an ID part and a multimodal part on both sides (64 + 64 = 128) and never published
how either was trained. Here both parts are fitted jointly, on the training part only, by the same
objective as ``jaxrec.embed.mf`` (eq. (2) bce by default, or (3) mse), with the item vector

    m_i = [M_i ; F(x_i1, ..., x_iM; p_i)]        u = [U_u ; V_u]        z(u, i) = a <u, m_i> + c (+ biases)   (6)

where ``M`` is the item ID table, ``F`` the fusion of the item's modality features (``jaxrec.nets.fusion``:
early/late x concat/mean, presence mask ``p_i``), and ``U``, ``V`` the user's ID and multimodal tables
(one [U, d_id + d_mm] table: only their concatenation is ever used). ``use_ids=False`` drops M and U
(features only, the ablation that isolates the features).

Once fitted, ``to_mf_params`` applies F ONCE to the whole catalogue and returns an ordinary
``MFParams`` with ``item = [M ; F(x)]``: scoring, the empirical-prior fold-in of held-out users, the DRR
simulator, state module, actor and critic all consume it unchanged (the ``Embeddings.item`` seam), so
the RL loop never runs the fusion network.

Items the training part never saw (held-out cold-start items) keep their features: their ID part is
the mean ID vector of the known items, their multimodal part is F of their own features. Negatives are
drawn from the known items only (``MFData.pool``): an item that does not exist yet cannot be a negative.
Each modality is divided by the mean norm of its present rows (``normalize``), so one learning rate fits
TF-IDF (unit rows) and BERT (norms ~10) alike; this uses the features alone, no labels.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxrec.embed import mf
from jaxrec.embed.mf import MFConfig
from jaxrec.errors import ConfigError
from jaxrec.nets.fusion import FUSIONS, POOLS, Fusion, late_concat_dims


@dataclasses.dataclass(frozen=True)
class MMConfig(MFConfig):
    dim: int = 64
    """Width of the ID part of user and item vectors (the seed's multimodal setting: 64)."""
    mm_dim: int = 64
    """Width of the multimodal part: the fused item features and the user's multimodal vector (seed: 64)."""
    fusion: Literal["early", "late"] = "early"
    """early: pool the raw modality vectors, then one Dense; late: one Dense per modality, then pool (seed
    default: early)."""
    pool: Literal["concat", "mean"] = "concat"
    """Modality pooling: concatenation, or element-wise mean over the modalities an item has (seed: concat)."""
    modalities: tuple[str, ...] = ()
    """Modalities of the features directory to use, in this order; empty = all of them (manifest order)."""
    normalize: bool = True
    """Divide each modality by the mean norm of its present rows (label-free; one lr for every extractor)."""
    use_ids: bool = True
    """Keep the ID part; false = features only (items known only through their content)."""

    def validate(self):
        super().validate()
        if self.mm_dim < 1:
            raise ConfigError("mm_dim", f"must be >= 1, got {self.mm_dim}")
        if self.fusion not in FUSIONS or self.pool not in POOLS:
            raise ConfigError("fusion/pool", f"need fusion in {FUSIONS} and pool in {POOLS}")

    @property
    def total_dim(self) -> int:
        """Width of the final user/item vectors: dim + mm_dim (mm_dim alone without IDs)."""
        return (self.dim if self.use_ids else 0) + self.mm_dim

    def mf_view(self) -> MFConfig:
        """The ``MFConfig`` of the fitted ``MFParams`` (fold-in, scoring and data preparation read it)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(MFConfig)}
        return MFConfig(**{**fields, "dim": self.total_dim})


@struct.dataclass
class ItemFeatures:
    """Modality features of the whole catalogue on the device (built by ``make_item_features``)."""

    feats: tuple
    """M arrays [I, d_m] float32 (rows of items lacking the modality are zero)."""
    present: jax.Array
    """[I, M] bool."""


def make_item_features(arrays, masks, normalize: bool = True) -> ItemFeatures:
    """Host arrays (lists in modality order) to ``ItemFeatures``; scales each modality by 1 / mean norm."""
    feats = []
    for x, p in zip(arrays, masks):
        x = np.asarray(x, np.float32)
        p = np.asarray(p, bool)
        if normalize and p.any():
            norm = float(np.linalg.norm(x[p], axis=1).mean())
            x = x / norm if norm > 0 else x
        feats.append(jnp.asarray(np.where(p[:, None], x, 0.0), jnp.float32))
    return ItemFeatures(feats=tuple(feats), present=jnp.asarray(np.stack([np.asarray(p, bool) for p in masks], 1)))


@struct.dataclass
class MMParams:
    """Eq. (6): the user table, the item ID table, the fusion network and the logit's scalars."""

    user: jax.Array
    """[U, total_dim]: [U_u ; V_u] (ID part, then multimodal part)."""
    item_id: jax.Array
    """[I, dim] item ID table ([I, 0] when use_ids is false)."""
    user_bias: jax.Array
    """[U] b_u (mse)."""
    item_bias: jax.Array
    """[I] b_i (mse)."""
    scale: jax.Array
    """() a (bce)."""
    offset: jax.Array
    """() c."""
    fusion: dict
    """Flax parameters of ``Fusion``."""


_STEP_FIELDS = ("objective", "lr", "l2", "n_negatives", "positive_threshold", "mm_dim", "fusion", "pool")
"""What a compiled training step reads; other fields (epochs, dim, ...) do not recompile it."""


def _static(cfg: MMConfig) -> MMConfig:
    return mf.static_part(cfg, MMConfig, *_STEP_FIELDS)


def _module(hp: MMConfig) -> Fusion:
    return Fusion(out_dim=hp.mm_dim, fusion=hp.fusion, pool=hp.pool)


def init_params(key: jax.Array, data: mf.MFData, features: ItemFeatures, n_users: int, cfg: MMConfig) -> MMParams:
    """Normal tables (std ``init_scale``), Flax-initialised fusion, zero biases, a = 1, c = mean rating or 0."""
    hp = _static(cfg)
    ku, ki, kf = jax.random.split(key, 3)
    id_dim = cfg.dim if cfg.use_ids else 0
    fusion = _module(hp).init(kf, tuple(x[:1] for x in features.feats), features.present[:1])["params"]
    offset = jnp.mean(data.rating) if hp.objective == "mse" else jnp.float32(0.0)
    return MMParams(
        user=cfg.init_scale * jax.random.normal(ku, (n_users, cfg.total_dim)),
        item_id=cfg.init_scale * jax.random.normal(ki, (data.n_table, id_dim)),
        user_bias=jnp.zeros(n_users), item_bias=jnp.zeros(data.n_table),
        scale=jnp.float32(1.0), offset=jnp.asarray(offset, jnp.float32), fusion=fusion,
    )


make_optimizer = mf.make_optimizer
"""The multimodal model trains with the MF models' one optimiser."""


def fuse(params: MMParams, features: ItemFeatures, cfg: MMConfig) -> jax.Array:
    """[I, mm_dim]: F applied to every item of the catalogue (once, after or between training chunks)."""
    return _fuse(params.fusion, features, _static(cfg))


@functools.partial(jax.jit, static_argnames=("hp",))
def _fuse(fusion_params, features: ItemFeatures, hp: MMConfig) -> jax.Array:
    return _module(hp).apply({"params": fusion_params}, features.feats, features.present)


def _batch_loss(trainable: dict, feat_rows: tuple, present_rows: jax.Array, target: jax.Array, hp: MMConfig):
    """Eq. (2)/(3) of ``jaxrec.embed.mf`` on the gathered rows, with item rows = [ID rows ; F(features)]."""
    fused = _module(hp).apply({"params": trainable["fusion"]}, feat_rows, present_rows)  # [B, J, mm]
    rows = {k: v for k, v in trainable.items() if k not in ("fusion", "item_id")}
    rows["item"] = jnp.concatenate([trainable["item_id"], fused], axis=-1)
    return mf.example_loss(rows, target, hp)


_TRAINED = {"bce": ("user", "item_id", "scale", "offset", "fusion"),
            "mse": ("user", "item_id", "user_bias", "item_bias", "offset", "fusion")}


def _loss_and_grads(params: MMParams, features: ItemFeatures, user, items, target, hp: MMConfig):
    """Batch loss and its gradient as an ``MMParams`` (rows scattered back once per table, as mf)."""
    trainable = {"user": params.user[user], "item_id": params.item_id[items], "user_bias": params.user_bias[user],
                 "item_bias": params.item_bias[items], "scale": params.scale, "offset": params.offset,
                 "fusion": params.fusion}
    feat_rows = tuple(x[items] for x in features.feats)
    loss, g = jax.value_and_grad(_batch_loss)(trainable, feat_rows, features.present[items], target, hp)

    def scatter(table, idx, upd):
        return jnp.zeros_like(table).at[idx].add(upd, mode="promise_in_bounds")

    grads = {"user": scatter(params.user, user, g["user"]), "item_id": scatter(params.item_id, items, g["item_id"]),
             "user_bias": scatter(params.user_bias, user, g["user_bias"]),
             "item_bias": scatter(params.item_bias, items, g["item_bias"]),
             "scale": g["scale"], "offset": g["offset"], "fusion": g["fusion"]}
    trained = _TRAINED[hp.objective]
    return loss, MMParams(**{k: v if k in trained else jax.tree.map(jnp.zeros_like, v) for k, v in grads.items()})


@functools.partial(jax.jit, static_argnames=("hp",))
def _train_epochs(params, opt_state, key, first_epoch, n_epochs, data: mf.MFData, features: ItemFeatures, hp: MMConfig):
    opt = make_optimizer(hp)

    def step(carry, global_step):
        params, opt_state = carry
        user, items, target = mf.sample_batch(jax.random.fold_in(key, global_step), data, hp.objective, hp.n_negatives)
        loss, grads = _loss_and_grads(params, features, user, items, target, hp)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), loss = mf.run_epochs(step, (params, opt_state), first_epoch, n_epochs, data.steps_per_epoch)
    return params, opt_state, loss


def train_epochs(params: MMParams, opt_state, key: jax.Array, first_epoch, n_epochs, data: mf.MFData,
                 features: ItemFeatures, cfg: MMConfig):
    """Epochs ``first_epoch ..`` of eq. (6); draws of step t come from ``fold_in(key, t)`` (resumable)."""
    return _train_epochs(params, opt_state, key, jnp.int32(first_epoch), jnp.int32(n_epochs), data, features,
                         _static(cfg))


def to_mf_params(params: MMParams, features: ItemFeatures, data: mf.MFData, cfg: MMConfig) -> mf.MFParams:
    """The fitted model as ``MFParams`` (item = [M ; F(x)] for the whole catalogue) with its fold-in prior."""
    item_id = params.item_id
    if item_id.shape[1]:
        # ID rows of items the training part does not know: the mean known item (module docstring).
        p = data.in_pool.astype(jnp.float32)
        mean = (p @ item_id) / jnp.maximum(p.sum(), 1.0)
        item_id = jnp.where(data.in_pool[:, None], item_id, mean)
    item = jnp.concatenate([item_id, fuse(params, features, cfg)], axis=1)
    d = cfg.total_dim
    out = mf.MFParams(user=params.user, item=item, user_bias=params.user_bias, item_bias=params.item_bias,
                      scale=params.scale, offset=params.offset, prior_mean=jnp.zeros(d + 1),
                      prior_cov=jnp.eye(d + 1), noise_var=jnp.float32(1.0))
    # Every row of `item` is now meaningful: with_prior must not overwrite out-of-pool rows.
    return mf.with_prior(out, data.replace(in_pool=jnp.ones_like(data.in_pool)), cfg.objective)


def fit(key: jax.Array, data: mf.MFData, features: ItemFeatures, n_users: int, cfg: MMConfig,
        on_epoch: Callable[[int, float], None] | None = None) -> mf.MFParams:
    """Fits eq. (6) for ``cfg.epochs`` epochs and returns it as ``MFParams``. ``on_epoch(epoch, loss)`` (a
    progress bar) makes it run one epoch per call: the same parameters, as in ``mf.fit_mf``."""
    k_init, k_train = jax.random.split(key)
    params = init_params(k_init, data, features, n_users, cfg)
    opt = make_optimizer(cfg).init(params)
    if on_epoch is None:
        params = train_epochs(params, opt, k_train, 0, cfg.epochs, data, features, cfg)[0]
    else:
        for epoch in range(cfg.epochs):
            params, opt, loss = train_epochs(params, opt, k_train, epoch, 1, data, features, cfg)
            on_epoch(epoch + 1, float(loss))
    return to_mf_params(params, features, data, cfg)


def check_dims(cfg: MMConfig, n_modalities: int):
    if cfg.fusion == "late" and cfg.pool == "concat" and min(late_concat_dims(cfg.mm_dim, n_modalities)) < 1:
        raise ConfigError("mm_dim", f"late/concat fusion of {n_modalities} modalities needs mm_dim >= {n_modalities}")
