"""Matrix-factorisation pretraining of user/item embeddings, and fold-in of users the fit never saw.

Two objectives (``MFConfig.objective``), both fitted by minibatch Adam inside one jitted ``lax.scan``
per epoch, on TRAINING interactions only (callers pass ``train_view`` rows; see
``jaxrec.data.splits``). One prediction form serves both (``MFParams``):

    z(u, i) = a * <U_u, M_i> + c + b_u + b_i                                                   (1)

``bce`` (the DRR seed's embedding recipe made leak-free, docs/differences.md#drr-embed-recipe and
#drr-embed-leak): positives P are training pairs with rating >= ``positive_threshold``; each positive
(u, i) is paired with ``n_negatives`` items j drawn uniformly from the items u has NOT rated positive;
z = a <U_u, M_i> + c is the seed's Dense(1) on the dot product (b_u = b_i = 0, untrained, so popularity
stays inside the embeddings that DRR consumes).
Per-positive loss, minimised as a minibatch mean:

    l_bce = softplus(-z(u,i)) + sum_k softplus(z(u,j_k))
            + l2 * (|U_u|^2 + |M_i|^2 + sum_k |M_{j_k}|^2)                                       (2)

``mse`` (biased MF, Koren et al. 2009; the DRR paper's simulator rates unrated items with it): every
training row (u, i, r), a = 1 fixed, c initialised at the mean training rating:

    l_mse = (r - z(u,i))^2 + l2 * (|U_u|^2 + |M_i|^2 + b_u^2 + b_i^2)                           (3)

Regularisation is per example (weighted-lambda, Zhou et al. 2008), so a user's total penalty grows
with their number of examples and ``l2`` does not depend on the data set size.

Fold-in (``fold_in_users``): a user the fit never saw gets the MAP estimate of its parameters given its
visible history alone, item side frozen, under the EMPIRICAL population prior t ~ N(t0, S): t0 and S
are the mean and covariance of the fitted users' t = [U_u, b_u] (recomputed after every epoch chunk,
``MFParams.prior_mean``/``prior_cov``). A new user is a draw from the same population, so a short
history is shrunk towards average taste with the population's own spread, and no fold-in strength has
to be tuned (the training ``l2`` is a per-example optimiser regulariser, not a prior: on ML-1M with 10
visible items, a ridge fold-in at that ``l2`` overfits the few items: validation NDCG@10 0.33 against
0.39 with the empirical prior). With P = S^-1:

    mse: min_t  sum_i (y_i - x_i^T t)^2 / (2 s^2) + (t - t0)^T P (t - t0) / 2,
         x_i = [a M_i, 1], y_i = r_i - c - b_i, s^2 = mean squared training residual; generalised ridge:
         t = (X^T X + s^2 P)^-1 (X^T y + s^2 P t0)                                              (4)
    bce: min_u  sum_{i in P_u} softplus(-z_i) + w sum_{j not in P_u} softplus(z_j)
                + (u - u0)^T P (u - u0) / 2,     w = nu n / (I - n)                              (5)

(5) replaces the sampled negatives of (2) by their expectation (n = |P_u| visible positives, each with
nu = n_negatives negatives uniform over the I - n other items), so no key is needed and the result is
deterministic. It is strictly convex and solved by ``fold_in_iters`` Newton steps, each one
preconditioned conjugate-gradient solve with exact Hessian-vector products (H v = a^2 M^T (w_j
sigma'(z_j) (M v)_j) + P v: two [I, d] products, where forming H would cost I d^2 per user) and a line
search over a fixed grid of step sizes (z is affine along the step, so each trial is O(I)). The
preconditioner is Boehning's curvature bound (Boehning & Lindsay 1988; sigma' <= 1/4):
H_B = a^2/4 (sum_P m m^T + w (G - sum_P m m^T)) + P with G = M^T M shared by all users, factorised once
per user. Bound steps alone (u <- u - H_B^-1 grad) converge linearly and crawl once logits saturate; on
ML-1M six Newton-CG steps put every validation user within 2e-4 (relative) of the converged vector. An empty history
gives t0, which is also the row every user without training examples holds in ``MFParams.user``.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxrec.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MFConfig:
    objective: Literal["bce", "mse"] = "bce"
    """bce: the DRR seed's recipe (rated >= positive_threshold vs sampled unrated-positive items,
    logit a<u,m>+b, binary cross-entropy); mse: biased MF regressing the rating (simulator rewards)."""
    dim: int = 100
    """Embedding width of users and items (the seed's ID-only setting is 100)."""
    epochs: int = 10
    """Epochs of N / batch Adam steps (N examples: bce positives, mse rated pairs); the mf experiment
    trains one epoch per harness step, so there it must equal train.steps."""
    batch: int = 4096
    """Examples per Adam step (bce: positives, each with n_negatives sampled negatives). The seed grew
    its batch 64 (epoch + 1) up to 1024 over 150 epochs; on ML-1M the validation NDCG@10 of the mf
    experiment is flat (0.385-0.393) over batch 1024-4096, lr 3e-3-1e-2 and 10-20 epochs, so the
    defaults take the fastest."""
    lr: float = 1e-2
    """Adam learning rate."""
    l2: float = 1e-4
    """Per-example L2 weight on every embedding row (and bias) an example touches, eq. (2)/(3). For mse
    on ML-1M, 3e-2 predicts held-out ratings better (validation RMSE 0.937 against 0.952 at 1e-4)."""
    n_negatives: int = 1
    """bce: uniformly sampled negatives per positive (1 = half of each batch, as in the seed)."""
    positive_threshold: float | None = None
    """bce: a training rating >= this is a positive; none = the experiment's data.relevant_threshold."""
    init_scale: float = 0.1
    """Standard deviation of the normal initialisation of the embedding tables."""
    fold_in_iters: int = 6
    """bce: line-searched Newton-CG iterations of the fold-in (5); mse fold-in is closed form."""

    def validate(self):
        if self.dim < 1 or self.epochs < 0 or self.batch < 1 or self.n_negatives < 1 or self.fold_in_iters < 1:
            raise ConfigError("MFConfig", "dim, batch, n_negatives, fold_in_iters must be >= 1 and epochs >= 0")
        if self.lr <= 0 or self.l2 < 0 or self.init_scale <= 0:
            raise ConfigError("MFConfig", "need lr > 0, l2 >= 0 and init_scale > 0")


def _checked(cfg: MFConfig) -> MFConfig:
    cfg.validate()
    if cfg.objective == "bce" and cfg.positive_threshold is None:
        raise ConfigError("MFConfig.positive_threshold", "bce needs a positive threshold (resolve it from the data)")
    return cfg


def static_part(cfg: MFConfig, cls: type, *names: str):
    """``cls`` built from the fields ``names`` of ``cfg``, the others at their defaults: the static argument
    of a compiled function that reads only those, so configs differing elsewhere (epochs, the seed of an
    embedding stage, a subclass's own fields) share one compilation."""
    return cls(**{name: getattr(_checked(cfg), name) for name in names})


@struct.dataclass
class MFParams:
    """A fitted factorisation, eq. (1). bce leaves the biases at 0; mse keeps ``scale`` at 1."""

    user: jax.Array
    """[U, d] user vectors (users without training examples hold the prior mean)."""
    item: jax.Array
    """[I, d] item vectors."""
    user_bias: jax.Array
    """[U] b_u (mse)."""
    item_bias: jax.Array
    """[I] b_i (mse)."""
    scale: jax.Array
    """() a, the seed's Dense(1) weight on the dot product (bce)."""
    offset: jax.Array
    """() c, the Dense(1) bias (bce) or the global rating offset (mse)."""
    prior_mean: jax.Array
    """[d + 1] t0: mean of the fitted users' [U_u, b_u] (the fold-in prior of eq. (4)/(5))."""
    prior_cov: jax.Array
    """[d + 1, d + 1] S: their covariance (plus a tiny ridge); bce uses the [:d, :d] block."""
    noise_var: jax.Array
    """() s^2 of eq. (4): mean squared training residual (mse); 1 for bce (unused)."""


# Fields each objective trains (the others keep their initial value: their gradient is zero, and Adam
# moves nothing whose gradient has always been zero).
_TRAINED = {
    "bce": ("user", "item", "scale", "offset"),
    "mse": ("user", "item", "user_bias", "item_bias", "offset"),
}


@struct.dataclass
class MFData:
    """Device arrays of the training examples, built by ``prepare_data``."""

    user: jax.Array
    """[N] user of each example (bce: the positives only)."""
    item: jax.Array
    """[N] item of each example."""
    rating: jax.Array
    """[N] rating of each example (mse target)."""
    pos_gap: jax.Array
    """[N] bce: for each user's positives sorted by item, item - rank within the user (the number of
    non-positive items below it); non-decreasing per user, searched to sample the complement exactly."""
    pos_start: jax.Array
    """[U + 1] bce: offsets of each user's positives in ``pos_gap``."""
    trained: jax.Array
    """[U] bool: users with at least one example (their row is fitted)."""
    pool: jax.Array
    """[K] ascending item ids negatives are drawn from (all items, or those the training part knows when
    cold-start items are held out: an item that does not exist yet cannot be a negative)."""
    in_pool: jax.Array
    """[n_table] bool: ``pool`` as a mask; rows outside it get the pool's mean vector after each chunk."""
    n_items: int = struct.field(pytree_node=False)
    """Size K of the sampling space (``len(pool)``)."""
    n_table: int = struct.field(pytree_node=False)
    """Rows of the item table (every dense item id of the data)."""
    search_iters: int = struct.field(pytree_node=False)
    """Binary-search iterations covering the longest positive list."""
    batch: int = struct.field(pytree_node=False)
    """Examples per step (the configured batch, capped at N)."""
    steps_per_epoch: int = struct.field(pytree_node=False)
    """N // batch: Adam steps per epoch."""


def prepare_data(user, item, rating, n_users: int, n_items: int, cfg: MFConfig,
                 pool: np.ndarray | None = None) -> MFData:
    """Numpy training rows in, device arrays out. The caller passes training rows only.

    ``pool``: the items that exist at training time (default all); negatives are drawn from it, and the
    rows of items outside it hold the pool's mean vector (a new item's best guess is the average item).
    """
    hp = _checked(cfg)
    user, item = np.asarray(user, np.int32), np.asarray(item, np.int32)
    rating = np.asarray(rating, np.float32)
    pool = np.arange(n_items, dtype=np.int32) if pool is None else np.unique(np.asarray(pool, np.int32))
    if hp.objective == "bce":
        keep = rating >= hp.positive_threshold
        user, item, rating = user[keep], item[keep], rating[keep]
    if len(user) == 0:
        raise ConfigError("MFConfig", f"no training examples for objective {hp.objective!r}")
    if not np.isin(item, pool).all():
        raise ValueError("training rows hold items outside the item pool")
    order = np.lexsort((item, user))
    # The complement sampler works in pool coordinates (rank of the item in the pool).
    s_user, s_item = user[order], np.searchsorted(pool, item[order]).astype(np.int32)
    start = np.concatenate([[0], np.cumsum(np.bincount(s_user, minlength=n_users))]).astype(np.int32)
    rank = np.arange(len(s_user)) - start[s_user]
    counts = np.diff(start)
    batch = min(hp.batch, len(user))
    return MFData(
        user=jnp.asarray(user), item=jnp.asarray(item), rating=jnp.asarray(rating),
        pos_gap=jnp.asarray((s_item - rank).astype(np.int32)), pos_start=jnp.asarray(start),
        trained=jnp.asarray(counts > 0), pool=jnp.asarray(pool),
        in_pool=jnp.asarray(np.isin(np.arange(n_items), pool)), n_items=len(pool), n_table=n_items,
        search_iters=max(1, math.ceil(math.log2(int(counts.max()) + 1))),
        batch=batch, steps_per_epoch=len(user) // batch,
    )


def init_params(key: jax.Array, data: MFData, n_users: int, cfg: MFConfig) -> MFParams:
    """Normal-initialised tables (std ``init_scale``), zero biases, a = 1, c = mean rating (mse) or 0."""
    hp = _checked(cfg)
    ku, ki = jax.random.split(key)
    offset = jnp.mean(data.rating) if hp.objective == "mse" else jnp.float32(0.0)
    params = MFParams(
        user=hp.init_scale * jax.random.normal(ku, (n_users, hp.dim)),
        item=hp.init_scale * jax.random.normal(ki, (data.n_table, hp.dim)),
        user_bias=jnp.zeros(n_users), item_bias=jnp.zeros(data.n_table),
        scale=jnp.float32(1.0), offset=jnp.asarray(offset, jnp.float32),
        prior_mean=jnp.zeros(hp.dim + 1), prior_cov=jnp.eye(hp.dim + 1), noise_var=jnp.float32(1.0),
    )
    return _with_prior(params, data, hp.objective)


def make_optimizer(cfg: MFConfig) -> optax.GradientTransformation:
    """The optimiser whose state ``train_epochs`` carries (plain Adam, as the seed's Keras default); the
    one builder of both MF models (``jaxrec.embed.multimodal`` uses it too)."""
    return optax.adam(cfg.lr)


def with_prior(params: MFParams, data: MFData, objective: str) -> MFParams:
    """Public name of ``_with_prior`` (models that build ``MFParams`` from other parts call it)."""
    return _with_prior(params, data, objective)


@functools.partial(jax.jit, static_argnames=("objective",))
def _with_prior(params: MFParams, data: MFData, objective: str) -> MFParams:
    """Re-estimates the population prior of eq. (4)/(5) and gives its mean to every user without examples."""
    w = data.trained.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    t = jnp.concatenate([params.user, params.user_bias[:, None]], axis=1)  # [U, d + 1]
    mean = (w @ t) / n
    dev = (t - mean) * w[:, None]
    cov = dev.T @ dev / jnp.maximum(n - 1.0, 1.0)
    # A ridge of 1e-6 of the average variance keeps S invertible (e.g. the bias block of bce is all zero).
    cov = cov + (1e-6 * jnp.trace(cov) / cov.shape[0] + 1e-12) * jnp.eye(cov.shape[0])
    noise_var = _mean_squared_residual(params, data) if objective == "mse" else jnp.float32(1.0)
    # Items outside the pool (held-out cold-start items) never had an example: the average item.
    p = data.in_pool.astype(jnp.float32)
    item_mean = (p @ params.item) / jnp.maximum(p.sum(), 1.0)
    bias_mean = (p @ params.item_bias) / jnp.maximum(p.sum(), 1.0)
    return params.replace(
        item=jnp.where(data.in_pool[:, None], params.item, item_mean),
        item_bias=jnp.where(data.in_pool, params.item_bias, bias_mean),
        user=jnp.where(data.trained[:, None], params.user, mean[:-1]),
        user_bias=jnp.where(data.trained, params.user_bias, mean[-1]),
        prior_mean=mean, prior_cov=cov, noise_var=noise_var,
    )


def _mean_squared_residual(params: MFParams, data: MFData) -> jax.Array:
    """Mean of (r - z)^2 over all examples, in blocks of ``data.batch`` rows (bounded memory)."""
    n_rows = data.user.shape[0]
    n_blocks = -(-n_rows // data.batch)
    idx = jnp.arange(n_blocks * data.batch).reshape(n_blocks, data.batch)

    def block(total, rows):
        valid = rows < n_rows
        rows = jnp.minimum(rows, n_rows - 1)
        err = data.rating[rows] - _logit(params, data.user[rows], data.item[rows])
        return total + jnp.sum(jnp.where(valid, err * err, 0.0)), None

    total, _ = jax.lax.scan(block, jnp.float32(0.0), idx)
    return total / n_rows


def _rows(table: jax.Array, idx: jax.Array) -> jax.Array:
    """``table[idx]`` for ids known to be in range (dense ids of ``Interactions``, clipped samples).

    ``promise_in_bounds`` lets XLA skip the out-of-bounds handling of the gather and of the scatter-add
    its gradient becomes (measured on CPU: 5x faster for a [4096, 100] batch of rows).
    """
    return table.at[idx].get(mode="promise_in_bounds")


def _logit(params: MFParams, u: jax.Array, i: jax.Array) -> jax.Array:
    """Eq. (1) for index arrays of one shape."""
    dot = jnp.sum(_rows(params.user, u) * _rows(params.item, i), axis=-1)
    return params.scale * dot + params.offset + _rows(params.user_bias, u) + _rows(params.item_bias, i)


def sample_negatives(key: jax.Array, data: MFData, users: jax.Array, n: int) -> jax.Array:
    """[B, n] items drawn uniformly from the items each user has NOT rated positive (exactly).

    With the user's positives s_0 < s_1 < ... and g_k = s_k - k (non-positives below s_k), the r-th
    non-positive item (0-based) is r + #{k : g_k <= r}; the count is a binary search in the user's
    segment of ``pos_gap`` (a fixed number of vectorised halvings, no Python loop over rows).
    """
    lo = data.pos_start[users]
    hi = data.pos_start[users + 1]
    n_free = jnp.maximum(data.n_items - (hi - lo), 1)
    r = jax.random.randint(key, (users.shape[0], n), 0, n_free[:, None])
    lo = jnp.broadcast_to(lo[:, None], r.shape)
    hi = jnp.broadcast_to(hi[:, None], r.shape)
    first = lo

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        go_right = data.pos_gap[jnp.minimum(mid, data.pos_gap.shape[0] - 1)] <= r
        active = lo < hi
        return jnp.where(active & go_right, mid + 1, lo), jnp.where(active & ~go_right, mid, hi)

    lo, _ = jax.lax.fori_loop(0, data.search_iters, halve, (lo, hi))
    return data.pool[jnp.minimum(r + (lo - first), data.n_items - 1)]


def _example_loss(rows: dict, target: jax.Array, hp: MFConfig) -> jax.Array:
    """Mean of eq. (2) or (3) over a batch, as a function of the gathered rows only.

    ``rows``: user [B, d], item [B, J, d] (bce: the positive then the negatives; mse: J = 1), user_bias
    [B], item_bias [B, J], scale, offset. ``target``: bce labels [B, J] (1 then 0s), mse ratings [B, 1].
    Differentiating with respect to the rows (not the tables) lets each table receive its gradient by
    ONE scatter-add, instead of one per use of the table.
    """
    dot = jnp.einsum("bd,bjd->bj", rows["user"], rows["item"])
    z = rows["scale"] * dot + rows["offset"] + rows["user_bias"][:, None] + rows["item_bias"]
    reg = jnp.sum(rows["user"] ** 2, -1) + jnp.sum(rows["item"] ** 2, (-2, -1))
    if hp.objective == "bce":
        # softplus(-z) for the positive, softplus(z) for a negative: BCE of sigmoid(z) against the label.
        data_term = jnp.sum(jax.nn.softplus(z) - target * z, -1)
    else:
        data_term = jnp.sum((target - z) ** 2, -1)
        reg = reg + rows["user_bias"] ** 2 + jnp.sum(rows["item_bias"] ** 2, -1)
    return jnp.mean(data_term + hp.l2 * reg)


def example_loss(rows: dict, target: jax.Array, hp) -> jax.Array:
    """Public name of ``_example_loss`` (``hp`` needs ``objective`` and ``l2``), for models that build
    their item rows another way (``jaxrec.embed.multimodal``)."""
    return _example_loss(rows, target, hp)


def _loss_and_grads(params: MFParams, user: jax.Array, items: jax.Array, target: jax.Array, hp: MFConfig):
    """Batch loss and its gradient as dense tables (rows scattered back once per table)."""
    rows = {"user": _rows(params.user, user), "item": _rows(params.item, items),
            "user_bias": _rows(params.user_bias, user), "item_bias": _rows(params.item_bias, items),
            "scale": params.scale, "offset": params.offset}
    loss, g = jax.value_and_grad(_example_loss)(rows, target, hp)

    def scatter(table, idx, upd):
        return jnp.zeros_like(table).at[idx].add(upd, mode="promise_in_bounds")

    grads = {"user": scatter(params.user, user, g["user"]), "item": scatter(params.item, items, g["item"]),
             "user_bias": scatter(params.user_bias, user, g["user_bias"]),
             "item_bias": scatter(params.item_bias, items, g["item_bias"]),
             "scale": g["scale"], "offset": g["offset"]}
    trained = _TRAINED[hp.objective]
    return loss, MFParams(**{f.name: grads[f.name] if f.name in trained else jnp.zeros_like(getattr(params, f.name))
                             for f in dataclasses.fields(MFParams)})


def sample_batch(key: jax.Array, data: MFData, objective: str, n_negatives: int):
    """(users [B], items [B, J], targets [B, J]) of one step: i.i.d. rows (uniform with replacement: an
    unbiased gradient of the full objective, and no per-epoch permutation, whose sort of N rows costs more
    than the epoch's steps on CPU); bce pairs each positive with ``n_negatives`` sampled negatives."""
    k_rows, k_neg = jax.random.split(key)
    rows = jax.random.randint(k_rows, (data.batch,), 0, data.user.shape[0])
    user = data.user[rows]
    if objective == "bce":
        neg = sample_negatives(k_neg, data, user, n_negatives)
        items = jnp.concatenate([data.item[rows][:, None], neg], axis=1)  # [B, 1 + n_neg]
        return user, items, jnp.zeros(items.shape).at[:, 0].set(1.0)
    return user, data.item[rows][:, None], data.rating[rows][:, None]


def run_epochs(step, carry, first_epoch, n_epochs, steps_per_epoch: int):
    """Epochs ``first_epoch ..`` of ``steps_per_epoch`` calls ``step(carry, global_step) -> (carry, loss)``
    (one ``lax.scan`` per epoch inside a ``fori_loop``); returns (carry, mean loss)."""

    def epoch(e, state):
        carry, total = state
        carry, losses = jax.lax.scan(step, carry, e * steps_per_epoch + jnp.arange(steps_per_epoch))
        return carry, total + losses.sum()

    carry, total = jax.lax.fori_loop(first_epoch, first_epoch + n_epochs, epoch, (carry, jnp.float32(0.0)))
    return carry, total / jnp.maximum(n_epochs * steps_per_epoch, 1)


@functools.partial(jax.jit, static_argnames=("hp",))
def _train_epochs(params, opt_state, key, first_epoch, n_epochs, data: MFData, hp: MFConfig):
    opt = make_optimizer(hp)

    def step(carry, global_step):
        params, opt_state = carry
        user, items, target = sample_batch(jax.random.fold_in(key, global_step), data, hp.objective, hp.n_negatives)
        loss, grads = _loss_and_grads(params, user, items, target, hp)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), loss = run_epochs(step, (params, opt_state), first_epoch, n_epochs, data.steps_per_epoch)
    return _with_prior(params, data, hp.objective), opt_state, loss


def train_epochs(params: MFParams, opt_state, key: jax.Array, first_epoch, n_epochs, data: MFData,
                 cfg: MFConfig) -> tuple[MFParams, optax.OptState, jax.Array]:
    """Runs epochs ``first_epoch .. first_epoch + n_epochs - 1``; returns the mean training loss.

    An epoch is N / batch steps (N examples). Every draw of step t (its minibatch rows and negatives)
    comes from ``fold_in(key, t)``, so a run split into chunks replays an uninterrupted one exactly.
    """
    hp = static_part(cfg, MFConfig, "objective", "lr", "l2", "n_negatives", "positive_threshold")
    return _train_epochs(params, opt_state, key, jnp.int32(first_epoch), jnp.int32(n_epochs), data, hp)


def fit_mf(key: jax.Array, user, item, rating, n_users: int, n_items: int, cfg: MFConfig,
           pool: np.ndarray | None = None, on_epoch: Callable[[int, float], None] | None = None) -> MFParams:
    """Fits eq. (2) or (3) on the given (training) rows for ``cfg.epochs`` epochs (``pool``: prepare_data).

    ``on_epoch(epoch, loss)`` (the shell's progress bar) makes the fit run one epoch per call, which gives
    the same parameters (every draw comes from ``fold_in(key, step)``; ``train_epochs``)."""
    data = prepare_data(user, item, rating, n_users, n_items, cfg, pool)
    k_init, k_train = jax.random.split(key)
    params = init_params(k_init, data, n_users, cfg)
    opt = make_optimizer(cfg).init(params)
    if on_epoch is None:
        return train_epochs(params, opt, k_train, 0, cfg.epochs, data, cfg)[0]
    for epoch in range(cfg.epochs):
        params, opt, loss = train_epochs(params, opt, k_train, epoch, 1, data, cfg)
        on_epoch(epoch + 1, float(loss))
    return params


# ----------------------------------------------------------------------------------------------------
# Scoring


@jax.jit
def score_vectors(params: MFParams, user_vecs: jax.Array, user_bias: jax.Array) -> jax.Array:
    """[B, I] eq. (1) for given user vectors [B, d] and biases [B] (e.g. folded-in users)."""
    chex.assert_rank([user_vecs, user_bias], [2, 1])
    dots = user_vecs @ params.item.T
    return params.scale * dots + params.offset + user_bias[:, None] + params.item_bias[None, :]


def score(params: MFParams, users: jax.Array) -> jax.Array:
    """[B, I] eq. (1) for every item, for fitted users ``users`` [B]."""
    users = jnp.asarray(users)
    return score_vectors(params, params.user[users], params.user_bias[users])


@jax.jit
def predict_rating(params: MFParams, user: jax.Array, item: jax.Array) -> jax.Array:
    """Eq. (1) for (user, item) pairs of one shape: the rating (mse) or the positive logit (bce)."""
    chex.assert_equal_shape([user, item])
    return _logit(params, user, item)


# ----------------------------------------------------------------------------------------------------
# Fold-in


def _fold_in_mse(params: MFParams, prior_prec, items, mask, ratings):
    """Eq. (4) for one user: items/mask/ratings [L]; returns (U_u [d], b_u)."""
    w = mask.astype(jnp.float32)
    x = jnp.concatenate([params.scale * _rows(params.item, items), jnp.ones((items.shape[0], 1))], axis=1)  # [L, d+1]
    y = ratings - params.offset - _rows(params.item_bias, items)
    xw = x * w[:, None]
    lhs = xw.T @ x + params.noise_var * prior_prec
    rhs = xw.T @ y + params.noise_var * (prior_prec @ params.prior_mean)
    t = jax.scipy.linalg.solve(lhs, rhs, assume_a="pos")
    return t[:-1], t[-1]


_CG_ITERS = 6
"""Preconditioned conjugate-gradient iterations per Newton step of the bce fold-in."""
_STEP_SIZES = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.0)
"""Newton step sizes tried by the bce fold-in's line search (0 keeps the objective from increasing)."""


