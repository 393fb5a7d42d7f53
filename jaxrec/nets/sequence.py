"""Sequence state encoders (transformer or GRU) with a supervised next-item head and one or two Q heads.

A *state* is a window of the last ``window`` items, left-padded with ``PAD = n_items`` (see
``jaxrec.data.sequences``). The encoder methods are unbatched (one window, or one chunk sequence) and
are vmapped over a batch at the call site, so attention can never mix two sequences of a batch: the
seed's missing ``batch_first`` (docs/differences.md#m3s-batch-first) made its attention span the batch instead of the
sequence. The item heads take states with any leading axes.

Transformer (Vaswani et al. 2017; SASRec, Kang & McAuley 2018), as the seed's ``TransformerDQN``
(docs/differences.md#m3s-encoder) with its bugs fixed:

* input = item embedding (zero for PAD) + a learned positional embedding indexed by *recency*
  (0 = most recent item), so a left-padded window always has its newest item at the same position
  (``position_origin="first"``: indexed from the window's oldest item instead, SASRec+'s);
* ``layers`` encoder layers, post-norm (the seed's, ``norm="post"``) or pre-norm, ReLU feed-forward of
  width ``ff_dim`` (the seed inherited PyTorch's 2048), dropout on attention weights and residual
  branches; a final LayerNorm (the seed's ``TransformerEncoder(norm=...)``);
* causal or bidirectional attention within the window; PAD keys get -inf logits (a query with no
  valid key attends to nothing, instead of producing NaN);
* pooling: the last position (the newest item) or the masked mean over the window's items.

Whole sequences (``sequence_states``, the sequence mode of ``jaxrec.rl.sqn``): one causal pass over a
left-padded row of ``window`` (= ``max_len``) items gives the state after every slot, for any depth and
either norm; positions count from the row's right end (or, ``position_origin="first"``, from its first
item), so the last slot's state is ``window_state`` of the same items, the state evaluation ranks from.

GRU (Cho et al. 2014; GRU4Rec, Hidasi et al. 2016): a GRU over the window's items, PAD steps leave the
hidden state unchanged; pooling = last hidden state or masked mean of the hidden states.

Sharing encodings across shifted windows (``chunk_states``). Multi-step targets need the states
``s_t, s_{t+1}, ..., s_{t+n}`` of one trajectory: the windows ``x[i : i + N]`` of one item sequence.
For a one-layer post-norm causal transformer pooled at the last position, the state of window ``i`` is
the output of its last query, whose keys are the N items before it with positional embeddings that
depend only on the key's distance from the query. Adding the positional embedding to a key is linear
before the key/value projections, so it splits into an item part shared by every window and a relative
part ``P W_k`` / ``P W_v`` indexed by the distance (Shaw et al. 2018). One pass over the sequence with a
band mask of width N then gives every window's state exactly (tested against ``window_state``), at
the cost of one window per state instead of N positions per state. Other configurations (GRU, mean
pooling, bidirectional, several layers, pre-norm), where a window's encoding depends on where the
window starts, fall back to encoding each window separately (``jax.vmap``).
"""
from __future__ import annotations

from typing import Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Backbone = Literal["transformer", "gru"]


def _safe_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax over the last axis restricted to ``mask``; all-masked rows give all-zero weights.

    Masked logits are -inf (they get exactly zero weight); a row with no valid key is replaced by
    zeros before the softmax so neither its value nor its gradient is NaN, then zeroed.
    """
    any_valid = jnp.any(mask, axis=-1, keepdims=True)
    logits = jnp.where(mask, logits, -jnp.inf)
    logits = jnp.where(any_valid, logits, 0.0)
    return jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)


def _head(h: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``h @ w + b`` as one 2-D GEMM: leading axes are flattened first, because XLA:CPU computes the
    weight gradient of a dot that contracts two batch axes about 4x slower than the flat GEMM. Call
    the heads on whole batches ([B, S, d]) rather than inside ``vmap``, which re-adds a batch axis."""
    flat = h.reshape(-1, h.shape[-1]) @ w + b
    return flat.reshape(h.shape[:-1] + (w.shape[-1],))


