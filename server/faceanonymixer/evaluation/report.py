"""Run the evaluation and write its report: ``report.json``, ``report.md``, plots and face grids.

``report.json`` (stable keys; every rate a share in [0, 1], every distance Euclidean)::

    {"schema": 2, "dataset": {"path", "paths", "sets", "identities", "photos", ...}, "profile": ...,
     "settings": {"profile_revision", "seed", "steps", "overrides", ...},
     "judges": {"dlib": {"unprotected": {"eer", "auc", "thresholds": {"1e-2", "1e-3"}, ...},
                         "protected_same_key": {"eer", "auc", "tar": {...}, "fmr": {...}},
                         "anonymity": {"psr": {...}, "psr_source": {...}, "psr_others": {...}},
                         "cross_key": {"eer", "auc", "match_rate": {...}},
                         "unlinkability": {"d_sys", ...},
                         "same_key_different_people": {"match_rate": {...}, ...},
                         "irreversibility": {"direct": {...}, "learned": {...}},
                         "distances": {...}, "detection": {...}},
                "facenet": {...}},
     "operating": {judge: rates at the judge's operating threshold (evaluation.cells)},
     "quality": {"detection": {judge: rate}, "fid": {...},
                 "realism": {"kid": {"protected", "protected_se", "reconstruction", "real", ...},
                             "fid": {...} | null, "samples", ...},
                 "attributes": {"gender_agreement", "age_group_agreement", "age_group_within_one",
                                "ita_abs_diff_median", "pose_error_median_deg",
                                "classifier_accuracy": {...}, "shared_key": {...}, ...}},
     "sets": {"<set>": {"dataset", "judges", "operating", "quality", "skipped_measures"}},
     "cells": {"<set>/<cell>": {"count", "<judge>": {"shared_key_impostor_nonmatch",
               "unprotected_impostor_nonmatch", ...}, "detection": {...}, "attributes": {...}}},
     "worst_cell": {"<measure>": {"cell", "value", "count", ...}},
     "skipped_measures": [{"measure", "reason"}],
     "cost": {"seconds_per_image": {"p50", "p95", ...}, ...},
     "baselines": {"naive_mix": {judge: {...same measures...}}, "unprotected": {judge: {...}}},
     "plots": [...], "seconds": ...}

The top-level ``judges``, ``operating`` and ``quality`` pool every set (labels ``<set>/<identity>``,
thresholds from the pooled unprotected impostor pairs); ``sets`` has the same per set. The
measures are defined in :mod:`faceanonymixer.evaluation.measures`, :mod:`.cells`,
:mod:`.realism` and :mod:`.attributes`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from faceanonymixer._version import __version__
from faceanonymixer.evaluation.cells import cell_table, group_rates, worst_cells
from faceanonymixer.evaluation.harness import (
    NAIVE,
    EvalConfig,
    ProtectionRun,
    judge_embeddings,
    list_photos,
    run_protection,
)

# render_markdown is part of this module's interface (report.md is rendered from report.json)
from faceanonymixer.evaluation.markdown import render_markdown
from faceanonymixer.evaluation.measures import FMRS, JudgeMeasures, judge_measures
from faceanonymixer.evaluation.metrics import fmr_key
from faceanonymixer.evaluation.quality import (
    AttributeData,
    attribute_report,
    measure_attributes,
    realism_features,
    realism_for,
    realism_split,
)
from faceanonymixer.utils.files import write_atomic

SCHEMA = 2
#: rows of the example grid
GRID_PHOTOS = 8
#: photos per cell (or per set without cells) in the per-group grid, side by side in its row
GRID_PER_CELL = 2
#: the protected settings whose embeddings the per-group rates read
_GROUP_SETTINGS = ("original", "A", "B", "S")
Say = Callable[[str], object]

_NO_GENUINE_PAIRS = "every identity has one photo: there are no genuine pairs (two photos of one person)"
#: measures that need genuine pairs, skipped (reported as null) on one-photo sets
_GENUINE_MEASURES = (
    "judges.<judge>.unprotected: eer, auc, tar",
    "judges.<judge>.protected_same_key: eer, auc, tar",
    "judges.<judge>.anonymity.psr_others",
    "judges.<judge>.same_key_different_people.genuine_match_rate",
    "operating / cells: unprotected_genuine_match, same_key_genuine_match, shared_key_genuine_match",
)


def evaluate(
    config: EvalConfig, out: Path, *, say: Say | None = None, progress: bool = False
) -> dict[str, Any]:
    """Protect, judge, measure; write the report into ``out`` (an existing empty folder) and return it.

    ``report.json`` is written last, so its presence means the run finished.
    """
    from faceanonymixer.evaluation.judges import load_judges

    started = time.perf_counter()
    note = say or (lambda _: None)
    judges = load_judges(list(config.judges))  # unknown names fail before the long work
    photos_listed = len(list_photos(config))
    note(
        f"protecting {photos_listed} photos (batch {config.batch_size}, jobs {config.jobs}), "
        f"then judging with {', '.join(config.judges)}"
    )
    with _progress_bar(photos_listed, "protect", progress) as advance:
        run = run_protection(config, progress=advance)
    if len({photo.label for photo in run.photos}) < 2:
        raise ValueError("fewer than two identities have an aligned face: nothing to measure")
    note(
        f"judging: {len(run.photos)} photos protected, {len(run.failures)} skipped "
        f"({time.perf_counter() - started:.0f} s)"
    )
    embeddings: dict[str, dict[str, np.ndarray]] = {}
    for judge in judges:
        with _progress_bar(len(run.photos) * (1 + len(run.settings)), judge.name, progress) as advance:
            embeddings[judge.name] = judge_embeddings(run, judge, progress=advance)
    measured = {name: judge_measures(run.labels, rows, seed=config.seed) for name, rows in embeddings.items()}
    baseline: dict[str, JudgeMeasures] = {}
    if NAIVE[0] in run.settings:
        baseline = {
            name: judge_measures(run.labels, rows, seed=config.seed, prefix="naive_")
            for name, rows in embeddings.items()
        }

    skipped: list[dict[str, str]] = []
    note(f"attributes: landmarks, pose, skin tone and classifiers ({time.perf_counter() - started:.0f} s)")
    attributes = _attributes(run, skipped, progress)
    candidates = realism_split(run, config.seed)
    note(f"realism: Inception features ({time.perf_counter() - started:.0f} s)")
    features = _realism_features(run, candidates, skipped, progress, note)
    every = np.ones(len(run.photos), dtype=bool)

    def quality_of(rows: np.ndarray, judge_reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
        quality: dict[str, Any] = {
            "detection": {name: report["detection"]["A"]["rate"] for name, report in judge_reports.items()},
            "detection_note": "share of photos protected under A in which the judge's own detector "
            "finds a face",
        }
        if features is not None:
            quality["realism"] = realism_for(features, candidates, rows, seed=config.seed)
        else:
            quality["realism"] = {"kid": None, "fid": None, "samples": 0, "note": _note(skipped, "realism")}
        if attributes is not None:
            quality["attributes"] = attribute_report(attributes, rows)
        else:
            quality["attributes"] = _no_attributes(_note(skipped, "attributes"))
        return quality

    pooled_thresholds = _operating_thresholds(measured)
    sets, cells = _per_set(config, run, embeddings, attributes, quality_of)
    pooled_quality = quality_of(every, {name: m.report for name, m in measured.items()})
    pooled_quality["fid"] = _legacy_fid(pooled_quality["realism"])
    if not _has_genuine_pairs(run.labels):
        skipped.extend({"measure": measure, "reason": _NO_GENUINE_PAIRS} for measure in _GENUINE_MEASURES)
    if pooled_quality["realism"].get("fid_note"):
        skipped.append({"measure": "quality.realism.fid", "reason": pooled_quality["realism"]["fid_note"]})
    for name in run.set_names:
        if name not in cells_sets(cells):
            skipped.append({"measure": f"cells of {name}", "reason": "no group labels for this set's photos"})

    plots = write_plots(out, run, measured, baseline)
    plots += write_group_figures(out, run, cells, list(config.judges))
    report = {
        "schema": SCHEMA,
        "version": __version__,
        "dataset": _dataset(config, run),
        "profile": config.profile,
        "settings": _settings(config, run),
        "judges": {name: m.report for name, m in measured.items()},
        "operating": {
            name: group_rates(run.labels, _group_rows(rows, every), pooled_thresholds[name])
            for name, rows in embeddings.items()
        },
        "quality": pooled_quality,
        "sets": sets,
        "cells": cells,
        "worst_cell": worst_cells(cells, list(config.judges)),
        "skipped_measures": skipped,
        "cost": _cost(run, config),
        "baselines": {
            "naive_mix": {name: _baseline_view(m.report) for name, m in baseline.items()},
            "unprotected": {name: m.report["unprotected"] for name, m in measured.items()},
        },
        "plots": plots,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_atomic(out / "report.md", render_markdown(report).encode())
    write_atomic(out / "report.json", (json.dumps(report, indent=2, allow_nan=False) + "\n").encode())
    return report


def len_listed(config: EvalConfig) -> int:
    return len(list_photos(config))


@contextmanager
def _progress_bar(total: int, label: str, shown: bool) -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr when ``shown`` and stderr is a terminal; yields what advances it."""
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="img", disable=None if shown else True, leave=False) as bar:
        yield bar.update