def _fold_in_bce(params: MFParams, prior_prec, gram, items, mask, ratings, hp: MFConfig):
    """Eq. (5) for one user by line-searched Newton-CG steps (module docstring); returns (U_u, 0)."""
    pos = (mask & (ratings >= hp.positive_threshold)).astype(jnp.float32)  # [L]
    n = pos.sum()
    weight = hp.n_negatives * n / jnp.maximum(params.item.shape[0] - n, 1.0)
    a, c = params.scale, params.offset
    u0 = params.prior_mean[:-1]
    m_all = params.item  # [I, d]
    m_pos = _rows(params.item, items)  # [L, d]
    # (5) as a sum over ALL items with weight w, corrected on the positives: their term is
    # softplus(-z) = softplus(z) - z, so per positive add (1 - w) softplus(z) - z.
    pos_gram = (m_pos * pos[:, None]).T @ m_pos
    bound = a * a / 4.0 * (pos_gram + weight * (gram - pos_gram)) + prior_prec
    chol = jax.scipy.linalg.cho_factor(bound)

    def objective(z_all, z_pos, u):
        d = u - u0
        return (weight * jnp.sum(jax.nn.softplus(z_all))
                + jnp.sum(pos * ((1.0 - weight) * jax.nn.softplus(z_pos) - z_pos)) + 0.5 * d @ prior_prec @ d)

    def newton(_, u):
        z_all, z_pos = a * (m_all @ u) + c, a * (m_pos @ u) + c
        g = a * (m_all.T @ (weight * jax.nn.sigmoid(z_all))
                 + m_pos.T @ (pos * ((1.0 - weight) * jax.nn.sigmoid(z_pos) - 1.0))) + prior_prec @ (u - u0)
        # Exact curvature per item (sigma'(z) times its weight); H v costs two [I, d] products.
        c_all = weight * jax.nn.sigmoid(z_all) * jax.nn.sigmoid(-z_all)
        c_pos = pos * (1.0 - weight) * jax.nn.sigmoid(z_pos) * jax.nn.sigmoid(-z_pos)

        def hvp(v):
            return a * a * (m_all.T @ (c_all * (m_all @ v)) + m_pos.T @ (c_pos * (m_pos @ v))) + prior_prec @ v

        def precondition(r):
            return jax.scipy.linalg.cho_solve(chol, r)

        def cg(_, carry):
            delta, r, z, p, rz = carry
            h_p = hvp(p)
            php = p @ h_p
            # Guards: once r = 0 (converged early) the ratios are 0/0; a zero step keeps delta.
            alpha = jnp.where(php > 1e-30, rz / jnp.where(php > 1e-30, php, 1.0), 0.0)
            delta, r = delta + alpha * p, r - alpha * h_p
            z_new = precondition(r)
            rz_new = r @ z_new
            beta = jnp.where(rz > 1e-30, rz_new / jnp.where(rz > 1e-30, rz, 1.0), 0.0)
            return delta, r, z_new, z_new + beta * p, rz_new

        z0 = precondition(-g)
        delta = jax.lax.fori_loop(0, _CG_ITERS, cg, (jnp.zeros_like(u), -g, z0, z0, -g @ z0))[0]
        # Line search on a fixed grid: z is affine in the step, so each trial costs O(I), not O(I d).
        dz_all, dz_pos = a * (m_all @ delta), a * (m_pos @ delta)
        steps = jnp.asarray(_STEP_SIZES)
        values = jax.vmap(lambda t: objective(z_all + t * dz_all, z_pos + t * dz_pos, u + t * delta))(steps)
        return u + steps[jnp.argmin(values)] * delta

    return jax.lax.fori_loop(0, hp.fold_in_iters, newton, u0), jnp.float32(0.0)


