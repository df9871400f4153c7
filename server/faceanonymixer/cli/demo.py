"""``faceanonymixer demo``: the whole product on one machine, in a minute or two, with no network.

It starts the real gRPC service in this process (a free loopback port, a temporary key store, a
fresh key-encryption key), then for each person: creates a key A, protects the person's photos
together under A (one ``ProtectFaces`` call through the client SDK), revokes A (the service names a
replacement key B), checks that A is now refused, and protects the same photos under B. dlib's own
C++ face recognition (:class:`~faceanonymixer.evaluation.judges.DlibJudge`, never used in the
protection's loss) then judges every pair of one person's images, at the place where it finds the
face in the original photo (see :func:`_judge_person`):

- protected under A vs protected under A (different photos): should match;
- original vs protected under A: should not match;
- protected under A vs protected under B (after revocation): should not match.

Without ``--images`` the photos are variations (mirrored, a tighter crop, darker, rotated) of the
one public-domain NASA portrait of Eileen Collins that ships in scikit-image's wheel
(``skimage/data/astronaut.png``). The run writes ``grid.png`` (original | key A | key B, one row
per photo), ``summary.json`` and the server's JSON log ``server.log`` into the output folder.
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from faceanonymixer.utils import files
from faceanonymixer.utils.files import write_atomic

SAMPLE_PERSON = "eileen-collins"
JUDGE_DESCRIPTION = (
    "dlib's own C++ face recognition, never used in the protection's loss: its HOG detector finds "
    "the face in the original photo (upsampling 0, 1, 2 until found; the largest face); the "
    "protected photos keep the face at that place, so dlib's 5-point landmarks and ResNet "
    "descriptor (1 jitter, padding 0.25) are computed there in the original and in both protected "
    "photos. Same person when the descriptors' distance is below the threshold. "
    "detector_finds_protected_face counts the protected photos in which the detector, run again, "
    "finds the face at its place."
)
SAMPLE_DESCRIPTION = (
    "5 variations (original, mirrored, tighter crop, darker, rotated 8 degrees) of ONE photo: "
    "NASA's public-domain portrait of astronaut Eileen Collins, shipped in scikit-image's wheel "
    "as skimage/data/astronaut.png"
)

#: side of one picture of the grid, and the other parts of its layout (pixels)
GRID_CELL = 192
GRID_LABEL_WIDTH = 132
GRID_HEADER = 24
GRID_CAPTION = 16
GRID_PAD = 6
GRID_COLUMNS = ("original", "protected, key A", "protected, key B (after revoking A)")

#: the measures, in the order of the table: (summary key, the pairs it counts, what it counts);
#: A is the person's key, B its replacement after A was revoked
MEASURES = (
    ("same_person_match_rate", "A vs A, other photo", "match"),
    ("original_vs_protected_nonmatch_rate", "original vs A", "non-match"),
    ("after_revocation_nonmatch_rate", "A vs B (A revoked)", "non-match"),
    ("original_match_rate", "original vs original (reference)", "match"),
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Photo:
    person: str
    name: str
    pixels: np.ndarray


@dataclass
class PhotoSet:
    photos: list[Photo]
    #: "sample", or the folder the photos came from
    source: str
    description: str
    #: photos that could not be read: {"person", "photo", "reason"}
    unreadable: list[dict[str, str]] = field(default_factory=list)

    def people(self) -> dict[str, list[Photo]]:
        grouped: dict[str, list[Photo]] = {}
        for photo in self.photos:
            grouped.setdefault(photo.person, []).append(photo)
        return grouped


# ---- photos ----------------------------------------------------------------------------------


def sample_photos() -> PhotoSet:
    """Honest variations of one public-domain photo (PIL only; scikit-image is not imported)."""
    resource = importlib.resources.files("skimage") / "data" / "astronaut.png"
    with resource.open("rb") as handle, Image.open(handle) as opened:
        base = opened.convert("RGB")
    width, height = base.size
    variations = {
        "original": base,
        "mirrored": ImageOps.mirror(base),
        "tighter-crop": base.crop((width // 8, 0, width * 7 // 8, height * 3 // 4)),
        "darker": base.point(lambda value: round(255 * (value / 255) ** 1.6)),
        "rotated": base.rotate(8, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0)),
    }
    photos = [Photo(SAMPLE_PERSON, name, np.asarray(image)) for name, image in variations.items()]
    return PhotoSet(photos, "sample", SAMPLE_DESCRIPTION)


def folder_photos(folder: Path, *, max_people: int, max_images: int) -> PhotoSet:
    """The first ``max_people`` people of a ``<person>/<image>`` folder, ``max_images`` photos each."""
    from faceanonymixer.faces.datasets import list_identity_images
    from faceanonymixer.faces.imageio import load_image
    from faceanonymixer.utils.errors import InvalidImageError

    items = list_identity_images(folder, max_identities=max_people, max_images=max_images)
    if not items:
        raise FileNotFoundError(f"no photos found under {folder} (expected <person>/<image> files)")
    photos: list[Photo] = []
    unreadable: list[dict[str, str]] = []
    for person, path in items:
        try:
            photos.append(Photo(person, path.name, load_image(path)))
        except InvalidImageError as error:
            unreadable.append({"person": person, "photo": path.name, "reason": str(error)})
    if not photos:
        raise FileNotFoundError(f"none of the photos under {folder} could be read")
    people = len({photo.person for photo in photos})
    description = f"{len(photos)} photos of {people} people from {folder}"
    return PhotoSet(photos, str(folder), description, unreadable)


# ---- the output folder -------------------------------------------------------------------------


def prepare_out_dir(out: Path | None) -> Path:
    """``out``, or a new ``faceanonymixer-demo-<time>`` folder here; never an existing non-empty one."""
    return files.prepare_out_dir(out, default_prefix="faceanonymixer-demo")


# ---- one person's run ------------------------------------------------------------------------


@dataclass
class PersonRun:
    person: str
    photos: list[Photo]
    key_a: str = ""
    key_b: str = ""
    revoked_key_refused: bool = False
    #: per photo: the protected image under A / under B, or None (see ``failures``)
    protected_a: list[np.ndarray | None] = field(default_factory=list)
    protected_b: list[np.ndarray | None] = field(default_factory=list)
    #: per photo: why it was not protected, or None
    failures: list[str | None] = field(default_factory=list)
    #: per photo: the face the judge's detector found in the original (a dlib rectangle), or None
    boxes: list[Any | None] = field(default_factory=list)
    #: judge descriptors per photo (None: not protected, or no face in the original)
    original: list[np.ndarray | None] = field(default_factory=list)
    embedded_a: list[np.ndarray | None] = field(default_factory=list)
    embedded_b: list[np.ndarray | None] = field(default_factory=list)
    #: per photo: whether the judge's detector, run again on the protected photo, finds the face
    #: at its place (None: not protected)
    detected_a: list[bool | None] = field(default_factory=list)
    detected_b: list[bool | None] = field(default_factory=list)

    def distances(self) -> dict[str, list[float]]:
        """Judge distances of this person's pairs, per measure (pairs where both have a face)."""
        n = len(self.photos)
        protected = [i for i in range(n) if self.failures[i] is None]
        within = list(itertools.combinations(protected, 2))
        across = list(itertools.product(protected, protected))
        return {
            "same_person_match_rate": _pair_distances(self.embedded_a, self.embedded_a, within),
            "original_vs_protected_nonmatch_rate": _pair_distances(self.original, self.embedded_a, across),
            "after_revocation_nonmatch_rate": _pair_distances(self.embedded_a, self.embedded_b, across),
            "original_match_rate": _pair_distances(
                self.original, self.original, list(itertools.combinations(range(n), 2))
            ),
        }


