"""The MLflow store fixtures of tests/tracking (a pre-migrated SQLite store per test)."""

from tests.tracking.conftest import _empty_store, client, store_root, tracking_cfg

__all__ = ["_empty_store", "client", "store_root", "tracking_cfg"]
