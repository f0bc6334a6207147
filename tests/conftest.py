"""Suite-wide collection order: tests marked ``slow`` first.

Under ``pytest -n 2 --dist loadgroup`` the workers take work in collection order (modules
grouped with ``xdist_group`` first), so starting the long tests early keeps one of them from
running alone at the end while the other worker idles."""

from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)   # stable: order kept
