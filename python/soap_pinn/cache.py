"""On-disk cache of generated reference solutions (npz files).

Location: $SOAP_PINN_CACHE_DIR if set, else ~/.cache/soap_pinn. The file name holds the PDE name, the
generator settings and GENERATOR_VERSION, so changing a generator invalidates old files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .references import Reference, generate_reference

__all__ = ["cache_dir", "load_reference", "load_mat_reference"]

# bump when a generator changes what it computes
GENERATOR_VERSION = 1


def cache_dir() -> Path:
    """The cache folder (created on first use)."""
    return Path(os.environ.get("SOAP_PINN_CACHE_DIR", Path.home() / ".cache" / "soap_pinn"))


def _cache_path(name: str, settings: dict) -> Path:
    key = json.dumps({"name": name, "settings": settings, "version": GENERATOR_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{digest}.npz"


def load_reference(name: str, use_cache: bool = True, **settings) -> Reference:
    """The reference of PDE `name` at the given generator settings, generated once and then read from disk."""
    path = _cache_path(name, settings)
    if use_cache and path.exists():
        with np.load(path) as data:
            coordinates = tuple(data[f"coordinate_{i}"] for i in range(int(data["spatial_dims"])))
            return Reference(t=data["t"], coordinates=coordinates, solution=data["solution"])
    reference = generate_reference(name, **settings)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"coordinate_{i}": c for i, c in enumerate(reference.coordinates)}
        # write to a temporary file and rename: a crash never leaves a truncated cache entry
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
            np.savez(handle, t=reference.t, solution=reference.solution,
                     spatial_dims=np.array(reference.spatial_dims), **arrays)
        os.replace(handle.name, path)
    return reference


def load_mat_reference(path: str | Path) -> Reference:
    """A 1-D reference from a MATLAB file with keys t, x, usol[t, x] (the paper authors' format)."""
    from scipy.io import loadmat

    data = loadmat(str(path))
    missing = {"t", "x", "usol"} - set(data)
    if missing:
        raise ValueError(f"{path}: missing keys {sorted(missing)} (expected t, x, usol[t, x])")
    return Reference(
        t=data["t"].ravel().astype(np.float64),
        coordinates=(data["x"].ravel().astype(np.float64),),
        solution=np.asarray(data["usol"], dtype=np.float64)[..., None],
    )