def _pair_distances(
    left: Sequence[np.ndarray | None], right: Sequence[np.ndarray | None], pairs: list[tuple[int, int]]
) -> list[float]:
    found = []
    for i, j in pairs:
        a, b = left[i], right[j]
        if a is not None and b is not None:
            found.append(float(np.linalg.norm(a - b)))
    return found


def _stats(distances: list[float]) -> dict[str, float] | None:
    if not distances:
        return None
    values = np.asarray(distances)
    return {
        "min": round(float(values.min()), 4),
        "mean": round(float(values.mean()), 4),
        "max": round(float(values.max()), 4),
    }


def _rate(distances: list[float], kind: str, threshold: float) -> float | None:
    if not distances:
        return None
    matched = sum(d < threshold for d in distances)
    hits = matched if kind == "match" else len(distances) - matched
    return round(hits / len(distances), 4)


def _protect_person(client: Any, person: PersonRun, progress: Progress) -> None:
    from faceanonymixer_client.errors import FaceAnonyMixerError, KeyRevokedError

    images = [photo.pixels for photo in person.photos]
    person.key_a = client.create_key(person.person, labels={"created_by": "demo"}).key_id
    progress(f"{person.person}: protecting {len(images)} photos together under key A")
    first = client.protect_subject(images, person.key_a, channel_order="RGB", return_exceptions=True)
    person.protected_a = [None if isinstance(item, Exception) else item for item in first]
    person.failures = [str(item) if isinstance(item, Exception) else None for item in first]
    revocation = client.revoke_key(person.key_a)
    person.key_b = revocation.replacement.key_id
    try:
        client.protect(images[0], person.key_a, channel_order="RGB")
    except KeyRevokedError:
        person.revoked_key_refused = True
    except FaceAnonyMixerError:
        person.revoked_key_refused = False
    usable = [i for i, failure in enumerate(person.failures) if failure is None]
    person.protected_b = [None] * len(images)
    if usable:
        refused = "refused from now on" if person.revoked_key_refused else "NOT refused"
        progress(f"{person.person}: key A revoked ({refused}); protecting again under its replacement B")
        second = client.protect_subject(
            [images[i] for i in usable], person.key_b, channel_order="RGB", return_exceptions=True
        )
        for i, item in zip(usable, second, strict=True):
            if isinstance(item, Exception):
                person.failures[i] = f"under key B: {item}"
            else:
                person.protected_b[i] = item


