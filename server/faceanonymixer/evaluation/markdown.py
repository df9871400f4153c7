"""``report.md``: the report's tables in Markdown, rendered from ``report.json`` alone."""

from __future__ import annotations

from typing import Any


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
    lines += (
        _summary(report) + _sets(report) + _realism(report) + _attributes(report) + _cells_section(report)
    )
    lines += _skipped(report)
    for name, judge in report["judges"].items():
        details = judge["unprotected"]["threshold_details"]
        support = "" if details["1e-3"]["supported"] else " (too few impostor pairs to estimate FMR 1e-3)"
        lines += [
            f"## Judge: {name} (all sets pooled)",
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
    cost = report["cost"]["seconds_per_image"]
    lines += [
        "## Cost",
        "",
        f"- seconds per protected image: p50 {_fmt(cost['p50'])}, p95 {_fmt(cost['p95'])} "
        f"({report['cost']['note']})",
        "",
        "![examples](examples.png)",
        "",
    ]
    return "\n".join(lines)


# ---- the sections of issue 37: sets, realism, attributes, cells, worst cell --------------------------

_IMPOSTOR_COLUMNS = (
    ("unprotected_impostor_nonmatch", "unprot."),
    ("shared_key_impostor_nonmatch", "shared key"),
    ("own_key_impostor_nonmatch", "own keys"),
)


def _judge_names(report: dict[str, Any]) -> list[str]:
    return list(report["settings"]["judges"])


def _summary(report: dict[str, Any]) -> list[str]:
    worst = report.get("worst_cell") or {}
    if not worst:
        return []
    lines = ["## The worst group", ""]
    for judge in _judge_names(report):
        for measure, what in (
            ("shared_key_impostor_nonmatch", "different people apart under one shared key"),
            ("own_key_impostor_nonmatch", "different people apart under their own keys"),
            ("anonymity", "protected faces that do not match the person's photos"),
        ):
            entry = worst.get(f"{judge}.{measure}")
            if entry is None:
                continue
            beside = f" (unprotected {_fmt(entry['unprotected'])})" if "unprotected" in entry else ""
            lines.append(
                f"- {judge}, {what}: worst `{entry['cell']}` ({entry['count']} photos) at "
                f"{_fmt(entry['value'])}{beside}"
            )
    for measure, what in (
        ("attributes.gender_agreement", "apparent gender kept"),
        ("attributes.age_group_within_one", "age group kept within one group"),
        ("attributes.ita_abs_diff_median", "median |delta ITA| (degrees)"),
        ("attributes.pose_error_median_deg", "median pose error (degrees)"),
    ):
        entry = worst.get(measure)
        if entry is not None:
            lines.append(
                f"- {what}: worst `{entry['cell']}` ({entry['count']} photos) at {_fmt(entry['value'])}"
            )
    return [*lines, ""]


def _operating_header(report: dict[str, Any]) -> tuple[str, str]:
    judges = _judge_names(report)
    header = " | ".join(
        f"{judge}: {label}"
        for judge in judges
        for _, label in (*_IMPOSTOR_COLUMNS, ("anonymity", "anonymity"))
    )
    rule = "|".join("---" for _ in range(len(judges) * 4))
    return header, rule


def _operating_cells(operating: dict[str, Any] | None, judges: list[str]) -> str:
    values = []
    for judge in judges:
        rates = (operating or {}).get(judge) or {}
        values += [_fmt(rates.get(key)) for key, _ in (*_IMPOSTOR_COLUMNS, ("anonymity", ""))]
    return " | ".join(values)


def _sets(report: dict[str, Any]) -> list[str]:
    judges = _judge_names(report)
    header, rule = _operating_header(report)
    lines = [
        "## Sets",
        "",
        "Rates at each judge's operating threshold (its published one, else FMR 1e-2 of the set's "
        "unprotected impostor pairs): pairs of different people that do *not* match, unprotected, "
        "under one shared key and under their own keys; anonymity = (protected, own photo) pairs "
        "that do not match.",
        "",
        f"| set | identities | photos | {header} |",
        f"|---|---|---|{rule}|",
    ]
    rows = [
        ("all sets", report["dataset"]["identities"], report["dataset"]["photos"], report.get("operating"))
    ]
    for name, entry in (report.get("sets") or {}).items():
        one = " (one photo each)" if entry["dataset"]["one_photo_per_identity"] else ""
        rows.append(
            (
                f"{name}{one}",
                entry["dataset"]["identities"],
                entry["dataset"]["photos"],
                entry.get("operating"),
            )
        )
    for name, identities, photos, operating in rows:
        lines.append(f"| {name} | {identities} | {photos} | {_operating_cells(operating, judges)} |")
    return [*lines, ""]


def _kid(realism: dict[str, Any], kind: str) -> str:
    kid = realism.get("kid")
    if not kid or kid.get(kind) is None:
        return "-"
    se = kid.get(f"{kind}_se")
    return f"{kid[kind] * 1000:.1f} ± {se * 1000:.1f}" if se is not None else f"{kid[kind] * 1000:.1f}"


def _groups(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    groups = [("all sets", report["quality"])]
    groups += [(name, entry["quality"]) for name, entry in (report.get("sets") or {}).items()]
    return groups


def _realism(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Realism",
        "",
        "KID x 1000 (± standard error over disjoint blocks) of aligned crops against real crops of "
        "*other* people of the same set (identities split in halves): real against real is the "
        "floor, the generator's reconstruction (no key, no optimisation) the ceiling it allows.",
        "",
        "| group | faces / reference | real (floor) | reconstruction (ceiling) | own key | shared key "
        "| FID |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, quality in _groups(report):
        realism = quality["realism"]
        fid = realism.get("fid")
        fid_text = (
            " / ".join(f"{key} {_fmt(value)}" for key, value in fid.items())
            if fid
            else realism.get("fid_note") or realism.get("note") or "-"
        )
        lines.append(
            f"| {name} | {realism.get('samples', 0)} / {realism.get('reference_samples', 0)} | "
            f"{_kid(realism, 'real')} | {_kid(realism, 'reconstruction')} | {_kid(realism, 'protected')} | "
            f"{_kid(realism, 'protected_shared')} | {fid_text} |"
        )
    return [*lines, ""]


def _attribute_cells(attributes: dict[str, Any]) -> str:
    return " | ".join(
        _fmt(attributes.get(key))
        for key in (
            "gender_agreement",
            "age_group_agreement",
            "age_group_within_one",
            "ita_abs_diff_median",
            "pose_error_median_deg",
        )
    )


def _attributes(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Attributes kept (own key A)",
        "",
        "Agreement of the classifiers' calls on the protected face with their calls on the photo; "
        "|delta ITA| (skin tone) and the pose error in degrees. The classifiers' own accuracy on the "
        "unprotected photos (against the labels, where a set has them) is their ceiling.",
        "",
        "| group | gender | age group | age within one | median abs ITA diff | median pose error "
        "| classifier ceiling: gender / age group |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, quality in _groups(report):
        attributes = quality["attributes"]
        ceiling = attributes.get("classifier_accuracy") or {}
        lines.append(
            f"| {name} | {_attribute_cells(attributes)} | "
            f"{_fmt(ceiling.get('gender'))} / {_fmt(ceiling.get('age_group'))} |"
        )
    shared = report["quality"]["attributes"].get("shared_key")
    if shared:
        lines += [
            "",
            f"Under the shared key S (all sets): {_attribute_cells(shared).replace(' | ', ' / ')} "
            "(same columns).",
        ]
    return [*lines, ""]


def _cells_section(report: dict[str, Any]) -> list[str]:
    cells = report.get("cells") or {}
    if not cells:
        return []
    judges = _judge_names(report)
    header, rule = _operating_header(report)
    lines = [
        "## Per group",
        "",
        "Pairs of different people *within* the group (where protection can make people alike), "
        "with the unprotected rate of the same pairs beside the protected ones; rates at each "
        "judge's operating threshold for the group's set.",
        "",
        f"| group | photos | {header} | detection | gender | age within one | abs ITA diff | pose error |",
        f"|---|---|{rule}|---|---|---|---|---|",
    ]
    for name, cell in cells.items():
        kept = cell.get("attributes") or {}
        detection = " / ".join(_fmt(cell["detection"].get(judge)) for judge in judges)
        attributes = " | ".join(
            _fmt(kept.get(key))
            for key in (
                "gender_agreement",
                "age_group_within_one",
                "ita_abs_diff_median",
                "pose_error_median_deg",
            )
        )
        lines.append(
            f"| {name} | {cell['count']} | {_operating_cells(cell, judges)} | {detection} | {attributes} |"
        )
    return [*lines, "", "![rates per group](cells.png)", "", "![faces per group](grid_cells.png)", ""]


def _skipped(report: dict[str, Any]) -> list[str]:
    # one line per (measure, reason), naming every group it holds for (a single set repeats "all sets")
    groups: dict[tuple[str, str], list[str]] = {}
    for entry in report.get("skipped_measures") or []:
        groups.setdefault((entry["measure"], entry["reason"]), []).append("all sets")
    for name, entry in (report.get("sets") or {}).items():
        for item in entry.get("skipped_measures") or []:
            groups.setdefault((item["measure"], item["reason"]), []).append(name)
    if not groups:
        return []
    lines = ["## Not measured", ""]
    lines += [f"- {', '.join(where)}: `{measure}`: {reason}" for (measure, reason), where in groups.items()]
    return [*lines, ""]
