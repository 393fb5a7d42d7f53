"""Self-supervised Q-learning for sequential recommendation: SQN (Xin et al., SIGIR 2020) with
multi-step self-supervision and TD(λ) targets over n steps (the M3S seed, corrected: docs/differences.md, M3S table).

One network = a sequence state encoder with heads over all items (``jaxrec.nets.sequence``): a
supervised next-item head (cross-entropy; it ranks items at evaluation, as in SQN) and one or two Q
heads trained by double Q-learning on λ-returns. Everything that changes lives in one ``TrainingState``; the factories
follow the brax SAC layout: ``make_losses`` -> ``make_update`` -> ``make_train``.

Losses of one training sample (state ``s_t``, action ``a_t``; weights from ``SQNConfig``):

* supervised: ``CE(logits(s_t), a_t)`` (SQN eq. 1).
* self-supervision over the next n items (``ssl``): ``future_states`` (the seed's intended term with its
  bugs fixed, m3s-ssl: gradient through the main network, target = the item logged after each
  future state) is ``mean_{j=1..n-1} CE(logits(s_{t+j}), a_{t+j})``; ``ahead`` predicts the same items
  from the current state, ``mean_j CE(logits(s_t), a_{t+j})``.
* TD(λ): ``(Q(s_t, a_t) - G^λ_t)^2`` with ``G^λ_t`` the λ-return of the n logged steps from t
  (``jaxrec.rl.returns.lambda_returns``, Sutton & Barto eq. 12.18; the seed's weights summed to λ
  instead of 1, m3s-lambda-return) and bootstrap values from double Q-learning (van Hasselt 2010): one
  estimator picks ``a* = argmax_a Q_A(s', a)``, the other one's target copy values it,
  ``v(s') = Q'_B(s', a*)``. ``double_q`` chooses the two estimators:

  - ``heads`` (default): two Q heads on the shared encoder, both trained every update, each
    bootstrapping from the other's target head; the encoder and the supervised head learn from every
    batch, as a supervised-only model does;
  - ``networks``: two whole networks and a fair coin per update picking which one learns from the
    other (SQN section 3.3, and the seed): each network sees half of the updates;
  - ``none``: one head bootstrapping from its own target copy (double DQN, van Hasselt et al. 2016).

  Target copies are Polyak averages with rate ``target_tau`` (1: the online parameters themselves).
* negatives (SNQN, Xin et al. 2022): ``negatives`` items other than ``a_t`` sampled uniformly, with
  reward ``neg_reward`` (0: not clicked) and target ``neg_reward + gamma * v(s_t)`` (the state does not
  change when a recommendation is ignored; ``neg_next="next"`` uses ``s_{t+1}``); the seed sampled them
  but never used them (m3s-negatives).

Window mode (``mode="window"``, the seed's): a training batch is ``batch_size`` samples drawn as
``batch_size / chunk`` chunks of ``chunk`` consecutive transitions of one user
(``jaxrec.data.sequences.sequence_chunks``); each chunk's item sequence is encoded once per network and every
state the losses need (its samples' states and the n states after each) is read off that encoding.

Sequence mode (``mode="sequence"``, SASRec's training, Kang & McAuley 2018; SASRec+ of Klenitskiy & Vasilev
2023): a batch is ``batch_size`` user rows of ``max_len`` items (``user_sequences``), each encoded once by the
causal backbone (``SequenceNetwork.sequence_states``); state t (after slot t) has the item of slot t + 1 as its
action, so every position is a sample and every term above applies at every position: the supervised CE is
SASRec's full-softmax next-item loss, the λ-returns run over the next n positions of the row (the index maps
past the row's end read padded, invalid steps), and negatives are drawn per position. The same code computes
both modes; they differ in the encoder and in which columns are actions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from jaxrec.errors import ConfigError
from jaxrec.nets.sequence import SequenceNetwork
from jaxrec.parallel import no_sharding
from jaxrec.rl.returns import lambda_returns
from jaxrec.seeds import traced_values


@dataclasses.dataclass(frozen=True)
class SQNConfig:
    TRACED: ClassVar[tuple[str, ...]] = ("lr", "gamma", "lam", "sup_weight", "q_weight", "ssl_weight", "neg_reward",
                                         "target_tau")
    """Fields read from the training state (``TrainingState.hyper``), not compiled in: configurations that
    differ only in them (and agree on the properties below, e.g. ``uses_q``) run as one vmapped program."""

    backbone: Literal["transformer", "gru"] = "transformer"
    """State encoder: a transformer (the seed's, SASRec-like) or a GRU (GRU4Rec-like)."""
    mode: Literal["window", "sequence"] = "window"
    """Training samples: ``window`` = chunks of transitions, each state the last ``window`` items (the seed's);
    ``sequence`` = whole-sequence training (SASRec's): a sample is one user's last ``max_len`` training
    items, encoded once by the causal backbone, every position's state predicting (and taking as its action)
    the next item, all losses applied at every position (``chunk`` and ``window`` are then unused)."""
    max_len: int = 200
    """Sequence mode: items per training sequence and per evaluation state (SASRec+ on ML-1M: 200)."""
    window: int = 10
    """Window mode: N, items in a state (the seed's state_size)."""
    dim: int = 64
    """Embedding and hidden size d (the seed's 64)."""
    heads: int = 1
    """Attention heads (the seed's 1)."""
    tied_head: bool = False
    """Supervised logits from the input item embeddings (SASRec's tied output layer) plus a bias, instead of a
    separate output matrix (the seed's)."""
    embed_scale: bool = False
    """Input item embeddings times sqrt(dim) (SASRec's code; the tied output layer reads the unscaled table)."""
    input_dropout: float = 0.0
    """Transformer: dropout on the summed input embeddings (SASRec's emb_dropout; 0 = none, the seed's)."""
    qkv_init: Literal["flax3d", "xavier", "torch"] = "flax3d"
    """Transformer: initialiser of the query/key/value projections (``SequenceNetwork.qkv_init``): ``xavier``,
    ``torch`` (PyTorch MultiheadAttention's, SASRec+'s) or ``flax3d`` (about 5.7x smaller than ``xavier`` at
    d = 64, what the window-mode tables were measured with)."""
    attn_out_dropout: bool = True
    """Transformer: dropout also on the attention sublayer's output (SASRec's code: on attention weights only)."""
    head_bias: bool = True
    """A learned per-item bias on the supervised logits (SASRec's tied output layer has none)."""
    ln_eps: float = 1e-6
    """Transformer: LayerNorm epsilon (flax's default; SASRec's code 1e-8)."""
    block_init_std: float = 0.0
    """Transformer: attention-output and feed-forward kernels start N(0, std) (SASRec's code: 0.02); 0 = LeCun normal."""
    position_origin: Literal["last", "first"] = "last"
    """Transformer: learned position 0 is a row's newest item (``last``, the seed's recency) or its oldest
    (``first``, SASRec+'s; ``SequenceNetwork.position_origin``)."""
    layers: int = 1
    """Encoder layers (the seed's 1); only one post-norm causal layer pooled at the last position
    shares encodings across shifted windows, other settings encode each window separately."""
    ff_dim: int = 256
    """Feed-forward width of each layer (the seed inherited PyTorch's default 2048)."""
    dropout: float = 0.1
    """Dropout on attention weights, residual branches and the feed-forward hidden layer."""
    causal: bool = True
    """Causal attention within the window (False: bidirectional, as the seed's unmasked encoder)."""
    pooling: Literal["last", "mean"] = "last"
    """State = output at the newest item, or the masked mean over the window (the seed's)."""
    norm: Literal["post", "pre", "sasrec"] = "post"
    """Post-norm layers (the seed's PyTorch default), pre-norm, or SASRec's block (query = LN(x), keys and values
    the unnormalised x, residual from the query, LN before the feed-forward; docs/differences.md#seqplus-block)."""
    n_steps: int = 6
    """n: logged steps in the multi-step targets (λ-return horizon and self-supervision span)."""
    gamma: float = 0.5
    """Discount factor (the seed's and SQN's 0.5)."""
    lam: float = 0.8
    """λ of the λ-return (0: one-step TD targets, 1: n-step Monte-Carlo return bootstrapped once)."""
    sup_weight: float = 0.8
    """Weight of the supervised cross-entropy (the seed: 0.8 * CE + 0.2 * RL terms)."""
    q_weight: float = 0.2
    """Weight of the TD loss plus the negative-sample loss; 0 disables Q-learning (supervised only)."""
    ssl: Literal["none", "future_states", "ahead"] = "future_states"
    """Multi-step self-supervision: none; CE of each future state s_{t+j} on its logged item a_{t+j}
    (the seed's intended term, fixed); or CE of the current state on each of the next items."""
    ssl_weight: float = 0.2
    """Weight of the self-supervised loss (mean over the n-1 future steps)."""
    negatives: int = 10
    """Negative items sampled per sample for the Q head (0: none)."""
    neg_reward: float = 0.0
    """Reward of a sampled negative (an item the user did not pick)."""
    neg_next: Literal["same", "next"] = "same"
    """Bootstrap state of a negative: the unchanged state s_t (SNQN) or the next state s_{t+1}."""
    double_q: Literal["heads", "networks", "none"] = "heads"
    """Double Q-learning with two Q heads on the shared encoder (both trained every update), with two
    networks switched by a coin per update (SQN, the seed), or none (one head, its own target copy)."""
    target_tau: float = 0.01
    """Polyak rate of the target copies per update (1: the online parameters themselves, as SQN)."""
    bootstrap_at_end: bool | None = None
    """Treat the end of a user's training history as a cut (bootstrap) instead of an episode end. None
    (default): a cut under temporal splits, where the history continues in validation/test; an episode
    end under the user split, where the training part holds the user's whole log (``for_split``)."""
    lr: float = 1e-3
    """Adam learning rate (the seed's 1e-3)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) on all parameters; 0 = Adam."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 = no clipping."""
    batch_size: int = 2048
    """Window mode: training transitions per update (the seed's 2048), a multiple of chunk. Sequence mode:
    user sequences per update (SASRec+: 128)."""
    chunk: int = 8
    """Window mode: consecutive transitions of one user per encoded sequence (1: independent transitions)."""
    micro_batches: int = 4
    """Accumulate each update's gradient over this many slices of the batch: the same update, with the
    step's temporary memory (in sequence mode the [users x positions x items] logits) divided by it."""
    length_strata: int = 1
    """Sequence mode: sort the users by history length into this many equal strata, each padded only to its
    longest row (``UserSequences.strata``), and draw ``batch_size / length_strata`` users from every stratum per
    update (stratified sampling: each user's chance per update is the uniform one; fewer PAD slots computed).
    ``micro_batches`` then slices each stratum's rows: an update runs ``length_strata * micro_batches`` slices."""
    sampling: Literal["replacement", "epochs"] = "replacement"
    """How an update's rows are drawn: uniformly with replacement (``fold_in(key, step)``), or in epochs without
    replacement as a shuffled data loader reads them (SASRec+'s; ``epoch_rows``): the rows taken in consecutive
    passes, each a fresh permutation, so every row is used once per pass. With ``length_strata`` each stratum runs
    its own passes. Both are a pure function of the step: resuming replays the same batches."""
    min_history: int = 1
    """First history position that is a training sample (0 also trains on the empty state; window mode only)."""
    rank_by: Literal["sup", "q"] = "sup"
    """Head that ranks items at evaluation: the supervised head (SQN and the seed) or the Q head (the
    mean of the two heads with double_q=heads)."""
    exclude_seen: bool = True
    """Evaluation: never rank items the user interacted with before the target."""
    purchase_events: tuple[str, ...] = ("transaction",)
    """Evaluation, events sources: event types counted as purchases (the rest are clicks)."""
    eval_events: Literal["all", "click", "purchase"] = "all"
    """Evaluation, events sources: the targets the full protocol scores (all, clicks or purchases)."""
    eval_targets: Literal["all", "relevant"] = "all"
    """Evaluation: every held-out interaction is a next-item query (the seed and the SQN papers), or only
    those whose rating/reward reaches data.relevant_threshold."""

    def for_split(self, heldout_users: bool) -> "SQNConfig":
        """This config with ``bootstrap_at_end`` resolved for a split (see the field)."""
        if self.bootstrap_at_end is not None:
            return self
        return dataclasses.replace(self, bootstrap_at_end=not heldout_users)

    def validate(self):
        if self.mode == "sequence":
            if self.max_len < 2:
                raise ConfigError("model.max_len", f"a training sequence needs >= 2 items, got {self.max_len}")
            if self.backbone == "transformer" and not self.causal:
                raise ConfigError("model.causal", "sequence mode trains every position on the next item: "
                                                  "bidirectional attention would show it the item it predicts")
            if self.pooling != "last":
                raise ConfigError("model.pooling", "sequence mode reads the state at each position: pooling must be last")
            if self.min_history < 1:
                raise ConfigError("model.min_history", "sequence mode has no empty-history state: must be >= 1")
        ints = {"window": self.window, "dim": self.dim, "heads": self.heads, "layers": self.layers,
                "ff_dim": self.ff_dim, "n_steps": self.n_steps, "batch_size": self.batch_size, "chunk": self.chunk}
        for name, value in ints.items():
            if value < 1:
                raise ConfigError(f"model.{name}", f"must be >= 1, got {value}")
        if self.dim % self.heads:
            raise ConfigError("model.heads", f"dim={self.dim} must be divisible by heads={self.heads}")
        if self.mode == "window" and self.batch_size % self.chunk:
            raise ConfigError("model.batch_size", f"{self.batch_size} must be a multiple of model.chunk={self.chunk}")
        if self.length_strata < 1 or (self.length_strata > 1 and self.mode != "sequence"):
            raise ConfigError("model.length_strata", f"must be 1 in window mode and >= 1 in sequence mode, "
                                                     f"got {self.length_strata}")
        if self.micro_batches < 1 or self.batch_rows % (self.micro_batches * self.length_strata):
            per = f" in each of model.length_strata={self.length_strata}" if self.length_strata > 1 else ""
            raise ConfigError("model.micro_batches", f"the {self.batch_rows} rows (chunks or sequences) of a batch "
                                                     f"must split into {self.micro_batches} equal slices{per}")
        if self.block_init_std < 0:
            raise ConfigError("model.block_init_std", f"must be >= 0, got {self.block_init_std}")
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name}", f"must lie in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ConfigError("model.gamma", "gamma and lam must lie in [0, 1]")
        if not 0.0 < self.target_tau <= 1.0:
            raise ConfigError("model.target_tau", f"must lie in (0, 1], got {self.target_tau}")
        if min(self.sup_weight, self.q_weight, self.ssl_weight, self.lr, self.weight_decay, self.grad_clip) < 0:
            raise ConfigError("model", "loss weights, lr, weight_decay and grad_clip must be >= 0")
        if self.negatives < 0 or self.min_history < 0:
            raise ConfigError("model", "negatives and min_history must be >= 0")
        if self.rank_by == "q" and not self.uses_q:
            raise ConfigError("model.rank_by", "ranking by the Q head needs q_weight > 0")
        if self.ssl != "none" and self.n_steps < 2:
            raise ConfigError("model.ssl", "multi-step self-supervision needs n_steps >= 2")

    @property
    def state_len(self) -> int:
        """Items the encoder reads: ``window`` (window mode) or ``max_len`` (sequence mode); evaluation states
        are each query's last ``state_len`` items."""
        return self.max_len if self.mode == "sequence" else self.window

    @property
    def batch_rows(self) -> int:
        """Rows of the training data per update: chunks (window mode) or user sequences (sequence mode)."""
        return self.batch_size if self.mode == "sequence" else self.batch_size // self.chunk

    @property
    def slice_rows(self) -> int:
        """Rows of one gradient slice: the batch's rows over ``length_strata * micro_batches``."""
        return self.batch_rows // (self.length_strata * self.micro_batches)

    @property
    def uses_q(self) -> bool:
        return self.q_weight > 0

    @property
    def uses_ssl(self) -> bool:
        return self.ssl != "none" and self.ssl_weight > 0

    @property
    def lookahead(self) -> int:
        """Steps after each sample the losses read (0 for supervised-only training)."""
        return self.n_steps if (self.uses_q or self.uses_ssl) else 0

    @property
    def n_nets(self) -> int:
        return 2 if (self.uses_q and self.double_q == "networks") else 1

    @property
    def q_heads(self) -> int:
        return 2 if (self.uses_q and self.double_q == "heads") else 1

    def network(self, n_items: int) -> SequenceNetwork:
        return SequenceNetwork(n_items=n_items, window=self.state_len, backbone=self.backbone, dim=self.dim,
                               heads=self.heads, layers=self.layers, ff_dim=self.ff_dim, dropout=self.dropout,
                               causal=self.causal, pooling=self.pooling, norm=self.norm, q_heads=self.q_heads,
                               tied_head=self.tied_head, embed_scale=self.embed_scale, input_dropout=self.input_dropout,
                               block_init_std=self.block_init_std, qkv_init=self.qkv_init,
                               position_origin=self.position_origin, attn_out_dropout=self.attn_out_dropout,
                               head_bias=self.head_bias, ln_eps=self.ln_eps)


