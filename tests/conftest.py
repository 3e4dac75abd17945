"""Shared test setup: small, deterministic and quiet on a 2-core CPU box."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep torch from oversubscribing the two cores when tests run subprocesses beside it.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_TEST_PHOTOS = REPO_ROOT.parent / "shared" / "fixtures" / "carvana-real" / "test"
# The 32 real Kaggle test photos live in ../shared beside the checkout (CI has it; a bare clone may not).
needs_real_photos = pytest.mark.skipif(
    not any(REAL_TEST_PHOTOS.glob("*.jpg")), reason=f"real Kaggle photos not found in {REAL_TEST_PHOTOS}"
)

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "ci", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("ci")
except ImportError:  # hypothesis is a test dependency; tests that use it import it themselves
    pass


@pytest.fixture(autouse=True, scope="session")
def _fastest_layout_cache_of_the_session(tmp_path_factory):
    """The layouts timed by tests (carvana.models.fastest_layout), and by the commands they start, are kept
    for the session, not in ~/.cache (session-wide, so that module fixtures' commands see it too)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CARVANA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "carvana-cache"))
        yield


@pytest.fixture(autouse=True)
def _no_real_kaggle_credentials(monkeypatch, tmp_path_factory):
    """Tests never see the developer's real Kaggle credentials or config folder."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path_factory.mktemp("kaggle-config")))
