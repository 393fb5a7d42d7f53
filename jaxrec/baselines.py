"""Non-learned reference recommenders, scored by the same protocols as the RL agents."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.interactions import Interactions


def popularity_scores(train: Interactions, min_rating: float | None = None) -> jnp.ndarray:
    """[n_items] float32 number of training interactions per item (optionally only rating >= min_rating).

    Ties are left to the metric's rule (lower item index first), so the ranking is deterministic.
    """
    keep = np.ones(len(train), bool) if min_rating is None else train.rating >= min_rating
    return jnp.asarray(np.bincount(train.item[keep], minlength=train.n_items).astype(np.float32))


@jax.jit
def broadcast_scores(item_scores: jnp.ndarray, context: jnp.ndarray) -> jnp.ndarray:
    """The same item scores for every user of a batch ([B, I]); exclusion is the metric's job."""
    return jnp.broadcast_to(item_scores, context.shape)