def _judge_person(judge: Any, person: PersonRun) -> None:
    """Descriptors of every image at the face the judge finds in the original photo.

    The protected photos keep the face where it was (it is pasted back at the alignment
    transform), so the box found in the original is the face's place in all three images. Running
    the detector again on a protected photo instead can miss the synthetic face and fall back, with
    upsampling, on a face-like patch elsewhere in the photo: the same patch in every protected
    version of it, so two different keys would seem to "match" at distance 0. Whether the detector
    does find the protected face is recorded separately (``detected_a`` / ``detected_b``).
    """
    person.boxes = [face_box(judge, photo.pixels) for photo in person.photos]

    def describe_all(images: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
        return [
            None if image is None or box is None else describe(judge, image, box)
            for image, box in zip(images, person.boxes, strict=True)
        ]

    def detected(images: Sequence[np.ndarray | None]) -> list[bool | None]:
        return [
            None if image is None or box is None else detects_face_at(judge, image, box)
            for image, box in zip(images, person.boxes, strict=True)
        ]

    person.original = describe_all([photo.pixels for photo in person.photos])
    person.embedded_a = describe_all(person.protected_a)
    person.embedded_b = describe_all(person.protected_b)
    person.detected_a = detected(person.protected_a)
    person.detected_b = detected(person.protected_b)


def face_box(judge: Any, image: np.ndarray) -> Any | None:
    """The judge's own detection policy (as :meth:`DlibJudge.embed`): the largest face at the first
    upsampling level that finds any; None when there is none."""
    rgb = np.ascontiguousarray(image)
    for upsample in judge.upsample_levels:
        faces = list(judge.detector(rgb, upsample))
        if faces:
            return max(faces, key=lambda rect: rect.width() * rect.height())
    return None


def describe(judge: Any, image: np.ndarray, box: Any) -> np.ndarray:
    """dlib's 5-point landmarks and ResNet descriptor of the face in ``box`` (the judge's jitters
    and padding): for an original photo and its own box, exactly ``judge.embed(image)``."""
    rgb = np.ascontiguousarray(image)
    shape = judge.shape_predictor(rgb, box)
    descriptor = judge.recognizer.compute_face_descriptor(rgb, shape, judge.num_jitters, judge.padding)
    return np.asarray(descriptor, dtype=np.float64).reshape(-1)


def detects_face_at(judge: Any, image: np.ndarray, box: Any) -> bool:
    """Whether the judge's detector, on the neighbourhood of ``box`` (one face size on each side),
    finds a face whose centre lies inside ``box``."""
    height, width = image.shape[:2]
    margin = max(box.width(), box.height())
    left, top = max(0, box.left() - margin), max(0, box.top() - margin)
    right, bottom = min(width, box.right() + margin), min(height, box.bottom() + margin)
    found = face_box(judge, image[top:bottom, left:right])
    if found is None:
        return False
    centre_x = left + (found.left() + found.right()) / 2
    centre_y = top + (found.top() + found.bottom()) / 2
    return bool(box.left() <= centre_x <= box.right() and box.top() <= centre_y <= box.bottom())


# ---- the run ---------------------------------------------------------------------------------


@contextmanager
def _server_log(path: Path) -> Iterator[None]:
    """The in-process server's JSON log lines go to ``path``, not to the console."""
    from faceanonymixer.service.logs import JsonFormatter

    logger = logging.getLogger("faceanonymixer.service")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]
        handler.close()