@struct.dataclass
class TrainingState:
    params: jax.Array
    """Online parameters, one flat vector per network: [n_nets, P] (``param_layout`` unravels them)."""
    target_params: jax.Array
    """Polyak target copies [n_nets, P] (a [1] placeholder without Q-learning)."""
    opt_state: Any
    """Optimiser state of each network, stacked."""
    key: jax.Array
    """Raw key data (orbax checkpoints arrays); step keys are fold_in(key, step)."""
    step: jax.Array
    """Updates done (int32)."""
    samples: jax.Array
    """Training samples consumed, as int32 [hi, lo] with lo < 2^20 (exact far beyond 2^31)."""
    hyper: dict[str, jax.Array]
    """``SQNConfig.TRACED`` -> float32 scalar (one per seed / grid point when vmapped)."""


Batch = dict  # {"items" [B, L], "reward" [B, A], "valid" [B, A], "terminal" [B, A], "sample" [B, C]}

_LO = 1 << 20


def samples_count(state: TrainingState) -> int:
    hi, lo = (int(x) for x in np.asarray(state.samples))
    return hi * _LO + lo


def _tree_index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _tree_set(tree, i, value):
    return jax.tree.map(lambda x, v: x.at[i].set(v), tree, value)


def double_q_bootstrap(network: SequenceNetwork, main_params, target_params, h_main: jax.Array,
                       h_target: jax.Array, select_head: int = 0, value_head: int = 0) -> tuple[jax.Array, jax.Array]:
    """Double-Q bootstrap values of states: ``Q_target(s, argmax_a Q_main(s, a))`` (van Hasselt 2010).

    Args:
      h_main: [..., d] states encoded by the main network (its Q head ``select_head`` picks the action).
      h_target: [..., d] the same states encoded by the target network (its Q head ``value_head`` values
        the action).

    Returns:
      (values [...], selected actions [...]); no gradient flows into either network.
    """
    chex.assert_equal_shape([h_main, h_target])
    q_main = network.apply(jax.lax.stop_gradient(main_params), jax.lax.stop_gradient(h_main), select_head,
                           method=SequenceNetwork.q_values)
    # top_k(., 1) is argmax with the same tie rule (lowest index first), about 8x faster on XLA:CPU,
    # where argmax's two-operand reduction is not vectorised.
    a_star = jax.lax.top_k(q_main, 1)[1][..., 0]
    v = network.apply(jax.lax.stop_gradient(target_params), jax.lax.stop_gradient(h_target), a_star[..., None],
                      value_head, method=SequenceNetwork.q_at)[..., 0]
    return v, a_star