class SequenceNetwork(nn.Module):
    """State encoder plus two item heads: supervised logits and Q-values over all ``n_items`` items."""

    n_items: int
    window: int = 10
    backbone: Backbone = "transformer"
    dim: int = 64
    heads: int = 1
    layers: int = 1
    ff_dim: int = 256
    dropout: float = 0.1
    causal: bool = True
    pooling: Literal["last", "mean"] = "last"
    norm: Literal["post", "pre", "sasrec"] = "post"
    q_heads: int = 1
    """Q heads over the shared state (2: double Q-learning with two heads, ``jaxrec.rl.sqn``)."""
    tied_head: bool = False
    """Supervised logits = state . input item embedding + bias (SASRec's output layer, which reuses the item
    table) instead of a separate output matrix."""
    embed_scale: bool = False
    """Multiply the input item embeddings by sqrt(dim) (SASRec's code, after Vaswani et al. 2017, section 3.4):
    the item signal then outweighs the positional embedding of the same initial scale. The tied output layer
    reads the unscaled table."""
    input_dropout: float = 0.0
    """Transformer: dropout on the summed input (item + position) embeddings (SASRec's emb_dropout)."""
    qkv_init: Literal["flax3d", "xavier", "torch"] = "flax3d"
    """Query/key/value projections [d, heads, d_head]: ``xavier`` = Xavier-uniform over fan-in d and fan-out
    heads x d_head (std 0.125 for d = 64); ``torch`` = PyTorch MultiheadAttention's, Xavier-uniform over its
    joint [3d, d] in-projection, fan-out 3d (std 0.088 for d = 64; SASRec+'s code); ``flax3d`` = flax's xavier_uniform on
    the 3-D kernel, which takes the leading axis as a receptive field and counts fan-in heads x d and fan-out
    d x d_head, so the projections start about 5.7x smaller (std 0.022 for d = 64, one head). ``flax3d`` is
    what every window-mode table of the README was measured with, hence its default."""
    position_origin: Literal["last", "first"] = "last"
    """Transformer: which item gets learned position 0. ``last``: the newest (slot j of a row of n slots gets
    position n - 1 - j, its recency from the row's end). ``first``: the row's oldest item (position = the
    item's index in the row's history, PAD slots skipped; SASRec+'s right-padded rows, Klenitskiy & Vasilev
    2023). In whole-sequence training ``last`` tells every position how many items follow it in the row,
    which evaluation states never have (their newest item is always position 0); ``first`` gives training
    prefixes exactly the positions of an evaluation state of the same items."""
    block_init_std: float = 0.0
    """Transformer: initialise the attention output and feed-forward kernels N(0, std) (SASRec's code: 0.02,
    so every block starts near the identity); 0 = flax's LeCun-normal default."""
    attn_out_dropout: bool = True
    """Transformer: dropout on the attention sublayer's output before the residual sum (the Transformer's
    residual dropout, Vaswani et al. 2017 section 5.4). SASRec's code drops only attention weights there."""
    head_bias: bool = True
    """A learned per-item bias on the supervised logits (SASRec's tied output layer has none)."""
    ln_eps: float = 1e-6
    """Transformer: LayerNorm epsilon (flax's default; SASRec's code 1e-8)."""

    def setup(self):
        d = self.dim
        if d % self.heads:
            raise ValueError(f"dim={d} must be divisible by heads={self.heads}")
        # Row n_items is the PAD id; its embedding is masked to zero wherever it is read.
        self.item_embedding = self.param("item_embedding", nn.initializers.normal(0.02), (self.n_items + 1, d))
        if self.backbone == "transformer":
            dh = d // self.heads
            self.position_embedding = self.param("position_embedding", nn.initializers.normal(0.02), (self.window, d))
            if self.qkv_init == "xavier":  # fan-in d, fan-out heads * dh: Xavier of the d x d projection
                xavier = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2))
            elif self.qkv_init == "torch":  # Xavier over fan-in d, fan-out 3d: 2 / (d + 3d) = 0.5 * 2 / (d + d)
                xavier = nn.initializers.variance_scaling(0.5, "fan_avg", "uniform", in_axis=0, out_axis=(1, 2))
            else:  # flax's xavier_uniform on a 3-D kernel: fan-out counted as d * dh (see qkv_init)
                xavier = nn.initializers.xavier_uniform()
            self.wq = [self.param(f"wq_{l}", xavier, (d, self.heads, dh)) for l in range(self.layers)]
            self.wk = [self.param(f"wk_{l}", xavier, (d, self.heads, dh)) for l in range(self.layers)]
            self.wv = [self.param(f"wv_{l}", xavier, (d, self.heads, dh)) for l in range(self.layers)]
            self.bq = [self.param(f"bq_{l}", nn.initializers.zeros, (self.heads, dh)) for l in range(self.layers)]
            self.bk = [self.param(f"bk_{l}", nn.initializers.zeros, (self.heads, dh)) for l in range(self.layers)]
            self.bv = [self.param(f"bv_{l}", nn.initializers.zeros, (self.heads, dh)) for l in range(self.layers)]
            kernel = nn.initializers.normal(self.block_init_std) if self.block_init_std else nn.initializers.lecun_normal()
            self.wo = [nn.Dense(d, kernel_init=kernel, name=f"out_{l}") for l in range(self.layers)]
            self.ff1 = [nn.Dense(self.ff_dim, kernel_init=kernel, name=f"ff1_{l}") for l in range(self.layers)]
            self.ff2 = [nn.Dense(d, kernel_init=kernel, name=f"ff2_{l}") for l in range(self.layers)]
            self.ln1 = [nn.LayerNorm(epsilon=self.ln_eps, name=f"ln1_{l}") for l in range(self.layers)]
            self.ln2 = [nn.LayerNorm(epsilon=self.ln_eps, name=f"ln2_{l}") for l in range(self.layers)]
            self.final_norm = nn.LayerNorm(epsilon=self.ln_eps)
        elif self.backbone == "gru":
            self.gru_wi = self.param("gru_wi", nn.initializers.lecun_normal(), (d, 3 * d))
            self.gru_wh = self.param("gru_wh", nn.initializers.orthogonal(), (d, 3 * d))
            self.gru_bi = self.param("gru_bi", nn.initializers.zeros, (3 * d,))
            self.gru_bh = self.param("gru_bh", nn.initializers.zeros, (3 * d,))
        else:
            raise ValueError(f"unknown backbone {self.backbone!r}")
        self.drop = nn.Dropout(self.dropout)
        self.drop_input = nn.Dropout(self.input_dropout)
        if not self.tied_head:
            self.sup_w = self.param("sup_w", nn.initializers.lecun_normal(), (d, self.n_items))
        self.sup_b = self.param("sup_b", nn.initializers.zeros, (self.n_items,)) if self.head_bias else None
        self.q_w = [self.param("q_w" if k == 0 else f"q{k}_w", nn.initializers.lecun_normal(), (d, self.n_items))
                    for k in range(self.q_heads)]
        self.q_b = [self.param("q_b" if k == 0 else f"q{k}_b", nn.initializers.zeros, (self.n_items,))
                    for k in range(self.q_heads)]

    # ------------------------------------------------------------------------------------------------
    # Entry points

    def __call__(self, window: jax.Array, deterministic: bool = True):
        """(supervised logits [I], Q-values [heads, I]) of one window; initialises every parameter."""
        h = self.window_state(window, deterministic)
        return self.logits(h), jnp.stack([self.q_values(h, k) for k in range(self.q_heads)])

    def window_state(self, window: jax.Array, deterministic: bool = True) -> jax.Array:
        """[d] state of one window of ``self.window`` item ids (left-padded with PAD)."""
        chex.assert_shape(window, (self.window,))
        if self.backbone == "gru":
            return self._gru(window, deterministic)
        return self._transformer_window(window, deterministic)

    @property
    def shares_windows(self) -> bool:
        """Whether ``chunk_states`` encodes the sequence once (exact) rather than window by window."""
        return (self.backbone == "transformer" and self.causal and self.pooling == "last" and self.layers == 1
                and self.norm == "post" and self.input_dropout == 0 and self.position_origin == "last")

    def chunk_states(self, seq: jax.Array, deterministic: bool = True) -> jax.Array:
        """[L - N + 1, d] the state of every window ``seq[i : i + N]`` of one item sequence ``seq`` [L]."""
        chex.assert_rank(seq, 1)
        n_states = seq.shape[0] - self.window + 1
        if n_states < 1:
            raise ValueError(f"sequence of length {seq.shape[0]} is shorter than the window {self.window}")
        if self.shares_windows:
            return self._transformer_band(seq, deterministic)
        idx = np.arange(n_states)[:, None] + np.arange(self.window)[None, :]
        # Each window gets its own dropout mask, as separate forward passes would.
        return nn.vmap(lambda mdl, w: mdl.window_state(w, deterministic), in_axes=0,
                       variable_axes={"params": None}, split_rngs={"params": False, "dropout": True})(self, seq[idx])

    def sequence_states(self, seq: jax.Array, deterministic: bool = True) -> jax.Array:
        """[L, d] the state after every slot of one whole left-padded sequence of ``self.window`` items in
        ONE causal pass (SASRec's training: every position predicts its next item; Kang & McAuley 2018,
        section III): slot t's state depends on slots 0..t only, and the last slot's state is exactly
        ``window_state(seq)`` (same positions, same encoder), which is what evaluation ranks from.

        A row may be shorter than ``self.window`` when only PAD slots were cut from its left (the length
        strata of ``UserSequences.strata``): positions count from either end of the items and PAD keys are masked
        (the GRU's PAD steps keep the zero state), so every kept slot's state is unchanged.

        Transformer: the outputs of ``_transformer_positions`` (any depth, either norm; causal attention
        required). GRU: the hidden state after every step (PAD steps keep the zero state)."""
        chex.assert_rank(seq, 1)
        if not 1 <= seq.shape[0] <= self.window:
            raise ValueError(f"a sequence of {seq.shape[0]} slots: expected 1..{self.window}")
        if self.backbone == "gru":
            _, hs, _ = self._gru_scan(seq, deterministic)
            return self.drop(hs, deterministic=deterministic)
        if not self.causal:
            raise ValueError("sequence_states needs causal attention: a bidirectional state would see its target")
        return self._transformer_positions(seq, deterministic)[0]

    def logits(self, h: jax.Array) -> jax.Array:
        """Supervised next-item logits [..., I] of states [..., d]."""
        w = self.item_embedding[:self.n_items].T if self.tied_head else self.sup_w  # the PAD row ranks nothing
        return _head(h, w, 0.0 if self.sup_b is None else self.sup_b)

    def q_values(self, h: jax.Array, head: int = 0) -> jax.Array:
        """Q-values [..., I] of Q head ``head`` for states [..., d] and every item."""
        return _head(h, self.q_w[head], self.q_b[head])

    def q_at(self, h: jax.Array, items: jax.Array, head: int = 0) -> jax.Array:
        """Q(h, item) of Q head ``head`` for states [..., d] and item ids [..., K] (leading axes
        broadcast) -> [..., K], without computing the full head."""
        w = self.q_w[head].T[items]  # [..., K, d]: rows of the item-major view are contiguous to gather
        return jnp.einsum("...d,...kd->...k", h, w) + self.q_b[head][items]

    # ------------------------------------------------------------------------------------------------
    # Transformer

    def _embed(self, items: jax.Array) -> jax.Array:
        valid = items != self.n_items
        scale = np.sqrt(self.dim) if self.embed_scale else 1.0
        return self.item_embedding[items] * (valid[..., None] * scale), valid

    def _attend(self, l, x_q, x_kv, mask, deterministic):
        q = jnp.einsum("qd,dhk->qhk", x_q, self.wq[l]) + self.bq[l]
        k = jnp.einsum("sd,dhk->shk", x_kv, self.wk[l]) + self.bk[l]
        v = jnp.einsum("sd,dhk->shk", x_kv, self.wv[l]) + self.bv[l]
        logits = jnp.einsum("qhk,shk->hqs", q, k) / np.sqrt(q.shape[-1])
        probs = self.drop(_safe_softmax(logits, mask[None]), deterministic=deterministic)
        out = jnp.einsum("hqs,shk->qhk", probs, v)
        return self.wo[l](out.reshape(out.shape[0], -1))

    def _attn_out(self, out, deterministic):
        return self.drop(out, deterministic=deterministic) if self.attn_out_dropout else out

    def _feed_forward(self, l, x, deterministic):
        hidden = self.drop(nn.relu(self.ff1[l](x)), deterministic=deterministic)
        return self.ff2[l](hidden)

    def _transformer_positions(self, seq, deterministic):
        """([L, d] output at every slot of ``seq`` (length ``self.window``), valid [L]).

        ``position_origin="last"``: slot j gets the positional embedding of its distance from the LAST slot
        (``pos[L - 1 - j]``): for a window that is the newest item's recency; for a whole training sequence of
        ``sequence_states`` it is a fixed absolute position per slot (SASRec's learned absolute positions,
        indexed from the right end, which is the same thing for left-padded sequences of one length).
        ``"first"``: the item's index in the row's history (PAD slots skipped), so cutting PAD slots from the
        left changes nothing either way."""
        n = seq.shape[0]  # self.window, or fewer for a row cut on the left (sequence_states)
        e, valid = self._embed(seq)
        if self.position_origin == "last":
            x = e + self.position_embedding[:n][::-1]  # slot j holds the item of recency n - 1 - j
        else:  # rows are left-padded, so an item's index in the history is the count of items before it
            x = e + self.position_embedding[jnp.maximum(jnp.cumsum(valid) - 1, 0)]
        if self.input_dropout:
            x = self.drop_input(x, deterministic=deterministic)
        mask = valid[None, :]
        if self.causal:
            mask = mask & jnp.tril(jnp.ones((n, n), bool))
        for l in range(self.layers):
            if self.norm == "post":
                x = self.ln1[l](x + self._attn_out(self._attend(l, x, x, mask, deterministic), deterministic))
                x = self.ln2[l](x + self.drop(self._feed_forward(l, x, deterministic), deterministic=deterministic))
            elif self.norm == "sasrec":
                # SASRec's block (Kang & McAuley's code): the normalised input is the query and the residual,
                # keys and values read the unnormalised stream, and the stream is normalised before the FFN.
                y = self.ln1[l](x)
                x = self.ln2[l](y + self._attn_out(self._attend(l, y, x, mask, deterministic), deterministic))
                x = x + self.drop(self._feed_forward(l, x, deterministic), deterministic=deterministic)
            else:
                y = self.ln1[l](x)
                x = x + self._attn_out(self._attend(l, y, y, mask, deterministic), deterministic)
                x = x + self.drop(self._feed_forward(l, self.ln2[l](x), deterministic), deterministic=deterministic)
        return self.final_norm(x), valid

    def _transformer_window(self, window, deterministic):
        x, valid = self._transformer_positions(window, deterministic)
        if self.pooling == "last":
            return x[-1]
        w = valid.astype(x.dtype)
        return (w @ x) / jnp.maximum(w.sum(), 1.0)

    def _transformer_band(self, seq, deterministic):
        """All window states of ``seq`` in one pass (see the module docstring; exact for 1 post-norm layer)."""
        n, length = self.window, seq.shape[0]
        n_states = length - n + 1
        e, valid = self._embed(seq)
        pos = self.position_embedding  # [N, d], indexed by recency r = query - key
        qpos = np.arange(n - 1, length)  # the query (newest item) of each window
        recency = qpos[:, None] - np.arange(length)[None, :]  # [S, L]
        in_band = (recency >= 0) & (recency < n)
        rec_idx = np.clip(recency, 0, n - 1)
        key_of = qpos[:, None] - np.arange(n)[None, :]  # [S, N]: key position at recency r
        x_q = e[qpos] + pos[0]
        q = jnp.einsum("qd,dhk->qhk", x_q, self.wq[0]) + self.bq[0]
        k_item = jnp.einsum("sd,dhk->shk", e, self.wk[0]) + self.bk[0]
        v_item = jnp.einsum("sd,dhk->shk", e, self.wv[0]) + self.bv[0]
        k_pos = jnp.einsum("rd,dhk->rhk", pos, self.wk[0])
        v_pos = jnp.einsum("rd,dhk->rhk", pos, self.wv[0])
        scale = 1.0 / np.sqrt(q.shape[-1])
        logits_item = jnp.einsum("qhk,shk->hqs", q, k_item)
        logits_rel = jnp.einsum("qhk,rhk->hqr", q, k_pos)  # [H, S, N]
        logits = (logits_item + jnp.take_along_axis(logits_rel, jnp.broadcast_to(rec_idx, logits_rel.shape[:1] + rec_idx.shape), axis=2)) * scale
        mask = in_band & valid[None, :]
        probs = self.drop(_safe_softmax(logits, mask[None]), deterministic=deterministic)  # [H, S, L]
        probs_rel = jnp.take_along_axis(probs, jnp.broadcast_to(key_of, probs.shape[:1] + key_of.shape), axis=2)
        out = jnp.einsum("hqs,shk->qhk", probs, v_item) + jnp.einsum("hqr,rhk->qhk", probs_rel, v_pos)
        attn = self.wo[0](out.reshape(n_states, -1))
        x = self.ln1[0](x_q + self._attn_out(attn, deterministic))
        x = self.ln2[0](x + self.drop(self._feed_forward(0, x, deterministic), deterministic=deterministic))
        return self.final_norm(x)

    # ------------------------------------------------------------------------------------------------
    # GRU

    def _gru_scan(self, window, deterministic):
        """(last hidden state [d], hidden state after every slot [L, d], valid [L]) of the GRU over ``window``."""
        e, valid = self._embed(window)
        e = self.drop(e, deterministic=deterministic)
        wi, wh, bi, bh = self.gru_wi, self.gru_wh, self.gru_bi, self.gru_bh
        d = self.dim

        def step(h, inputs):
            x, ok = inputs
            gi, gh = x @ wi + bi, h @ wh + bh
            r = jax.nn.sigmoid(gi[:d] + gh[:d])
            z = jax.nn.sigmoid(gi[d:2 * d] + gh[d:2 * d])
            cand = jnp.tanh(gi[2 * d:] + r * gh[2 * d:])
            h_new = (1.0 - z) * cand + z * h
            h = jnp.where(ok, h_new, h)  # PAD steps leave the state unchanged
            return h, h

        h_last, hs = jax.lax.scan(step, jnp.zeros((d,), e.dtype), (e, valid))
        return h_last, hs, valid

    def _gru(self, window, deterministic):
        h_last, hs, valid = self._gru_scan(window, deterministic)
        if self.pooling == "last":
            out = h_last
        else:
            w = valid.astype(hs.dtype)
            out = (w @ hs) / jnp.maximum(w.sum(), 1.0)
        return self.drop(out, deterministic=deterministic)