@dataclass
class DemoReport:
    summary: dict[str, Any]
    people: list[PersonRun]

    def render(self, stream: TextIO) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(file=stream)
        summary = self.summary
        judge = summary["judge"]
        console.print(f"Photos: {summary['images']['description']}.")
        table = Table(
            title=f"{judge['name']} (C++) judge: same person when distance < {judge['threshold']}",
            caption="A: protected under the person's key A; B: protected under its replacement",
        )
        table.add_column("one person's images")
        table.add_column("measure")
        table.add_column("rate", justify="right")
        table.add_column("pairs", justify="right")
        table.add_column("mean dist.", justify="right")
        for key, label, kind in MEASURES:
            stats = summary["distances"][key]
            mean = "-" if stats is None else f"{stats['mean']:.2f}"
            table.add_row(label, kind, _percent(summary[key]), str(summary["pairs"][key]), mean)
        console.print(table)
        if len(summary["people"]) > 1:
            per_person = Table(title="per person (each with their own key)")
            per_person.add_column("person")
            per_person.add_column("protected", justify="right")
            for header in ("A vs A match", "original vs A non-match", "A vs B non-match"):
                per_person.add_column(header, justify="right")
            for row in summary["people"]:
                rates = [_percent(row[key]) for key, *_ in MEASURES[:3]]
                per_person.add_row(row["person"], f"{row['protected']}/{row['photos']}", *rates)
            console.print(per_person)
        for failure in summary["images"]["skipped"]:
            console.print(f"  skipped {failure['person']}/{failure['photo']}: {failure['reason']}")
        for missing in judge["no_face_in_original"]:
            console.print(
                f"  not judged {missing['person']}/{missing['photo']}: dlib finds no face in the original"
            )
        found = judge["detector_finds_protected_face"]
        console.print(
            "dlib's detector, run again on the protected photos, finds the face in "
            f"{found['key_a']['found']}/{found['key_a']['photos']} (key A) and "
            f"{found['key_b']['found']}/{found['key_b']['photos']} (key B)."
        )
        refused = "yes" if summary["revoked_key_refused"] else "NO"
        console.print(f"Revoked key A refused by the service: {refused}.")
        console.print(
            f"Wrote grid.png, summary.json and server.log into {summary['out']} "
            f"in {summary['seconds']:.1f} s."
        )


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def run_demo(
    photo_set: PhotoSet,
    out: Path,
    *,
    progress: Progress | None = None,
    threads: int | None = None,
    steps: int | None = None,
) -> DemoReport:
    """Serve in-process, enroll, revoke, re-enroll and judge; write grid.png and summary.json.
    ``steps`` overrides the profile's optimisation steps (a quick look; the rates need the
    profile's own)."""
    started = time.perf_counter()
    say = progress or (lambda _: None)
    from faceanonymixer.engine.profiles import get_profile
    from faceanonymixer.evaluation.judges import DlibJudge
    from faceanonymixer.keystore import KeyEncryptionKey
    from faceanonymixer.service.server import run_in_background
    from faceanonymixer.service.settings import ServiceSettings
    from faceanonymixer_client import ProtectionClient

    people = [PersonRun(person, photos) for person, photos in photo_set.people().items()]
    largest = max(len(person.photos) for person in people)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="faceanonymixer-demo-") as keys_dir:
        settings = ServiceSettings.load(
            None,
            listen="127.0.0.1:0",
            keystore=f"sqlite:///{Path(keys_dir) / 'keys.db'}",
            workers=1,
            threads=threads,
            tokens={},
            metrics_listen="",
            reflection=False,
            max_images_per_request=max(16, largest),
            optimisation={} if steps is None else {"steps": steps},
            shutdown_grace_seconds=5,
            log_level="INFO",
        ).model_copy(update={"tls_cert_file": None, "tls_key_file": None, "tls_client_ca_file": None})
        steps = get_profile(settings.profile).optimisation.with_overrides(**settings.optimisation).steps
        say(f"starting the service on a free loopback port (profile {settings.profile}, {steps} steps)")
        with (
            _server_log(out / "server.log"),
            run_in_background(settings, KeyEncryptionKey.generate()) as address,
        ):
            timings["server_start"] = time.perf_counter() - started
            with ProtectionClient(address, timeout=600) as client:
                for person in people:
                    _protect_person(client, person, say)
        timings["protect"] = time.perf_counter() - started - timings["server_start"]
    say("judging every pair with dlib's own face recognition (C++)")
    judged = time.perf_counter()
    judge = DlibJudge()
    for person in people:
        _judge_person(judge, person)
    timings["judge"] = time.perf_counter() - judged
    grid_path = out / "grid.png"
    grid_size = write_grid(grid_path, people, judge)
    summary = _summary(photo_set, people, judge, settings.profile, steps, out, grid_path, grid_size)
    summary["timings"] = {name: round(value, 2) for name, value in timings.items()}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return DemoReport(summary, people)