def make_losses(cfg: SQNConfig, network: SequenceNetwork):
    """``loss(main_params, target_params, batch, key) -> (loss, metrics)`` over a batch of chunks.

    The encoder and the return computation are unbatched functions vmapped over the chunks; the item
    heads run on the whole batch at once (see ``jaxrec.nets.sequence._head``). Every term is averaged
    over the batch's training samples.
    """
    if cfg.bootstrap_at_end is None:
        raise ValueError("bootstrap_at_end is unresolved: call SQNConfig.for_split(split.heldout_users) first")
    n_items, n = network.n_items, cfg.n_steps
    uses_q, uses_ssl = cfg.uses_q, cfg.uses_ssl
    sequence_mode = cfg.mode == "sequence"
    if sequence_mode:
        # The n-step maps of the last samples run past the sequence: the action-axis arrays are padded with
        # this many invalid steps (zero reward, discount and λ; masked out of every loss).
        pad = max(n, 2) - 1 if cfg.lookahead else 0
        encoder = "sequence_states"  # by name, so a subclass's override is the one applied
    else:
        pad = 0
        encoder = "chunk_states"

    def layout(width: int):
        """(N, A, C, future, horizon, n_sup_states) of rows of ``width`` items: static index maps over a row's
        actions (into the arrays padded by ``ahead``). Sequence mode: one row = one user's sequence (max_len
        items, or fewer for a length stratum); state t (after slot t) takes item t + 1 as its action, so
        A = width - 1 actions, every one a sample (C = A), states 0..A."""
        if sequence_mode:
            N, A = 0, width - 1
            C = A
        else:
            N, C = cfg.window, cfg.chunk
            A = C + max(cfg.lookahead, 1) - 1  # actions per chunk (a chunk holds its samples' lookahead)
        future = np.arange(C)[:, None] + np.arange(1, max(n, 2))[None, :]  # [C, n-1]: a_{t+j}, j = 1..n-1
        horizon = np.arange(C)[:, None] + np.arange(n)[None, :]  # [C, n]: steps t..t+n-1 of each sample
        n_sup_states = A if (uses_ssl and cfg.ssl == "future_states") else C
        return N, A, C, future, horizon, n_sup_states

    def ahead(x):
        """[B, A + pad, ...]: ``x`` [B, A, ...] with ``pad`` zero (False) steps appended on the action axis."""
        if not pad:
            return x
        return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))

    def encode(params, seq, key):
        return network.apply(params, seq, False, method=encoder, rngs={"dropout": key})

    def encode_target(params, seq):
        return network.apply(params, seq, True, method=encoder)

    def chunk_returns(reward, discount, v_next, lam, horizon):
        """[C] λ-return of each sample of one chunk over its n logged steps (unbatched)."""
        return jax.vmap(lambda_returns)(reward[horizon], discount[horizon], v_next[horizon], lam[horizon])[:, 0]

    def loss(main_params, target_params, batch: Batch, keys: jax.Array, count: jax.Array | None = None,
             hp: dict[str, jax.Array] | None = None):
        """``keys`` [B]: one key per chunk (its dropout and negatives); ``count``: the number of samples
        the sums are divided by (default: this batch's; micro-batches pass the whole batch's); ``hp``: the
        traced hyper-parameters (default: ``cfg``'s)."""
        hp = traced_values(cfg) if hp is None else hp
        items, reward, valid, terminal, sample = (batch[k] for k in ("items", "reward", "valid", "terminal", "sample"))
        B = items.shape[0]
        N, A, C, future, horizon, n_sup_states = layout(items.shape[1] if sequence_mode else 0)
        chex.assert_shape(items, (B, N + A + (1 if sequence_mode else 0)))
        chex.assert_shape([reward, valid, terminal], (B, A))
        chex.assert_shape(sample, (B, C))
        chex.assert_shape(keys, (B,))
        k_drop, k_neg = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
        w = sample.astype(jnp.float32)
        if count is None:
            count = jnp.sum(w)
        count = jnp.maximum(count, 1.0)
        actions = items[:, N + 1:] if sequence_mode else items[:, N:]
        safe_actions = jnp.minimum(actions, n_items - 1)  # PAD where no action; masked below
        h = jax.vmap(encode, in_axes=(None, 0, 0))(main_params, items, k_drop)  # [B, A+1, d]
        logits = network.apply(main_params, h[:, :n_sup_states], method=SequenceNetwork.logits)
        # CE = logsumexp - logit of the label, without materialising the log-softmax (one [B, S, I] buffer less).
        lse = jax.nn.logsumexp(logits, axis=-1)  # [B, n_sup_states]
        ce = lse - jnp.take_along_axis(logits, safe_actions[:, :n_sup_states, None], axis=2)[..., 0]
        metrics = {"loss_sup": jnp.sum(ce[:, :C] * w) / count}
        total = hp["sup_weight"] * metrics["loss_sup"]

        if uses_ssl:
            if cfg.ssl == "future_states":
                ssl_ce = ahead(ce)[:, future]
            else:
                ssl_ce = lse[:, :C, None] - jnp.take_along_axis(logits[:, :C], ahead(safe_actions)[:, future], axis=2)
            ok = ahead(valid)[:, future].astype(jnp.float32)  # [B, C, n-1]
            per_sample = jnp.sum(ssl_ce * ok, axis=2) / jnp.maximum(ok.sum(axis=2), 1.0)
            metrics["loss_ssl"] = jnp.sum(per_sample * w) / count
            total = total + hp["ssl_weight"] * metrics["loss_ssl"]

        if uses_q:
            h_target = jax.vmap(encode_target, in_axes=(None, 0))(target_params, items)
            valid_f = valid.astype(jnp.float32)
            if cfg.bootstrap_at_end:
                # A cut history: bootstrap after the last logged action (λ_t = 0 there stops the return).
                discount = hp["gamma"] * valid_f
                lam = hp["lam"] * jnp.concatenate([valid_f[:, 1:], jnp.zeros((B, 1))], axis=1)
            else:
                discount = hp["gamma"] * valid_f * (1.0 - terminal.astype(jnp.float32))
                lam = jnp.full((B, A), hp["lam"])
            reward_p, discount, lam = ahead(reward), ahead(discount), ahead(lam)
            if cfg.negatives:
                # Window mode: K items drawn uniformly per chunk and shared by its C samples (one gather of
                # K head rows per chunk instead of C * K: XLA:CPU scatters the gradient row by row). Sequence
                # mode: K per position (SNQN samples per transition; one draw per sequence would give its
                # ~200 positions the same 10 negatives). A draw equal to a sample's own action is dropped
                # for that sample, so each sample's negatives are uniform over the other items.
                if sequence_mode:
                    neg = jax.vmap(lambda k: jax.random.randint(k, (C, cfg.negatives), 0, n_items))(k_neg)
                else:
                    neg = jax.vmap(lambda k: jax.random.randint(k, (cfg.negatives,), 0, n_items))(k_neg)[:, None, :]
                is_neg = (neg != actions[:, :C, None]).astype(jnp.float32)  # [B, C, K]
            # (trained head, head whose target copy values its choice): the two heads cross-bootstrap.
            pairs = ((0, 1), (1, 0)) if cfg.q_heads == 2 else ((0, 0),)
            terms = {"loss_td": 0.0, "mean_q": 0.0, "mean_target": 0.0, "loss_neg": 0.0}
            for head, other in pairs:
                v, _ = double_q_bootstrap(network, main_params, target_params, h, h_target, head, other)  # [B, A+1]
                returns = jax.lax.stop_gradient(jax.vmap(chunk_returns, in_axes=(0, 0, 0, 0, None))(reward_p, discount, ahead(v[:, 1:]), lam, horizon))  # [B, C]
                q_sa = network.apply(main_params, h[:, :C], safe_actions[:, :C, None], head,
                                     method=SequenceNetwork.q_at)[..., 0]
                terms["loss_td"] += jnp.sum(jnp.square(q_sa - returns) * w) / count
                terms["mean_q"] += jnp.sum(q_sa * w) / count
                terms["mean_target"] += jnp.sum(returns * w) / count
                if cfg.negatives:
                    q_neg = network.apply(main_params, h[:, :C], neg, head, method=SequenceNetwork.q_at)
                    v_neg = v[:, :C] if cfg.neg_next == "same" else v[:, 1:C + 1]
                    y_neg = jax.lax.stop_gradient(hp["neg_reward"] + hp["gamma"] * v_neg)
                    sq = jnp.sum(jnp.square(q_neg - y_neg[..., None]) * is_neg, axis=2) / jnp.maximum(is_neg.sum(axis=2), 1.0)
                    terms["loss_neg"] += jnp.sum(sq * w) / count
            # Averaged over the heads, so the Q terms keep one head's scale whatever double_q is.
            metrics.update({k: v / len(pairs) for k, v in terms.items() if k != "loss_neg" or cfg.negatives})
            total = total + hp["q_weight"] * (metrics["loss_td"] + metrics.get("loss_neg", 0.0))
        return total, {"loss": total, **metrics, "samples": jnp.sum(w)}

    return loss