# ---- quality measures, with what is skipped and why -------------------------------------------------


def _attributes(run: ProtectionRun, skipped: list[dict[str, str]], progress: bool) -> AttributeData | None:
    from faceanonymixer.utils.errors import ModelFormatError

    try:
        with _progress_bar(len(run.photos) * 3, "attributes", progress) as advance:
            return measure_attributes(run, progress=advance)
    except (ModelFormatError, ModuleNotFoundError, FileNotFoundError) as error:
        skipped.append({"measure": "quality.attributes", "reason": f"{type(error).__name__}: {error}"})
        return None


def _realism_features(
    run: ProtectionRun, candidates: np.ndarray, skipped: list[dict[str, str]], progress: bool, note: Say
) -> dict[str, np.ndarray] | None:
    from faceanonymixer.evaluation.realism import InceptionUnavailableError

    try:
        with _progress_bar(len(run.photos) + 3 * int(candidates.sum()), "inception", progress) as advance:
            return realism_features(run, candidates, progress=advance)
    except InceptionUnavailableError as error:
        note(f"realism skipped: {error}")
        skipped.append({"measure": "quality.realism", "reason": str(error)})
        return None


def _note(skipped: list[dict[str, str]], measure: str) -> str:
    return next((s["reason"] for s in skipped if s["measure"] == f"quality.{measure}"), "")


