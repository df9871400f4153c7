"""Evaluation figures written as PNG files.

Figures are built with ``matplotlib.figure.Figure`` on a ``FigureCanvasAgg``, never with
``matplotlib.pyplot``: no global figure manager, no GUI backend, so the functions run headless
and from several threads at once (each call owns its figure). Every function writes one PNG
atomically (``utils.files.write_atomic_with``: a temporary file in the same folder, then a
rename) and returns its path.

DET plots put both error rates on the normal-deviate scale, x -> Phi^-1(x) with Phi the standard
normal CDF, as in NIST's DET curves (Martin et al., Eurospeech 1997): two normal score
distributions then give a straight line. Rates are clipped to [1e-4, 1 - 1e-4] to stay finite.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import IO, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from faceanonymixer.evaluation.metrics import Unlinkability, det_curve_points, eer
from faceanonymixer.utils.files import write_atomic_with

__all__ = ["cell_rates_plot", "det_plot", "image_grid", "score_histograms", "unlinkability_plot"]

#: smallest and largest rate drawn on the probit scale (Phi^-1(0) would be -inf)
RATE_CLIP = 1e-4
#: DET tick rates, most wanted first; a tick too close to one already placed is left out
_DET_TICKS = (
    0.01,
    0.001,
    1e-4,
    0.05,
    0.2,
    0.4,
    0.6,
    0.8,
    0.95,
    0.99,
    0.999,
    0.9999,
    0.1,
    0.02,
    0.005,
    0.002,
    0.9,
    0.98,
)
#: closest two DET ticks may lie, as a share of the axis span (in normal deviates)
_DET_TICK_GAP = 1 / 14
_NORMAL = NormalDist()
_HISTOGRAM_BINS = 50

PathLike = str | os.PathLike[str]


def _write_png(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it onto ``path``; the folder
    is made first, as callers name figures inside report folders that may not exist yet."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic_with(target, write)


def _new_figure(width: float = 7.0, height: float = 5.0) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself to the figure; savefig then renders with Agg
    return figure


def _save_figure(figure: Figure, path: PathLike) -> Path:
    return _write_png(path, lambda handle: figure.savefig(handle, format="png"))


def _finite_scores(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains non-finite scores (nan or inf)")
    return array


def _probit(rates: np.ndarray) -> np.ndarray:
    clipped = np.clip(rates, RATE_CLIP, 1.0 - RATE_CLIP)
    return np.array([_NORMAL.inv_cdf(float(rate)) for rate in clipped], dtype=np.float64)


def _percent(rate: float) -> str:
    return f"{rate * 100:g}%"


def _det_ticks(low: float, high: float) -> list[float]:
    """Tick rates in [low, high], sorted, no two closer than _DET_TICK_GAP of the span."""
    span = _NORMAL.inv_cdf(high) - _NORMAL.inv_cdf(low)
    chosen: list[float] = []
    for rate in _DET_TICKS:
        if not low <= rate <= high:
            continue
        position = _NORMAL.inv_cdf(rate)
        if all(abs(position - _NORMAL.inv_cdf(other)) >= _DET_TICK_GAP * span for other in chosen):
            chosen.append(rate)
    return sorted(chosen)


def det_plot(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: PathLike, title: str = "DET curves"
) -> Path:
    """DET curves (FNMR against FMR, probit axes) of named (genuine, impostor) distance sets.

    A curve lacking genuine or impostor distances appears in the legend only, marked so; one whose
    pairs are all apart (every genuine distance below every impostor one, EER 0) is a marker near
    the lower-left corner, since its curve would lie on the plot's edges.
    """
    figure = _new_figure(6.5, 6.0)
    axes = figure.add_subplot()
    drawn: list[np.ndarray] = []
    #: curves whose pairs are all apart (EER 0): their staircase would run along the plot's edges,
    #: where no reader sees it, so each is a marker in the lower-left corner instead
    separated: list[str] = []
    for name, (genuine, impostor) in curves.items():
        g = _finite_scores(genuine, f"{name} genuine")
        i = _finite_scores(impostor, f"{name} impostor")
        if g.size == 0 or i.size == 0:
            axes.plot([], [], label=f"{name} (no {'genuine' if g.size == 0 else 'impostor'} pairs)")
            continue
        if g.max() < i.min():
            separated.append(name)
            continue
        fmr, fnmr = det_curve_points(g, i)
        # FMR up, FNMR down: a monotone staircase even where several points share an FMR
        order = np.lexsort((-fnmr, fmr))
        axes.plot(_probit(fmr[order]), _probit(fnmr[order]), label=f"{name} (EER {eer(g, i):.2%})")
        drawn.append(np.clip(np.concatenate([fmr, fnmr]), RATE_CLIP, 1.0 - RATE_CLIP))

    # the drawn range: the ticks just outside the data, at least 0.1% .. 40%
    low, high = 1e-3, 0.4
    if drawn:
        rates = np.concatenate(drawn)
        low = min(low, max((t for t in _DET_TICKS if t <= rates.min()), default=RATE_CLIP))
        high = max(high, min((t for t in _DET_TICKS if t >= rates.max()), default=1.0 - RATE_CLIP))
    ticks = _det_ticks(low, high)
    positions = [_NORMAL.inv_cdf(t) for t in ticks]
    labels = [_percent(t) for t in ticks]
    limits = (_NORMAL.inv_cdf(low), _NORMAL.inv_cdf(high))
    for offset, name in enumerate(separated):
        corner = limits[0] + 0.06 * (offset + 1) * (limits[1] - limits[0])
        axes.plot([corner], [corner], marker="o", linestyle="none", label=f"{name} (EER 0: all pairs apart)")
    axes.plot(limits, limits, color="0.6", linestyle=":", linewidth=1, label="FMR = FNMR")
    axes.set_xlim(*limits)
    axes.set_ylim(*limits)
    axes.set_xticks(positions, labels)
    axes.set_yticks(positions, labels)
    axes.set_aspect("equal")
    axes.grid(True, color="0.85")
    axes.set_xlabel("false match rate (FMR)")
    axes.set_ylabel("false non-match rate (FNMR)")
    axes.set_title(title)
    axes.legend(loc="upper right", fontsize="small")
    return _save_figure(figure, path)


def score_histograms(
    groups: Mapping[str, np.ndarray],
    path: PathLike,
    title: str = "Distances",
    thresholds: Mapping[str, float] | None = None,
    *,
    xlabel: str = "Euclidean distance",
) -> Path:
    """Overlaid density histograms of named distance sets on common bins.

    ``thresholds`` maps a label (e.g. "FMR 1e-2") to a distance drawn as a dashed vertical line;
    an infinite threshold is listed in the legend only. Empty groups are listed as n=0.
    """
    arrays = {name: _finite_scores(values, name) for name, values in groups.items()}
    figure = _new_figure()
    axes = figure.add_subplot()
    non_empty = [values for values in arrays.values() if values.size]
    # common edges so the bars of different groups compare bin for bin
    all_scores = np.concatenate(non_empty) if non_empty else np.zeros(1)
    edges = np.histogram_bin_edges(all_scores, bins=_HISTOGRAM_BINS).tolist()
    if not non_empty:
        axes.text(0.5, 0.5, "no scores", transform=axes.transAxes, ha="center", va="center")
    for index, (name, values) in enumerate(arrays.items()):
        colour = f"C{index % 10}"
        label = f"{name} (n={values.size})"
        if values.size == 0:
            axes.plot([], [], color=colour, label=label)  # legend entry only
            continue
        axes.hist(values, bins=edges, density=True, histtype="stepfilled", alpha=0.3, color=colour)
        axes.hist(values, bins=edges, density=True, histtype="step", color=colour, label=label)
    for index, (label, threshold) in enumerate((thresholds or {}).items(), start=len(arrays)):
        colour = f"C{index % 10}"
        if math.isfinite(threshold):
            axes.axvline(threshold, color=colour, linestyle="--", label=f"{label} ({threshold:.3g})")
        else:
            axes.plot([], [], color=colour, linestyle="--", label=f"{label} ({threshold})")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("density")
    axes.set_title(title)
    if arrays or thresholds:
        axes.legend(fontsize="small")
    return _save_figure(figure, path)


def unlinkability_plot(result: Unlinkability, path: PathLike, title: str = "Unlinkability") -> Path:
    """Mated and non-mated score distributions with the local D<->(s) on a second axis.

    The layout of Gomez-Barrero et al. (IEEE TIFS 2018): per-bin probabilities on the left
    axis, D<->(s) in [0, 1] on the right, D<->sys in the title.
    """
    figure = _new_figure()
    axes = figure.add_subplot()
    edges = result.bin_edges
    axes.stairs(result.mated_density, edges, fill=True, alpha=0.35, color="C2", label="mated")
    axes.stairs(result.non_mated_density, edges, fill=True, alpha=0.35, color="C3", label="non-mated")
    axes.set_xlabel("score")
    axes.set_ylabel("probability per bin")
    local_axes = axes.twinx()
    local_axes.stairs(result.local, edges, color="k", linewidth=1.5, label="D↔(s)")
    local_axes.set_ylim(0.0, 1.05)
    local_axes.set_ylabel("local linkability D↔(s)")
    handles, labels = axes.get_legend_handles_labels()
    more_handles, more_labels = local_axes.get_legend_handles_labels()
    local_axes.legend(
        handles + more_handles,
        [*labels, *more_labels],
        title=f"D↔sys = {result.d_sys:.3f}",
        loc="upper right",
        fontsize="small",
    )
    axes.set_title(f"{title}\nD↔sys = {result.d_sys:.3f} (omega = {result.omega:g})")
    return _save_figure(figure, path)


_TITLE_HEIGHT = 18
_ROW_TITLE_WIDTH = 120
_BLANK_GREY = (200, 200, 200)


def _fit(image: np.ndarray, cell: int) -> Image.Image:
    """A uint8 HxWx3 array scaled to fit a cell x cell square, aspect ratio kept."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ValueError(f"grid cells need uint8 HxWx3 RGB images, got {array.dtype} {array.shape}")
    picture = Image.fromarray(np.ascontiguousarray(array))
    scale = cell / max(picture.width, picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.LANCZOS)


