"""Profile revisions: a digest of what makes a profile's protected faces (no models loaded)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from faceanonymixer.engine import profiles
from faceanonymixer.engine.profiles import (
    EMBEDDED,
    FFHQ,
    PROFILES,
    profile_revision,
    served_profiles,
    with_optimisation_overrides,
)


def test_a_revision_is_16_hex_characters_and_stable() -> None:
    for profile in PROFILES.values():
        revision = profile_revision(profile)
        assert re.fullmatch(r"[0-9a-f]{16}", revision) and profile_revision(profile) == revision
    assert len({profile_revision(profile) for profile in PROFILES.values()}) == len(PROFILES)


def test_settings_and_weights_change_the_revision() -> None:
    base = profile_revision(EMBEDDED)
    assert profile_revision(with_optimisation_overrides(EMBEDDED, {"steps": 49})) != base
    assert (
        profile_revision(with_optimisation_overrides(EMBEDDED, {"steps": EMBEDDED.optimisation.steps}))
        == base
    )
    assert profile_revision(replace(EMBEDDED, output_size=128)) != base
    assert profile_revision(replace(EMBEDDED, generator="digiface-dcgan")) != base


def test_a_new_weight_file_changes_the_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    from faceanonymixer.models import weights

    base = profile_revision(EMBEDDED)
    committed = weights.committed_weights()

    def retrained() -> dict[str, weights.CommittedWeights]:
        entries = dict(committed)
        entries["lfw-dcgan"] = replace(entries["lfw-dcgan"], sha256="0" * 64)
        return entries

    monkeypatch.setattr(weights, "committed_weights", retrained)
    assert profile_revision(EMBEDDED) != base
    assert profile_revision(FFHQ) == profile_revision(FFHQ)  # its weights are not committed ones


def test_a_setting_added_later_counts_only_away_from_its_default() -> None:
    assert "kept_axes" not in profiles._FIRST_REVISION_SETTINGS
    at_default = profiles._optimisation_document(profiles.EMBEDDED_LFW_STATS.optimisation)
    assert set(at_default) == profiles._FIRST_REVISION_SETTINGS  # kept_axes (later) at 0: left out
    document = profiles._optimisation_document(EMBEDDED.optimisation)  # kept_axes 2
    assert set(document) == profiles._FIRST_REVISION_SETTINGS | {"kept_axes"}


def test_the_revision_before_the_diverse_statistics_is_the_one_its_keys_were_migrated_to() -> None:
    """Keys made before 2026-12-07's change of ``embedded`` keep their faces: the archived profile
    is, bit for bit, the revision that migration 0002 wrote into existing keys."""
    from importlib import import_module

    migration = import_module("faceanonymixer.keystore.migrations.versions.0002_integrity_and_revisions")
    assert profile_revision(profiles.EMBEDDED_LFW_STATS) == migration.REVISIONS_2026_12_07["embedded"]
    assert profiles.EMBEDDED_LFW_STATS in profiles.ARCHIVED_PROFILES
    assert profile_revision(EMBEDDED) in served_profiles(EMBEDDED)
    assert profile_revision(profiles.EMBEDDED_LFW_STATS) in served_profiles(EMBEDDED)


def test_a_server_serves_its_revision_and_the_archived_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    older = with_optimisation_overrides(EMBEDDED, {"steps": 40})
    monkeypatch.setattr(profiles, "ARCHIVED_PROFILES", (older, FFHQ))
    served = served_profiles(EMBEDDED)
    assert list(served) == [profile_revision(EMBEDDED), profile_revision(older)]  # FFHQ: another id
    assert served_profiles(EMBEDDED, archived=False) == {profile_revision(EMBEDDED): EMBEDDED}


def test_attribute_classifiers_count_in_the_revision_only_where_a_setting_uses_them() -> None:
    """``embedded`` names its attribute classifiers for opt-in settings: named but unused they
    change no face, and its revision is the one of before they were named (keys made under it keep
    their faces); the settings that use them make another revision, which digests the file."""
    assert EMBEDDED.attribute_classifiers is not None
    assert profile_revision(EMBEDDED) == "3d103b0ec5f493f3"
    assert profile_revision(replace(EMBEDDED, attribute_classifiers=None)) == "3d103b0ec5f493f3"
    attributes = {"lambda_attr_classes": 2.0, "attribute_targets": True, "kept_shift": 1.0}
    opted_in = with_optimisation_overrides(EMBEDDED, attributes)
    assert profile_revision(opted_in) == "184fd622e43c50b2"  # the record's measured revision
    assert set(profiles._optimisation_document(opted_in.optimisation)) == (
        profiles._FIRST_REVISION_SETTINGS | {"kept_axes", *attributes}
    )
    for setting in ("lambda_attr_classes", "attribute_targets"):
        only = with_optimisation_overrides(EMBEDDED, {setting: attributes[setting]})
        assert profile_revision(only) != profile_revision(replace(only, attribute_classifiers="other"))
