"""Workers on a real PostgreSQL server (a private cluster, see the `postgres_url` fixture).

A file of its own so that pytest-xdist runs it beside the other worker tests.
"""

from test_workers import four_workers_share_one_study


def test_four_workers_share_one_postgresql_study(postgres_url, tmp_path, cache_dir, prepared):
    four_workers_share_one_study(postgres_url, tmp_path, cache_dir)
