"""prepare: what it caches, what keys its cache, and that loading never downloads."""

import dataclasses
import sys

import lorasweep.prepare
from lorasweep.config import TrialConfig
from lorasweep.prepare import hub_offline, prepare


def test_prepare_reads_only_the_fields_that_key_its_cache(tiny_world, cache_dir, prepared, monkeypatch):
    """A field prepare reads but its cache key lacks would hand one trial another's data."""
    read = set()
    fields = {f.name for f in dataclasses.fields(TrialConfig)}

    class Watched(TrialConfig):
        def __getattribute__(self, name):
            if name in fields:
                read.add(name)
            return super().__getattribute__(name)

    config = Watched(world=tiny_world)
    read.clear()  # construction checks every field
    monkeypatch.setattr(lorasweep.prepare, "_PREPARED", {})
    prepare(config, cache_dir)
    assert read and read <= set(TrialConfig().prepare_fields())


def test_trials_share_what_they_agree_on_and_no_more(tiny_world, cache_dir, prepared):
    config = TrialConfig(world=tiny_world)
    assert prepare(dataclasses.replace(config, method="full", learning_rate=3e-4), cache_dir) is prepared
    assert (
        prepare(dataclasses.replace(config, device="cpu", dtype="fp32"), cache_dir) is prepared
    )  # auto here
    # general_heldout splits a user's general file (the world has its own split): a new preparation
    assert prepare(dataclasses.replace(config, general_heldout=0.5), cache_dir) is not prepared


def test_loading_turns_the_hub_offline_for_code_that_imported_it_first(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for module in (huggingface_hub.constants, datasets.config):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", False)
    hub_offline()
    assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert sys.modules["os"].environ["HF_HUB_OFFLINE"] == "1"


def test_a_users_own_hub_setting_stands(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub_offline()
    assert not huggingface_hub.constants.HF_HUB_OFFLINE