def _no_attributes(reason: str) -> dict[str, Any]:
    keys = (
        "gender_agreement",
        "age_group_agreement",
        "age_group_within_one",
        "ita_abs_diff_median",
        "pose_error_median_deg",
    )
    return {**dict.fromkeys(keys), "classifier_accuracy": None, "note": reason}


def _legacy_fid(realism: dict[str, Any]) -> dict[str, Any]:
    """The schema-1 ``quality.fid`` key, now read from ``quality.realism``."""
    value = realism["fid"]["protected"] if realism.get("fid") else None
    note = (
        realism.get("fid_note")
        or realism.get("note")
        or "protected (A) faces against other people's real crops"
    )
    return {"value": value, "samples": realism.get("samples", 0), "note": f"{note}; see quality.realism"}


# ---- groups: sets and cells ------------------------------------------------------------------------


def _group_rows(per_setting: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {setting: per_setting[setting][rows] for setting in _GROUP_SETTINGS if setting in per_setting}


def _operating_thresholds(measured: dict[str, JudgeMeasures]) -> dict[str, float]:
    """Per judge: its published threshold (dlib 0.6), else the one at FMR 1e-2 of the group."""
    from faceanonymixer.evaluation.judges import published_threshold

    thresholds: dict[str, float] = {}
    for name, measures in measured.items():
        published = published_threshold(name)
        fmr_threshold = measures.report["unprotected"]["thresholds"]["1e-2"]
        thresholds[name] = published if published is not None else float(fmr_threshold)
    return thresholds


def _has_genuine_pairs(labels: Sequence[str]) -> bool:
    return len(set(labels)) < len(labels)


def cells_sets(cells: dict[str, Any]) -> set[str]:
    return {name.split("/", 1)[0] for name in cells}


def _per_set(
    config: EvalConfig,
    run: ProtectionRun,
    embeddings: dict[str, dict[str, np.ndarray]],
    attributes: AttributeData | None,
    quality_of: Callable[[np.ndarray, dict[str, dict[str, Any]]], dict[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``sets`` and ``cells`` of the report: every set measured on its own photos."""
    set_names = np.array([photo.set_name for photo in run.photos], dtype=object)
    labels = np.asarray(run.labels, dtype=object)
    sets: dict[str, Any] = {}
    cells: dict[str, Any] = {}
    for name in run.set_names:
        rows = set_names == name
        members = [str(label) for label in labels[rows]]
        entry: dict[str, Any] = {
            "dataset": {
                "identities": len(set(members)),
                "photos": int(rows.sum()),
                "skipped": sum(failure.set_name == name for failure in run.failures),
                "one_photo_per_identity": not _has_genuine_pairs(members),
            },
            "skipped_measures": [],
        }
        chosen = {judge: {s: values[rows] for s, values in per.items()} for judge, per in embeddings.items()}
        try:
            measured = {
                judge: judge_measures(members, per, seed=config.seed) for judge, per in chosen.items()
            }
        except ValueError as error:  # one identity: no impostor pairs to set thresholds on
            entry["skipped_measures"].append({"measure": "judges, operating, cells", "reason": str(error)})
            entry["quality"] = quality_of(rows, {})
            sets[name] = entry
            continue
        thresholds = _operating_thresholds(measured)
        entry["judges"] = {judge: m.report for judge, m in measured.items()}
        entry["operating"] = {
            judge: group_rates(
                members, _group_rows(per, np.ones(len(members), dtype=bool)), thresholds[judge]
            )
            for judge, per in chosen.items()
        }
        entry["quality"] = quality_of(rows, entry["judges"])
        if entry["dataset"]["one_photo_per_identity"]:
            entry["skipped_measures"] += [
                {"measure": m, "reason": _NO_GENUINE_PAIRS} for m in _GENUINE_MEASURES
            ]
        if entry["quality"]["realism"].get("fid_note"):
            entry["skipped_measures"].append(
                {"measure": "quality.realism.fid", "reason": entry["quality"]["realism"]["fid_note"]}
            )
        sets[name] = entry
        photo_cells = [
            photo.labels.cell if photo.labels is not None and photo.set_name == name else None
            for photo in run.photos
        ]
        cells.update(
            cell_table(
                photo_cells,
                run.labels,
                {
                    judge: _group_rows(per, np.ones(len(run.photos), dtype=bool))
                    for judge, per in embeddings.items()
                },
                thresholds,
                (lambda mask: attribute_report(attributes, mask)) if attributes is not None else None,
                prefix=f"{name}/",
            )
        )
    return sets, cells


# ---- report.json pieces -----------------------------------------------------------------------------


def _dataset(config: EvalConfig, run: ProtectionRun) -> dict[str, Any]:
    paths = [str(dataset) for dataset in config.datasets]
    return {
        "path": ", ".join(paths),
        "paths": paths,
        "sets": [Path(path).name for path in paths],
        "identities": len(set(run.labels)),
        "photos": len(run.photos),
        "skipped": len(run.failures),
        "skipped_photos": [failure.as_dict() for failure in run.failures],
        "max_identities": config.max_identities,
        "max_images": config.max_images,
        "per_cell": config.per_cell,
    }


def _settings(config: EvalConfig, run: ProtectionRun) -> dict[str, Any]:
    from faceanonymixer.engine.profiles import get_profile, profile_revision, with_optimisation_overrides

    profile = with_optimisation_overrides(get_profile(config.profile), config.optimisation)
    optimisation = profile.optimisation
    return {
        # the revision of what ran (the profile's with the overrides): a report read later says
        # which faces it measured even after the profile's default has moved on
        "profile_revision": profile_revision(profile),
        "seed": config.seed,
        "steps": optimisation.steps,
        "inversion_steps": optimisation.inversion_steps,
        "overrides": dict(config.optimisation),
        "batch_size": config.batch_size,
        "jobs": config.jobs,
        "torch_threads_per_job": run.threads_per_job,
        "fmrs": [fmr_key(fmr) for fmr in FMRS],
        "judges": list(config.judges),
    }


def _baseline_view(report: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "protected_same_key",
        "anonymity",
        "cross_key",
        "unlinkability",
        "same_key_different_people",
        "irreversibility",
        "detection",
    )
    return {key: report[key] for key in keys}


def _cost(run: ProtectionRun, config: EvalConfig) -> dict[str, Any]:
    def summary(settings: Sequence[str]) -> dict[str, Any]:
        values = np.array([p.seconds[s] for p in run.photos for s in settings if s in p.seconds])
        if not len(values):
            return {"n": 0, "p50": None, "p95": None, "mean": None}
        return {
            "n": len(values),
            "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)),
            "mean": float(values.mean()),
        }

    return {
        "seconds_per_image": summary(("A", "B", "S")),
        "naive_mix_seconds_per_image": summary(NAIVE),
        "protection_wall_seconds": round(run.seconds, 1),
        "note": f"per photo: its share of a batch of {config.batch_size} (align, invert, optimise, "
        f"encode), {run.threads_per_job} torch threads per job",
    }


# ---- plots --------------------------------------------------------------------------------------


def write_plots(
    out: Path, run: ProtectionRun, measured: dict[str, JudgeMeasures], baseline: dict[str, JudgeMeasures]
) -> list[str]:
    from faceanonymixer.evaluation import plots

    written: list[Path] = []
    for name, m in measured.items():
        s = m.scores
        curves = {
            "unprotected": (s["unprotected genuine"].distances, s["unprotected impostor"].distances),
            "protected, same key": (s["same key genuine"].distances, s["own keys impostor"].distances),
            "cross-key": (s["cross-key genuine"].distances, s["cross-key impostor"].distances),
        }
        if name in baseline:
            b = baseline[name].scores
            curves["naive mix, same key"] = (
                b["same key genuine"].distances,
                b["own keys impostor"].distances,
            )
        written.append(plots.det_plot(curves, out / f"det_{name}.png", f"DET, {name} judge"))
        groups = {
            key: s[key].distances
            for key in (
                "unprotected genuine",
                "unprotected impostor",
                "same key genuine",
                "own keys impostor",
                "cross-key genuine",
                "protected vs original",
            )
        }
        lines = {f"FMR {key}": info.threshold for key, info in m.thresholds.items()}
        written.append(
            plots.score_histograms(groups, out / f"scores_{name}.png", f"Distances, {name} judge", lines)
        )
        if m.unlinkability is not None:
            title = f"Unlinkability, {name} judge"
            written.append(
                plots.unlinkability_plot(m.unlinkability, out / f"unlinkability_{name}.png", title)
            )
    columns = ["original", *(setting for setting in ("A", "B", "S", "naive_A") if setting in run.settings)]
    rows = [
        [photo.original_face, *(photo.faces.get(c) for c in columns[1:])] for photo in _examples(run.photos)
    ]
    titles = ["original", *(f"key {c}" if len(c) == 1 else c.replace("_", " ") for c in columns[1:])]
    written.append(plots.image_grid(rows, titles, out / "examples.png"))
    return [path.name for path in written]


#: the per-group bars: rate name in the plot -> key in a cell's judge entry
_PLOTTED_RATES = {
    "unprotected: different people apart": "unprotected_impostor_nonmatch",
    "shared key: different people apart": "shared_key_impostor_nonmatch",
    "own keys: different people apart": "own_key_impostor_nonmatch",
    "anonymity": "anonymity",
}


def cell_panels(cells: dict[str, Any], judges: list[str]) -> dict[str, dict[str, dict[str, float | None]]]:
    """The panels of ``cells.png`` from report.json's ``cells``: one per judge, and the attributes kept."""
    panels: dict[str, dict[str, dict[str, float | None]]] = {}
    for judge in judges:
        threshold = next(iter(cells.values()))[judge]["threshold"]
        panels[f"{judge} (threshold {threshold:.3g})"] = {
            f"{name} ({cell['count']})": {
                label: cell[judge].get(key) for label, key in _PLOTTED_RATES.items()
            }
            for name, cell in cells.items()
        }
    if any(cell.get("attributes") for cell in cells.values()):
        panels["attributes kept (own key)"] = {
            f"{name} ({cell['count']})": {
                "gender agreement": (cell.get("attributes") or {}).get("gender_agreement"),
                "age group within one": (cell.get("attributes") or {}).get("age_group_within_one"),
            }
            for name, cell in cells.items()
        }
    return panels


def write_group_figures(out: Path, run: ProtectionRun, cells: dict[str, Any], judges: list[str]) -> list[str]:
    """``cells.png`` (rates per cell and judge, with the attributes kept) when there are cells, and
    ``grid_cells.png``: original | own key | shared key for a few faces of every cell (or set).
    The grid shows the sets' photos: it stays in the output folder, never in the repository."""
    from faceanonymixer.evaluation import plots

    written: list[Path] = []
    if cells:
        written.append(
            plots.cell_rates_plot(cell_panels(cells, judges), out / "cells.png", "Rates per group")
        )
    # one row per cell (or per set without cells): its first GRID_PER_CELL photos side by side
    groups: dict[str, list[np.ndarray | None]] = {}
    for photo in run.photos:
        group = f"{photo.set_name}/{photo.labels.cell}" if photo.labels is not None else photo.set_name
        row = groups.setdefault(group, [])
        if len(row) < 3 * GRID_PER_CELL:
            row += [photo.original_face, photo.faces.get("A"), photo.faces.get("S")]
    titles = sorted(groups)
    written.append(
        plots.image_grid(
            [groups[title] for title in titles],
            ["original", "own key", "shared key"] * GRID_PER_CELL,
            out / "grid_cells.png",
            row_titles=titles,
        )
    )
    return [path.name for path in written]


def _examples(photos: Sequence[Any]) -> list[Any]:
    """Up to GRID_PHOTOS photos, two per identity where possible, so the grid shows a pair."""
    chosen: list[Any] = []
    per_identity: dict[str, int] = {}
    for photo in photos:
        if per_identity.get(photo.label, 0) < 2:
            per_identity[photo.label] = per_identity.get(photo.label, 0) + 1
            chosen.append(photo)
        if len(chosen) == GRID_PHOTOS:
            break
    return chosen
