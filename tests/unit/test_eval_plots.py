"""Evaluation figures: valid PNGs, written atomically, without pyplot."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceanonymixer.evaluation.metrics import fmr_thresholds, unlinkability
from faceanonymixer.evaluation.plots import det_plot, image_grid, score_histograms, unlinkability_plot

RNG = np.random.default_rng(7)
GENUINE = RNG.normal(0.45, 0.1, 300)
IMPOSTOR = RNG.normal(0.9, 0.1, 2000)


def _png(path: Path, *, min_size: tuple[int, int], max_size: tuple[int, int]) -> Image.Image:
    """Open ``path`` as a PNG of a size in the range, and check no temporary file is left."""
    assert path.is_file()
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert min_size[0] <= image.width <= max_size[0]
        assert min_size[1] <= image.height <= max_size[1]
        assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == []
        return image.copy()


def test_det_plot(tmp_path: Path) -> None:
    target = tmp_path / "figures" / "det.png"  # a missing folder is created
    result = det_plot(
        {
            "original": (GENUINE, IMPOSTOR),
            "protected": (GENUINE + 0.3, IMPOSTOR),
            "perfect": (np.array([0.1, 0.2]), np.array([0.8, 0.9])),
            "nothing": (np.array([]), IMPOSTOR),
        },
        target,
        "DET",
    )
    assert result == target
    _png(target, min_size=(400, 400), max_size=(1200, 1200))


def test_a_curve_with_every_pair_apart_is_drawn_where_it_can_be_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from faceanonymixer.evaluation import plots

    saved: list[object] = []
    monkeypatch.setattr(plots, "_save_figure", lambda figure, path: saved.append(figure) or Path(path))
    det_plot({"overlap": (GENUINE, IMPOSTOR), "apart": (GENUINE, IMPOSTOR + 1.0)}, tmp_path / "d.png")
    (axes,) = saved[0].axes  # type: ignore[attr-defined]
    lines = {line.get_label(): line for line in axes.get_lines()}
    marker = lines["apart (EER 0: all pairs apart)"]
    low, high = axes.get_xlim()
    x, y = marker.get_xdata()[0], marker.get_ydata()[0]
    assert low < x < high and low < y < high  # inside the axes, not on their edges
    assert any(label.startswith("overlap (EER") for label in lines)


def test_det_plot_without_curves(tmp_path: Path) -> None:
    _png(det_plot({}, tmp_path / "det.png", "empty"), min_size=(400, 400), max_size=(1200, 1200))


def test_det_plot_rejects_non_finite(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        det_plot({"bad": (np.array([math.nan]), IMPOSTOR)}, tmp_path / "det.png", "bad")
    assert list(tmp_path.iterdir()) == []


def test_score_histograms_with_thresholds_and_an_empty_group(tmp_path: Path) -> None:
    thresholds = {f"FMR {key}": info.threshold for key, info in fmr_thresholds(IMPOSTOR).items()}
    thresholds["dlib"] = 0.6
    thresholds["everything"] = math.inf
    target = score_histograms(
        {
            "genuine": GENUINE,
            "impostor": IMPOSTOR,
            "cross-key": np.array([]),
            "original vs protected": RNG.normal(1.1, 0.05, 50),
        },
        tmp_path / "hist.png",
        "distances",
        thresholds,
    )
    _png(target, min_size=(500, 300), max_size=(1200, 900))


def test_score_histograms_of_nothing(tmp_path: Path) -> None:
    target = score_histograms({"genuine": np.array([])}, tmp_path / "a.png", "nothing", None)
    _png(target, min_size=(500, 300), max_size=(1200, 900))
    target = score_histograms({}, tmp_path / "b.png", "nothing at all", None)
    _png(target, min_size=(500, 300), max_size=(1200, 900))


def test_score_histograms_of_a_single_value(tmp_path: Path) -> None:
    target = score_histograms({"same": np.array([0.5, 0.5])}, tmp_path / "one.png", "one", {"t": 0.5})
    _png(target, min_size=(500, 300), max_size=(1200, 900))


def test_unlinkability_plot(tmp_path: Path) -> None:
    result = unlinkability(RNG.normal(0.8, 0.1, 400), RNG.normal(1.0, 0.1, 4000), bins=60)
    target = unlinkability_plot(result, tmp_path / "unlinkability.png", "protected templates")
    _png(target, min_size=(500, 300), max_size=(1200, 900))


def test_image_grid_with_a_blank_cell(tmp_path: Path) -> None:
    face = np.zeros((64, 48, 3), np.uint8)
    face[..., 0] = 255  # red, taller than wide: fitted to 128 high and centred
    wide = np.full((10, 40, 3), 60, np.uint8)
    target = image_grid(
        [[face, None, wide], [face]],  # the short row is padded with blank cells
        ["original", "protected (a long title that has to be cut short)", "recovered"],
        tmp_path / "grid.png",
        cell=128,
    )
    image = _png(target, min_size=(3 * 128, 2 * 128), max_size=(3 * 128 + 40, 2 * 128 + 60)).convert("RGB")
    pixels = np.asarray(image)
    # the centre of the first cell of the first row is the red face
    first_cell = pixels[image.height - 2 * 128 - 20 : image.height - 128 - 20, :128]
    assert (first_cell[first_cell.shape[0] // 2, 64] == [255, 0, 0]).all()
    # the blank cell is grey, not white
    assert (pixels[image.height // 4 + 20, 128 + 10] != [255, 255, 255]).any()


def test_image_grid_rejects_bad_images(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        image_grid([[np.zeros((8, 8), np.uint8)]], ["grey"], tmp_path / "grid.png")
    with pytest.raises(ValueError, match="uint8"):
        image_grid([[np.zeros((8, 8, 3), np.float32)]], ["float"], tmp_path / "grid.png")
    with pytest.raises(ValueError, match="column"):
        image_grid([], [], tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_replaced(tmp_path: Path) -> None:
    target = tmp_path / "grid.png"
    target.write_bytes(b"old")
    image_grid([[None]], ["x"], target, cell=32)
    _png(target, min_size=(32, 32), max_size=(100, 100))


def test_plots_from_several_threads(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def draw(index: int) -> None:
        try:
            det_plot({"a": (GENUINE, IMPOSTOR)}, tmp_path / f"det{index}.png", f"thread {index}")
        except BaseException as error:  # collected for the main thread
            errors.append(error)

    threads = [threading.Thread(target=draw, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index in range(3):
        _png(tmp_path / f"det{index}.png", min_size=(400, 400), max_size=(1200, 1200))


def test_plots_do_not_import_pyplot(tmp_path: Path) -> None:
    # pyplot keeps global state and may pick a GUI backend: neither importing nor drawing loads it
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from faceanonymixer.evaluation import plots\n"
        "print('matplotlib.pyplot' in sys.modules, 'matplotlib.backends.backend_agg' in sys.modules)\n"
        "plots.det_plot({'a': (np.array([0.1, 0.5]), np.array([0.4, 0.9]))}, sys.argv[1], 't')\n"
        "plots.score_histograms({'a': np.array([0.1, 0.5])}, sys.argv[1], 't', {'t': 0.3})\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "figure.png")], capture_output=True, text=True, check=True
    ).stdout
    assert output.split() == ["False", "True", "False"]


def test_cell_rates_plot_and_a_grid_with_row_titles(tmp_path: Path) -> None:
    from faceanonymixer.evaluation.plots import cell_rates_plot

    panels = {
        "dlib": {
            "a (3)": {"shared key": 0.2, "unprotected": 0.9},
            "b (4)": {"shared key": None, "unprotected": 1.0},
        },
        "attributes": {"a (3)": {"gender": 0.5}, "b (4)": {"gender": 1.0}},
    }
    _png(cell_rates_plot(panels, tmp_path / "cells.png"), min_size=(500, 200), max_size=(2000, 2000))
    with pytest.raises(ValueError, match="at least one panel"):
        cell_rates_plot({}, tmp_path / "none.png")
    face = np.full((32, 32, 3), 90, np.uint8)
    target = image_grid(
        [[face, face], [face]], ["original", "own key"], tmp_path / "g.png", cell=32, row_titles=["x", "y"]
    )
    image = _png(target, min_size=(2 * 32 + 100, 2 * 32), max_size=(2 * 32 + 200, 2 * 32 + 60))
    assert np.asarray(image.convert("RGB"))[30:60, 4:100].min() < 128  # the row titles are drawn
    with pytest.raises(ValueError, match="row titles"):
        image_grid([[face]], ["original"], tmp_path / "h.png", row_titles=["x", "y"])