def _shorten(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text``, cut and ended with "..." until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    # ASCII dots: the default bitmap font may lack an ellipsis glyph
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def image_grid(
    rows: Sequence[Sequence[np.ndarray | None]],
    column_titles: Sequence[str],
    path: PathLike,
    cell: int = 128,
    *,
    row_titles: Sequence[str] | None = None,
) -> Path:
    """A grid of uint8 RGB images under a row of column titles, one cell x cell square each.

    Images are scaled to fit and centred on white; None is a grey cell crossed out. Rows shorter
    than the widest row (or than the titles) are padded with blank cells. ``row_titles`` (one per
    row) are written in a margin on the left.
    """
    if cell < 16:
        raise ValueError(f"cell must be at least 16 pixels, got {cell}")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"{len(row_titles)} row titles for {len(rows)} rows")
    columns = max([len(column_titles), *(len(row) for row in rows)])
    if columns == 0:
        raise ValueError("an image grid needs at least one column")
    gap = 2
    margin = _ROW_TITLE_WIDTH if row_titles is not None else 0
    width = margin + columns * cell + (columns + 1) * gap
    height = _TITLE_HEIGHT + len(rows) * (cell + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for column, text in enumerate(column_titles):
        x = margin + gap + column * (cell + gap)
        draw.text((x + 2, 3), _shorten(draw, text, font, cell - 4), fill="black", font=font)
    for row_index, row in enumerate(rows):
        top = _TITLE_HEIGHT + gap + row_index * (cell + gap)
        if row_titles is not None:
            title = _shorten(draw, row_titles[row_index], font, margin - 6)
            draw.text((4, top + cell // 2 - 6), title, fill="black", font=font)
        for column in range(columns):
            left = margin + gap + column * (cell + gap)
            image = row[column] if column < len(row) else None
            if image is None:
                box = (left, top, left + cell - 1, top + cell - 1)
                draw.rectangle(box, fill=_BLANK_GREY)
                draw.line(box, fill="white", width=2)
                draw.line((box[0], box[3], box[2], box[1]), fill="white", width=2)
                continue
            picture = _fit(image, cell)
            canvas.paste(picture, (left + (cell - picture.width) // 2, top + (cell - picture.height) // 2))
    return _write_png(path, lambda handle: canvas.save(handle, format="PNG"))


def cell_rates_plot(
    panels: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    path: PathLike,
    title: str = "Rates per group",
) -> Path:
    """One panel per entry of ``panels`` (e.g. a judge): horizontal bars of each named rate in
    [0, 1] for each group (cell), groups top to bottom. A missing rate (None) draws no bar.

    ``panels`` maps panel title -> group -> rate name -> rate.
    """
    if not panels:
        raise ValueError("a per-group plot needs at least one panel")
    groups = list(dict.fromkeys(group for panel in panels.values() for group in panel))
    measures = list(
        dict.fromkeys(name for panel in panels.values() for rates in panel.values() for name in rates)
    )
    from matplotlib.patches import Patch

    most = max(len({name for rates in panel.values() for name in rates}) for panel in panels.values())
    figure = _new_figure(4.2 * len(panels) + 1.5, 2.0 + 0.22 * max(1, len(groups)) * max(1, most))
    axes_list = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    positions = np.arange(len(groups))[::-1].astype(np.float64)
    for axes, (panel_title, panel) in zip(axes_list, panels.items(), strict=True):
        # each panel spreads its own rates over the row; a rate keeps one colour in every panel
        own = [name for name in measures if any(name in rates for rates in panel.values())]
        height = 0.8 / max(1, len(own))
        for index, measure in enumerate(own):
            values = [panel.get(group, {}).get(measure) for group in groups]
            shown = [(p, v) for p, v in zip(positions, values, strict=True) if v is not None]
            offset = 0.4 - height * (index + 0.5)
            axes.barh(
                [p + offset for p, _ in shown],
                [v for _, v in shown],
                height=height,
                color=f"C{measures.index(measure) % 10}",
            )
        axes.set_xlim(0.0, 1.0)
        axes.set_title(panel_title)
        axes.grid(True, axis="x", color="0.85")
        axes.set_yticks(positions, groups)
    handles = [Patch(color=f"C{index % 10}", label=name) for index, name in enumerate(measures)]
    figure.legend(
        handles=handles, loc="outside lower center", ncols=min(3, len(handles) or 1), fontsize="small"
    )
    figure.suptitle(title)
    return _save_figure(figure, path)