def _found(per_person: Iterator[list[bool | None]]) -> dict[str, int]:
    flags = [flag for flags in per_person for flag in flags if flag is not None]
    return {"photos": len(flags), "found": sum(flags)}


def _summary(
    photo_set: PhotoSet,
    people: list[PersonRun],
    judge: Any,
    profile: str,
    steps: int,
    out: Path,
    grid_path: Path,
    grid_size: tuple[int, int],
) -> dict[str, Any]:
    threshold = float(judge.threshold)
    totals: dict[str, list[float]] = {key: [] for key, *_ in MEASURES}
    rows = []
    for person in people:
        distances = person.distances()
        row: dict[str, Any] = {
            "person": person.person,
            "photos": len(person.photos),
            "protected": sum(failure is None for failure in person.failures),
            "key_a": person.key_a,
            "key_b": person.key_b,
            "revoked_key_refused": person.revoked_key_refused,
        }
        for key, _, kind in MEASURES:
            totals[key].extend(distances[key])
            row[key] = _rate(distances[key], kind, threshold)
            row[f"{key.rsplit('_rate', 1)[0]}_pairs"] = len(distances[key])
        rows.append(row)
    skipped = [
        {"person": person.person, "photo": photo.name, "reason": failure}
        for person in people
        for photo, failure in zip(person.photos, person.failures, strict=True)
        if failure is not None
    ]
    no_face_in_original = [
        {"person": person.person, "photo": photo.name}
        for person in people
        for photo, box, failure in zip(person.photos, person.boxes, person.failures, strict=True)
        if box is None and failure is None
    ]
    summary: dict[str, Any] = {key: _rate(totals[key], kind, threshold) for key, _, kind in MEASURES}
    summary.update(
        {
            "pairs": {key: len(totals[key]) for key, *_ in MEASURES},
            "distances": {key: _stats(totals[key]) for key, *_ in MEASURES},
            "revoked_key_refused": all(person.revoked_key_refused for person in people),
            "judge": {
                "name": judge.name,
                "threshold": threshold,
                "description": JUDGE_DESCRIPTION,
                "no_face_in_original": no_face_in_original,
                "detector_finds_protected_face": {
                    "key_a": _found(person.detected_a for person in people),
                    "key_b": _found(person.detected_b for person in people),
                },
            },
            "profile": profile,
            "steps": steps,
            "images": {
                "source": photo_set.source,
                "description": photo_set.description,
                "people": len(people),
                "photos": sum(len(person.photos) for person in people),
                "protected": sum(row["protected"] for row in rows),
                "skipped": photo_set.unreadable + skipped,
            },
            "people": rows,
            "out": str(out),
            "grid": {"path": str(grid_path), "width": grid_size[0], "height": grid_size[1]},
        }
    )
    return summary


# ---- the before/after grid -------------------------------------------------------------------


