"""Shared fixtures: a private reference cache per test session, and the published data folder."""

from pathlib import Path

import pytest

PUBLISHED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "jaxpi_reference"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Tests never read or write the user's ~/.cache/soap_pinn."""
    import os

    folder = tmp_path_factory.mktemp("soap_pinn_cache")
    previous = os.environ.get("SOAP_PINN_CACHE_DIR")
    os.environ["SOAP_PINN_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SOAP_PINN_CACHE_DIR", None)
    else:
        os.environ["SOAP_PINN_CACHE_DIR"] = previous


@pytest.fixture
def published():
    """Path of the paper authors' reference files; skips the test when the folder is absent."""
    if not PUBLISHED.is_dir():
        pytest.skip(f"published reference data not found at {PUBLISHED}")
    return PUBLISHED


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP's spinning
    threads made these tests 3-4x slower (measured); run each test single-threaded, then restore."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