@functools.partial(jax.jit, static_argnames=("hp",))
def _fold_in(params, items, mask, ratings, hp: MFConfig):
    if hp.objective == "mse":
        prec = jnp.linalg.inv(params.prior_cov)
        return jax.vmap(_fold_in_mse, in_axes=(None, None, 0, 0, 0))(params, prec, items, mask, ratings)
    prec = jnp.linalg.inv(params.prior_cov[:-1, :-1])
    gram = params.item.T @ params.item
    return jax.vmap(_fold_in_bce, in_axes=(None, None, None, 0, 0, 0, None))(params, prec, gram, items, mask, ratings, hp)


def fold_in_users(params: MFParams, item_ids_padded, mask, ratings, cfg: MFConfig) -> tuple[jax.Array, jax.Array]:
    """User vectors [B, d] and biases [B] from visible histories only, item side frozen.

    ``item_ids_padded``, ``mask`` (bool, False = padding) and ``ratings`` are [B, L]. Eq. (4) for mse,
    eq. (5) for bce (bias 0). An empty history gives the prior mean t0. Only the
    rows passed in are seen: callers pass the visible history, never the targets.
    """
    items = jnp.asarray(item_ids_padded, jnp.int32)
    mask = jnp.asarray(mask, bool)
    ratings = jnp.asarray(ratings, jnp.float32)
    chex.assert_rank([items, mask, ratings], 2)
    chex.assert_equal_shape([items, mask, ratings])
    items = jnp.where(mask, items, 0)
    hp = static_part(cfg, MFConfig, "objective", "n_negatives", "positive_threshold", "fold_in_iters")
    return _fold_in(params, items, mask, ratings, hp)


def pad_histories(row_user: np.ndarray, row_item: np.ndarray, row_rating: np.ndarray,
                  users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[len(users), L] padded item ids, mask and ratings of each user's rows (host-side, vectorised).

    Rows must be sorted by user (``Interactions`` order) and ``users`` ascending; users without rows get
    an all-False mask.
    """
    users = np.asarray(users)
    keep = np.isin(row_user, users)
    row_user, row_item, row_rating = row_user[keep], row_item[keep], row_rating[keep]
    slot = np.searchsorted(users, row_user)
    first = np.searchsorted(row_user, row_user)  # first row of each row's user (rows sorted by user)
    col = np.arange(len(row_user)) - first
    width = max(1, int(col.max()) + 1) if len(col) else 1
    items = np.zeros((len(users), width), np.int32)
    mask = np.zeros((len(users), width), bool)
    ratings = np.zeros((len(users), width), np.float32)
    items[slot, col], mask[slot, col], ratings[slot, col] = row_item, True, row_rating
    return items, mask, ratings
