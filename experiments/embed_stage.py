"""The pretrained-embeddings stage of a run directory: fitted once, saved, then loaded (shell code: files only).

DRR trainers (experiments/ddpg.py, experiments/multimodal.py) pretrain user/item embeddings before the
agent exists. That fit is a pure function of what it depends on, so its result is saved in the run
directory the first time and loaded whenever the same embeddings are needed again: the harness builds
its checkpoint restore template with ``trainer.init`` on every resume, experiments/recommend.py does the
same, and another seed of the run whose embedding key is the same (``model.embed.seed``) needs the same
fit. Without this each of those refitted (tens of seconds to minutes on ML-1M).

Layout, in the run's root (the ``--run-dir`` given to the harness; with ``--seeds`` the directory that
holds ``seedS/``, so that its seeds share the stage):

    embeddings/
      <id>.json   what the fit depends on (``deps``): the fitting function, the resolved embedding config,
                  the split config, the data's identity (name, sizes, sha256 of the training rows and item
                  pool; multimodal: of the item features) and the PRNG key's data
      <id>.npz    the fitted pytree (the trainer's ``state["mf"]``), one array per leaf named by its path

``<id>`` is the start of the sha256 of the canonical deps JSON: a changed config, other data or another
key gives another entry, never embeddings fitted for something else, and an entry is used only when its
JSON equals the deps exactly. Each file is written to a temporary name and renamed, the JSON first, so a
complete .npz always has its JSON and a killed write leaves no half file under an entry's name. An entry
that cannot be read (truncated, corrupt, leaves of other shapes) is reported on stderr and refitted
over; a directory that cannot be written costs the saving (a warning), never the run. In a run of several
processes each one loads or fits the same entry and only process 0 saves it.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.rundir import write_atomic

STAGE = "embeddings"
"""Name of the stage's directory inside a run's root."""
FORMAT = 1
"""Version of the entry format, part of every entry's deps (a new format never loads an old entry)."""


def _warn(msg: str):
    print(msg, file=sys.stderr)


def digest(*arrays) -> str:
    """sha256 of the arrays' dtypes, shapes and bytes (the identity of a fit's inputs)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def canonical(deps: dict) -> str:
    return json.dumps(deps, sort_keys=True, separators=(",", ":"))


def entry_id(deps: dict) -> str:
    return hashlib.sha256(canonical(deps).encode()).hexdigest()[:16]


def _leaf_names(template) -> list[str]:
    return [jax.tree_util.keystr(path, simple=True, separator=".")
            for path, _ in jax.tree_util.tree_flatten_with_path(template)[0]]


def load(npz: Path, deps: dict, template):
    """The entry's pytree, shaped as ``template`` (a pytree of arrays or ShapeDtypeStructs); raises when the
    entry is unreadable, describes other deps, or holds leaves of other names, shapes or dtypes."""
    described = json.loads(npz.with_suffix(".json").read_text())
    if described != json.loads(canonical(deps)):
        raise ValueError(f"{npz.with_suffix('.json').name} describes other inputs")
    leaves, treedef = jax.tree.flatten(template)
    names = _leaf_names(template)
    with np.load(npz, allow_pickle=False) as f:
        if sorted(f.files) != sorted(names):
            raise ValueError(f"leaves {sorted(f.files)}, expected {sorted(names)}")
        arrays = [f[name] for name in names]  # reading a member checks its CRC
    for name, a, t in zip(names, arrays, leaves):
        if a.shape != tuple(t.shape) or a.dtype != t.dtype:
            raise ValueError(f"leaf {name} is {a.dtype}{list(a.shape)}, expected {t.dtype}{list(t.shape)}")
    return jax.tree.unflatten(treedef, [jnp.asarray(a) for a in arrays])


def save(directory: Path, deps: dict, tree) -> Path:
    """Writes ``tree`` as the entry for ``deps`` (JSON, then .npz; each atomically); returns the .npz path."""
    directory.mkdir(parents=True, exist_ok=True)
    npz = directory / f"{entry_id(deps)}.npz"
    text = json.dumps(json.loads(canonical(deps)), indent=2, sort_keys=True) + "\n"
    write_atomic(npz.with_suffix(".json"), lambda f: f.write(text.encode()))
    arrays = dict(zip(_leaf_names(tree), (np.asarray(x) for x in jax.tree.leaves(tree))))
    write_atomic(npz, lambda f: np.savez(f, **arrays))
    return npz


def load_or_fit(directory: Path, deps: dict, template, fit: Callable[[], Any],
                warn: Callable[[str], None] = _warn):
    """The stage's entry for ``deps`` if ``directory`` holds a readable one, else ``fit()``, saved there."""
    directory = Path(directory)
    npz = directory / f"{entry_id(deps)}.npz"
    if npz.exists():
        try:
            return load(npz, deps, template)
        except Exception as e:  # zipfile, numpy, json and OS errors alike: the entry is refitted
            warn(f"warning: pretrained embeddings {npz} cannot be read ({type(e).__name__}: "
                 f"{str(e).splitlines()[0][:160] if str(e) else ''}); fitting them again")
    tree = fit()
    if jax.process_index() != 0:  # several processes (hosts) fit the same tree; process 0 saves it
        return tree
    try:
        save(directory, deps, tree)
    except OSError as e:
        warn(f"warning: pretrained embeddings not saved in {directory} ({type(e).__name__}: {e}); "
             "the next resume fits them again")
    return tree


def stage_root(run_dir: Path, seed: int) -> Path:
    """Where a finished or running seed directory's stages are: a seed directory ``ROOT/seedS`` of a
    multi-seed run (``loop.run_experiment``'s layout) shares ``ROOT/embeddings`` with its sibling seeds;
    any other run directory is its own root."""
    run_dir = Path(run_dir)
    if run_dir.name == f"seed{seed}" and (run_dir.parent / STAGE).is_dir() and not (run_dir / STAGE).is_dir():
        return run_dir.parent
    return run_dir