def make_optimizer(cfg: SQNConfig) -> optax.GradientTransformation:
    """Adam (AdamW with ``weight_decay``) after optional clipping, without its learning rate: the update
    multiplies by the state's traced rate. ``optax.adam(lr)``/``adamw`` end in ``scale(-lr)``; this ends in
    ``scale(-1)``, so the state has their structure and ``lr *`` the update gives the same bits."""
    parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    decay = [optax.add_decayed_weights(cfg.weight_decay)] if cfg.weight_decay > 0 else []
    parts.append(optax.chain(optax.scale_by_adam(), *decay, optax.scale(-1.0)))
    return optax.chain(*parts)


def param_layout(network: SequenceNetwork) -> tuple[int, Callable]:
    """(size, unravel): the network's parameters as one flat float32 vector and back to the pytree.

    The training state keeps each network's parameters (and target copy and Adam moments) as one
    vector: selecting and writing back the coin's network is then one dynamic slice per array instead
    of one per leaf, which shrinks the compiled training step (and XLA's compile-time memory) severalfold.
    """
    dummy = jnp.full((network.window,), network.n_items, jnp.int32)
    shapes = jax.eval_shape(network.init, jax.random.key(0), dummy)
    flat, unravel = ravel_pytree(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes))
    return flat.size, unravel


