"""The claim lock: one process at a time counts and creates a study's next trial, on any storage."""

import threading
import time

import optuna
import pytest

from lorasweep.claim_lock import claim_lock
from lorasweep.storages import open_storage


def second_claim_waits_for_the_first(study_a: optuna.Study, study_b: optuna.Study) -> None:
    """While `study_a`'s process holds the lock, `study_b`'s cannot take it; its release lets it."""
    taken = threading.Event()

    def claim() -> None:
        with claim_lock(study_b):
            taken.set()

    with claim_lock(study_a) as release:
        other = threading.Thread(target=claim)
        other.start()
        assert not taken.wait(0.5)  # held: the other claim waits
        release()  # released early (the trial exists): the other claim goes on
        assert taken.wait(10)
    other.join()


def opened_twice(url: str, name: str) -> tuple[optuna.Study, optuna.Study]:
    optuna.create_study(study_name=name, storage=open_storage(url), load_if_exists=True)
    return tuple(optuna.load_study(study_name=name, storage=open_storage(url)) for _ in range(2))


@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_file_storages_lock_a_file_beside_the_database(tmp_path, scheme):
    url = f"{scheme}:///{tmp_path}/s.{'db' if scheme == 'sqlite' else 'journal'}"
    second_claim_waits_for_the_first(*opened_twice(url, "s"))
    name = f"s.{'db' if scheme == 'sqlite' else 'journal'}"
    assert (tmp_path / f"{name}.claim-lock").exists()
    study = opened_twice(url, "s")[0]
    start = time.monotonic()
    with claim_lock(study):  # the study writes while claiming; Optuna's own journal lock is another file
        study.set_user_attr("written", True)
    assert time.monotonic() - start < 5


def test_postgresql_takes_an_advisory_lock_per_study(postgres_url):
    second_claim_waits_for_the_first(*opened_twice(postgres_url, "locked"))
    one, _ = opened_twice(postgres_url, "locked")
    other, _ = opened_twice(postgres_url, "another")
    with claim_lock(one), claim_lock(other):  # another study's claims do not wait
        pass