def grid_size(rows: int) -> tuple[int, int]:
    """Width and height of a grid of ``rows`` photos."""
    width = GRID_LABEL_WIDTH + len(GRID_COLUMNS) * (GRID_CELL + GRID_PAD) + GRID_PAD
    height = GRID_HEADER + rows * (GRID_CELL + GRID_CAPTION + GRID_PAD) + GRID_PAD
    return width, height


def write_grid(path: Path, people: list[PersonRun], judge: Any) -> tuple[int, int]:
    """One row per photo: original | protected under A | protected under B, cropped around the face
    found in the original; each protected picture is captioned with its judge distance to the
    original. Written atomically as PNG; returns (width, height)."""
    rows = [(person, i) for person in people for i in range(len(person.photos))]
    size = grid_size(len(rows))
    canvas = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(GRID_COLUMNS):
        draw.text((_column_x(column), 6), title, fill=(0, 0, 0))
    threshold = float(judge.threshold)
    for row, (person, i) in enumerate(rows):
        top = GRID_HEADER + row * (GRID_CELL + GRID_CAPTION + GRID_PAD)
        photo = person.photos[i]
        draw.text((GRID_PAD, top + 4), person.person[:20], fill=(0, 0, 0))
        draw.text((GRID_PAD, top + 18), photo.name[:20], fill=(90, 90, 90))
        region = _face_region(person.boxes[i] if person.boxes else None, photo.pixels)
        original = person.original[i] if person.original else None
        cells: list[tuple[np.ndarray | None, np.ndarray | None, str]] = [
            (photo.pixels, original, ""),
            (person.protected_a[i], person.embedded_a[i] if person.embedded_a else None, "A"),
            (person.protected_b[i], person.embedded_b[i] if person.embedded_b else None, "B"),
        ]
        for column, (image, embedding, key) in enumerate(cells):
            x = _column_x(column)
            if image is None:
                draw.rectangle((x, top, x + GRID_CELL - 1, top + GRID_CELL - 1), fill=(220, 220, 220))
                draw.text((x + 8, top + GRID_CELL // 2), "not protected", fill=(0, 0, 0))
                continue
            canvas.paste(_cell(image, region), (x, top))
            reference = original if key != "B" else (person.embedded_a[i] if person.embedded_a else None)
            caption = _caption(key, reference, embedding, threshold)
            draw.text((x, top + GRID_CELL + 2), caption, fill=(0, 0, 0))
    buffer = _png_bytes(canvas)
    write_atomic(path, buffer)
    return size


def _column_x(column: int) -> int:
    return GRID_LABEL_WIDTH + GRID_PAD + column * (GRID_CELL + GRID_PAD)


def _caption(key: str, reference: np.ndarray | None, embedding: np.ndarray | None, threshold: float) -> str:
    """The judge's distance of a protected picture to its reference: the original for key A, the
    picture under key A for key B."""
    if not key:
        return "" if reference is not None else "judge: no face"
    if embedding is None:
        return "judge: no face"
    against = "original" if key == "A" else "key A"
    if reference is None:
        return f"judge: no face in the {against} picture"
    distance = float(np.linalg.norm(reference - embedding))
    verdict = "match" if distance < threshold else "no match"
    return f"vs {against}: {distance:.2f} ({verdict})"


def _face_region(box: Any | None, image: np.ndarray) -> tuple[int, int, int, int]:
    """A square around the face the judge found in the original (the whole photo if none)."""
    height, width = image.shape[:2]
    if box is None:
        return 0, 0, width, height
    centre_x, centre_y = (box.left() + box.right()) / 2, (box.top() + box.bottom()) / 2
    half = min(max(box.width(), box.height()) * 1.1, max(width, height) / 2)
    left = int(max(0, min(centre_x - half, width - 2 * half)))
    top = int(max(0, min(centre_y - half, height - 2 * half)))
    return left, top, int(min(width, left + 2 * half)), int(min(height, top + 2 * half))


def _cell(image: np.ndarray, region: tuple[int, int, int, int]) -> Image.Image:
    crop = Image.fromarray(np.ascontiguousarray(image)).crop(region)
    return ImageOps.pad(crop, (GRID_CELL, GRID_CELL), method=Image.Resampling.LANCZOS, color=(255, 255, 255))


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