def network_params(network: SequenceNetwork, state: TrainingState, i: int = 0):
    """The parameter pytree of network ``i`` of a training state."""
    return param_layout(network)[1](state.params[i])


def make_update(cfg: SQNConfig, network: SequenceNetwork, optimizer: optax.GradientTransformation,
                shard: Callable = no_sharding):
    """``update(state, batch, key) -> (state, metrics)``: one gradient step of the main network.

    With ``cfg.micro_batches > 1`` the batch's gradient is accumulated over equal slices of its chunks
    (each chunk keeps its own key, every sum is divided by the whole batch's sample count): the same
    update up to float summation order, with the step's temporary buffers divided by the slice count.
    ``shard`` (``jaxrec.parallel.batch_sharder``) splits the batch (each micro-batch) over devices.
    """
    loss_fn = make_losses(cfg, network)
    _, unravel = param_layout(network)

    def flat_loss(params, target, batch, keys, count, hp):
        return loss_fn(unravel(params), unravel(target) if cfg.uses_q else {}, batch, keys, count, hp)

    grad_fn = jax.value_and_grad(flat_loss, has_aux=True)
    n_micro = cfg.micro_batches

    def accumulated(params, target, batch, keys, count, hp, n_slices):
        """(metrics, gradient) sums over ``n_slices`` equal slices of one batch (or one stratum's rows)."""
        if n_slices == 1:
            (_, metrics), grads = grad_fn(params, target, *shard((batch, keys)), count, hp)
            return metrics, grads
        sliced = jax.tree.map(lambda x: x.reshape((n_slices, x.shape[0] // n_slices) + x.shape[1:]), (batch, keys))
        sliced = shard(sliced, 1)  # each micro-batch split over the devices, not micro-batches over devices

        def accumulate(acc, micro):
            (_, metrics), grads = grad_fn(params, target, micro[0], micro[1], count, hp)
            return jax.tree.map(jnp.add, acc, (metrics, grads)), None

        first = jax.tree.map(lambda x: x[0], sliced)
        (_, metrics), grads = jax.eval_shape(grad_fn, params, target, first[0], first[1], count, hp)
        zero = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (metrics, grads))
        (metrics, grads), _ = jax.lax.scan(accumulate, zero, sliced)
        return metrics, grads

    def gradients(params, target, batch, keys, hp):
        if not isinstance(batch, tuple):  # one batch of equal-width rows (one slice: the loss counts its own)
            count = None if n_micro == 1 else jnp.sum(batch["sample"].astype(jnp.float32))
            return accumulated(params, target, batch, keys, count, hp, n_micro)
        # Length strata (one tuple entry per width): every sum is divided by the whole batch's sample count.
        count = sum(jnp.sum(part["sample"].astype(jnp.float32)) for part in batch)
        sums = [accumulated(params, target, part, k, count, hp, part["items"].shape[0] // cfg.slice_rows)
                for part, k in zip(batch, keys)]
        return jax.tree.map(lambda *xs: sum(xs), *sums)

    def update(state: TrainingState, batch: Batch, key: jax.Array):
        k_coin, k_loss = jax.random.split(key)
        if cfg.n_nets == 2:
            main = jax.random.bernoulli(k_coin).astype(jnp.int32)
            other = 1 - main
        else:
            main = other = jnp.int32(0)
        params = state.params[main]
        target = state.target_params[other] if cfg.uses_q else params
        if isinstance(batch, tuple):  # one key per row of each length stratum
            keys = tuple(jax.random.split(jax.random.fold_in(k_loss, i), part["items"].shape[0])
                         for i, part in enumerate(batch))
        else:
            keys = jax.random.split(k_loss, batch["items"].shape[0])
        hp = state.hyper
        metrics, grads = gradients(params, target, batch, keys, hp)
        opt = _tree_index(state.opt_state, main)
        updates, opt = optimizer.update(grads, opt, params)
        all_params = state.params.at[main].set(optax.apply_updates(params, hp["lr"] * updates))
        target_params = state.target_params
        if cfg.uses_q:
            target_params = optax.incremental_update(all_params, target_params, hp["target_tau"])
        n = metrics.pop("samples").astype(jnp.int32)
        lo = state.samples[1] + n
        samples = jnp.stack([state.samples[0] + lo // _LO, lo % _LO])
        new_state = state.replace(params=all_params, target_params=target_params,
                                  opt_state=_tree_set(state.opt_state, main, opt), step=state.step + 1,
                                  samples=samples)
        metrics["grad_norm"] = jnp.linalg.norm(grads)
        return new_state, metrics

    return update


def epoch_rows(key: jax.Array, step: jax.Array, n_rows: int, n_total: int) -> jax.Array:
    """Row indices ``[n_rows]`` of batch ``step`` when ``n_total`` rows are read in epochs without replacement.

    The rows are read as one stream of passes, pass e being ``permutation(fold_in(key, e), n_total)``, and
    batch s takes stream positions ``s * n_rows ... (s + 1) * n_rows - 1``: every row appears once in each pass,
    a batch that straddles two passes takes the end of one and the start of the next (a shuffled loader that
    keeps its last, partial batch and tops it up from the next epoch), and the batch depends on the step alone.
    """
    pos = step * n_rows + jnp.arange(n_rows)
    epoch, offset = pos // n_total, pos % n_total
    first = epoch[0]
    # A batch spans at most this many passes (several when n_rows exceeds n_total).
    span = -(-n_rows // n_total) + 1
    perms = jnp.stack([jax.random.permutation(jax.random.fold_in(key, first + e), n_total) for e in range(span)])
    return perms[epoch - first, offset]


_EPOCH_STREAM = 0xFFFFFFFF
"""``fold_in`` data of the epoch-permutation key (``fold_in(key, step)`` of the per-step keys never reaches it)."""


def make_train(cfg: SQNConfig, network: SequenceNetwork, shard: Callable = no_sharding):
    """``(init, train)``: pure, unjitted functions; callers jit them (one run) or vmap them (seeds).

    ``init(key) -> TrainingState``; ``train(state, data, n_steps) -> (state, mean metrics)`` runs
    ``n_steps`` (may be traced: one compilation for every chunk length) updates in one loop on the device.
    ``data`` is the dict of chunk arrays of the whole training set (``SequenceChunks.arrays()`` on the
    device), or in sequence mode with ``length_strata > 1`` the tuple ``UserSequences.strata(length_strata)``
    (each update then draws ``batch_size / length_strata`` rows from every stratum); each update draws
    ``batch_size / chunk`` chunks uniformly with replacement using
    ``fold_in(key, step)``, or in epochs without replacement (``sampling="epochs"``, ``epoch_rows``), so any
    split of the steps into calls, and resuming from a checkpoint, gives the same result. ``shard`` splits each
    batch over devices (``make_update``).
    """
    optimizer = make_optimizer(cfg)
    update = make_update(cfg, network, optimizer, shard)
    n_chunks = cfg.batch_rows

    def init(key: jax.Array) -> TrainingState:
        k_init, k_run = jax.random.split(key)
        dummy = jnp.full((network.window,), network.n_items, jnp.int32)
        # Network i starts from fold_in(k_init, i): network 0 starts where a supervised-only run of the
        # same seed starts, so comparisons isolate the RL terms.
        params = jnp.stack([ravel_pytree(network.init(jax.random.fold_in(k_init, i), dummy))[0]
                            for i in range(cfg.n_nets)])
        opt_state = jax.vmap(optimizer.init)(params)
        # Without Q-learning a one-element placeholder (orbax cannot checkpoint empty arrays).
        target = params if cfg.uses_q else jnp.zeros((1,), params.dtype)
        return TrainingState(params=params, target_params=target, opt_state=opt_state,
                             key=jax.random.key_data(k_run), step=jnp.int32(0), samples=jnp.zeros((2,), jnp.int32),
                             hyper=traced_values(cfg))

    def train(state: TrainingState, data: dict | tuple, n_steps: jax.Array):
        base = jax.random.wrap_key_data(state.key)
        epoch_key = jax.random.fold_in(base, _EPOCH_STREAM)
        if isinstance(data, tuple) and len(data) != cfg.length_strata:
            raise ValueError(f"data has {len(data)} length strata, the config {cfg.length_strata}")
        n_rows = n_chunks // cfg.length_strata

        def draw(part: dict, key: jax.Array, step: jax.Array, stratum: int, n: int) -> dict:
            """``n`` rows of ``part``: uniform with replacement (even from fewer rows), or the step's share of
            the stratum's passes (each stratum its own permutations)."""
            n_total = part["items"].shape[0]
            if cfg.sampling == "epochs":
                idx = epoch_rows(jax.random.fold_in(epoch_key, stratum), step, n, n_total)
            else:
                idx = jax.random.randint(key, (n,), 0, n_total)
            return jax.tree.map(lambda x: x[idx], part)

        def sample(key, step):
            if not isinstance(data, tuple):
                return draw(data, key, step, 0, n_chunks)
            # The same number of rows from every length stratum; strata of one width are joined into one part
            # (one compiled loss per distinct width, the part's slices run in one scan).
            parts: dict[int, list] = {}
            for i, part in enumerate(data):
                parts.setdefault(part["items"].shape[1], []).append(draw(part, jax.random.fold_in(key, i), step, i,
                                                                         n_rows))
            return tuple(jax.tree.map(lambda *xs: jnp.concatenate(xs), *group) for group in parts.values())

        def body(_, carry):
            state, sums = carry
            k_batch, k_update = jax.random.split(jax.random.fold_in(base, state.step))
            state, metrics = update(state, sample(k_batch, state.step), k_update)
            return state, jax.tree.map(jnp.add, sums, metrics)

        batch_shape = jax.eval_shape(sample, base, state.step)
        shapes = jax.eval_shape(update, state, batch_shape, base)[1]
        sums = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        state, sums = jax.lax.fori_loop(0, n_steps, body, (state, sums))
        return state, jax.tree.map(lambda x: x / jnp.maximum(n_steps, 1), sums)

    return init, train


def make_scorer(cfg: SQNConfig, network: SequenceNetwork):
    """``score(params, windows [B, N]) -> [B, I]``: item scores of network 0 of the stacked flat
    ``TrainingState.params`` (jitted; the window encoder is vmapped over the batch)."""
    _, unravel = param_layout(network)

    @jax.jit
    def score(params, windows):
        p0 = unravel(params[0])
        h = jax.vmap(lambda w: network.apply(p0, w, method=SequenceNetwork.window_state))(windows)
        if cfg.rank_by == "sup":
            return network.apply(p0, h, method=SequenceNetwork.logits)
        return sum(network.apply(p0, h, k, method=SequenceNetwork.q_values) for k in range(cfg.q_heads)) / cfg.q_heads

    return score


__all__ = ["SQNConfig", "TrainingState", "double_q_bootstrap", "epoch_rows", "make_losses", "make_optimizer",
           "make_scorer", "make_train", "make_update", "network_params", "param_layout", "samples_count"]
