"""ONNX export of a profile and onnxruntime parity with PyTorch on real aligned faces.

The embedded profile is exported once for the module through ``faceanonymixer export onnx``; every
graph is then compared with the PyTorch module it came from at batch 1 and 3 (the dynamic axis),
on dlib chips and template crops of real photos. Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from faceanonymixer.cli.main import app as cli
from faceanonymixer.engine.onnx_passes import OnnxForwardPasses
from faceanonymixer.engine.profiles import EMBEDDED
from faceanonymixer.engine.protection import PreparedFace, ProtectionEngine, Subject
from faceanonymixer.engine.protection_key import ProtectionKey
from faceanonymixer.models.onnx.manifest import MANIFEST, read_manifest
from faceanonymixer.models.onnx.runtime import OnnxExport, available_providers
from faceanonymixer.models.zoo import MODELS_DIR_ENV
from faceanonymixer.service.server import engine_factory
from faceanonymixer.service.settings import ServiceSettings, SettingsError
from faceanonymixer.utils.errors import ModelFormatError
from faceanonymixer_export import onnx_export
from faceanonymixer_export.onnx_export import export_profile
from integration.test_ffhq_profile import registered, tiny_stack  # noqa: F401  (fixtures)

#: exports and runs ONNX graphs of real and tiny models: slow, not in the quick loop
pytestmark = pytest.mark.slow

PHOTOS = ("obama/obama.jpg", "biden/biden.jpg", "kit_harington/john2.jpeg")
KEY = ProtectionKey(bytes(range(32)))


@pytest.fixture(scope="module")
def exported(weights: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("onnx") / "embedded"
    result = CliRunner().invoke(
        cli, ["export", "onnx", "--profile", "embedded", "--out", str(folder), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["out"] == str(folder)  # progress went to stderr
    return folder


@pytest.fixture(scope="module")
def engine(weights: None) -> ProtectionEngine:
    return ProtectionEngine("embedded", device="cpu")


@pytest.fixture(scope="module")
def faces(engine: ProtectionEngine, faces_root: Path) -> list[PreparedFace]:
    return [engine.prepare(faces_root / "fr_examples" / photo) for photo in PHOTOS]


@pytest.fixture(scope="module")
def sessions(exported: Path) -> OnnxExport:
    return OnnxExport(exported, device="cpu")


def _chips(faces: list[PreparedFace]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(f.chip.image).permute(2, 0, 1).float() for f in faces])


def _crops(faces: list[PreparedFace]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(f.crop.image).permute(2, 0, 1).float() for f in faces]) / 127.5 - 1


def test_manifest_lists_every_model_with_shapes_hashes_and_exporter(exported: Path) -> None:
    data = json.loads((exported / MANIFEST).read_text())
    assert data["profile"] == "embedded"
    roles = {entry["role"]: entry for entry in data["models"]}
    assert set(roles) == {"recognizer", "encoder", "synthesis", "mapping"}
    assert roles["recognizer"]["name"] == "dlib"
    assert roles["recognizer"]["inputs"] == [
        {"name": "images", "shape": ["batch", 3, 150, 150], "dtype": "float32"}
    ]
    assert roles["recognizer"]["outputs"][0]["shape"] == ["batch", 128]
    assert roles["recognizer"]["preprocessing"]["value_range"] == [0, 255]
    assert roles["recognizer"]["preprocessing"]["colour_order"] == "RGB"
    assert roles["encoder"]["inputs"][0]["shape"] == ["batch", 3, 64, 64]
    assert roles["encoder"]["outputs"][0]["shape"] == ["batch", 16, 512]
    assert roles["synthesis"]["outputs"][0]["shape"] == ["batch", 3, 64, 64]
    assert roles["synthesis"]["postprocessing"]["value_range"] == [-1, 1]
    newest_model = 0
    for entry in data["models"]:
        assert set(entry) >= {"name", "file", "inputs", "outputs", "sha256", "exporter", "opset"}
        path = exported / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert entry["exporter"] in ("dynamo", "torchscript")
        newest_model = max(newest_model, path.stat().st_mtime_ns)
        print(f"{entry['name']}: {entry['exporter']}, opset {entry['opset']}, check {entry['check']}")
    assert (exported / MANIFEST).stat().st_mtime_ns >= newest_model  # the manifest is written last
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        [MANIFEST, *(e["file"] for e in data["models"])]
    )


def test_recognizer_embeddings_match_pytorch_at_batch_1_and_3(
    sessions: OnnxExport, engine: ProtectionEngine, faces: list[PreparedFace]
) -> None:
    chips = _chips(faces)
    with torch.no_grad():
        expected = engine.recognizer(chips)
    for batch in (chips, chips[:1]):
        actual = sessions["dlib"](batch)
        assert isinstance(actual, torch.Tensor) and actual.shape == (len(batch), 128)
        difference = (actual - expected[: len(batch)]).abs().max().item()
        cosine = torch.nn.functional.cosine_similarity(actual, expected[: len(batch)]).min().item()
        print(f"dlib batch {len(batch)}: max |diff| {difference:.2e}, min cosine {cosine:.8f}")
        assert cosine >= 0.9999 and difference < 1e-4
    # numpy in, torch out: the contract of the PyTorch module
    assert torch.equal(sessions["dlib"](chips.numpy()), sessions["dlib"](chips))


def test_encoder_latents_and_generator_images_match_pytorch(
    sessions: OnnxExport, engine: ProtectionEngine, faces: list[PreparedFace]
) -> None:
    crops = _crops(faces)
    with torch.no_grad():
        latents = engine.inverter(crops)
        images = engine.generator.synthesize(latents)
        z = torch.randn(3, engine.generator.z_dim, generator=torch.Generator().manual_seed(0))
        mapped = engine.generator.mapping(z)
    pairs = {
        EMBEDDED.inverter: (crops, latents),
        f"{EMBEDDED.generator}.synthesis": (latents, images),
        f"{EMBEDDED.generator}.mapping": (z, mapped),
    }
    for name, (inputs, expected) in pairs.items():
        for batch in (3, 1):
            actual = sessions[name](inputs[:batch])
            assert actual.shape == expected[:batch].shape
            difference = (actual - expected[:batch]).abs().max().item()
            print(
                f"{name} batch {batch}: max |diff| {difference:.2e} (values up to {expected.abs().max():.2f})"
            )
            assert difference < 1e-4


def test_sessions_use_the_available_providers_in_order(sessions: OnnxExport) -> None:
    assert available_providers("cpu") == ["CPUExecutionProvider"]
    preferred = available_providers()
    assert preferred[-1] == "CPUExecutionProvider" and len(set(preferred)) == len(preferred)
    assert sessions["dlib"].providers == ["CPUExecutionProvider"]


def test_a_changed_file_or_a_stale_export_is_refused(
    exported: Path, tmp_path: Path, engine: ProtectionEngine
) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    manifest = read_manifest(exported)
    mapping = manifest.model(f"{EMBEDDED.generator}.mapping")
    shutil.copy(exported / MANIFEST, copy / MANIFEST)
    data = bytearray((exported / mapping.file).read_bytes())
    data[-1] ^= 1
    (copy / mapping.file).write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="SHA-256"):
        OnnxExport(copy)[mapping.name]
    # an export of other weights than the engine's: the fingerprint tells
    stale = json.loads((exported / MANIFEST).read_text())
    stale["models"][0]["source_fingerprint"] = "0" * 64
    (copy / MANIFEST).write_text(json.dumps(stale))
    with pytest.raises(ModelFormatError, match="other weights"):
        OnnxForwardPasses.open(
            copy, EMBEDDED, recognizer=engine.recognizer, inverter=engine.inverter, device="cpu"
        )


def test_engine_on_onnx_matches_the_torch_engine(
    exported: Path, engine: ProtectionEngine, faces: list[PreparedFace]
) -> None:
    """The gradient-free passes on onnxruntime, the optimisation on PyTorch, against all-PyTorch.

    The starting latent (no refinement here) and the original embedding differ from PyTorch's by
    float rounding only (about 1e-6). Adam's first steps move every latent component by about
    lr = 0.05 in the direction of its gradient's sign; where a component's gradient is almost zero
    rounding decides that sign, so such a component can end up to 2 lr per step apart (0.3 after
    3 steps), while most stay equal: the mean difference stays below 5e-3, the 8-bit faces within
    16 levels at one pixel and 2 on average. PyTorch against itself with its starting latent
    scaled by 1 + 1e-6 noise diverges as much (measured: 3 steps 0.135 / 12 levels; 50 steps
    1.6 / 115 levels), so a longer run is no closer for either runtime.
    """
    config = EMBEDDED.optimisation.with_overrides(steps=3, inversion_steps=0)
    on_onnx = ProtectionEngine(
        "embedded", device="cpu", runtime="onnx", onnx_dir=exported, aligner=engine.aligner
    )
    subject = [Subject([faces[0]], KEY)]
    (expected,) = engine.protect(subject, keep_latents=True, optimisation=config)[0]
    (actual,) = on_onnx.protect(subject, keep_latents=True, optimisation=config)[0]
    assert expected.latents is not None and actual.latents is not None
    start = np.abs(actual.latents["real"] - expected.latents["real"]).max()
    protected = np.abs(actual.latents["protected"] - expected.latents["protected"])
    face = np.abs(actual.face.astype(int) - expected.face.astype(int))
    print(
        f"engine onnx vs torch, 3 steps: starting latent max |diff| {start:.2e}; protected latent "
        f"max {protected.max():.3f}, mean {protected.mean():.2e}; face max {face.max()}, "
        f"mean {face.mean():.2f} levels; target distance {expected.target_distance:.4f} vs "
        f"{actual.target_distance:.4f}"
    )
    assert start < 1e-4
    assert protected.max() <= 2 * config.learning_rate * config.steps and protected.mean() < 5e-3
    assert face.max() <= 16 and face.mean() <= 2
    assert abs(actual.target_distance - expected.target_distance) < 1e-2


def test_engine_onnx_runtime_needs_a_folder(weights: None) -> None:
    with pytest.raises(ValueError, match="onnx_dir"):
        ProtectionEngine("embedded", device="cpu", runtime="onnx")
    with pytest.raises(SettingsError, match="onnx_dir"):
        ServiceSettings.load(runtime="onnx")


def test_the_server_and_the_protect_command_run_on_onnx(
    exported: Path, faces_root: Path, tmp_path: Path
) -> None:
    settings = ServiceSettings.load(runtime="onnx", onnx_dir=str(exported), optimisation={"steps": 1})
    assert isinstance(engine_factory(settings)().passes, OnnxForwardPasses)
    key_file = tmp_path / "key.bin"
    key_file.write_bytes(KEY.material)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "protect", str(faces_root / "fr_examples" / PHOTOS[0]), "--key-file", str(key_file),
            "--out", str(out), "--steps", "1", "--runtime", "onnx", "--onnx-dir", str(exported),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert [path.name for path in out.iterdir()] == ["obama.png"]


def test_ffhq_export_without_pulled_models_fails_with_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MODELS_DIR_ENV, str(tmp_path / "models"))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export", "onnx", "--profile", "ffhq", "--out", str(out)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "models pull" in lines[0]
    assert not out.exists()
    unknown = CliRunner().invoke(cli, ["export", "onnx", "--profile", "nope", "--out", str(out)])
    assert unknown.exit_code == 2 and "unknown profile" in unknown.output


@pytest.mark.usefixtures("registered")
def test_ffhq_profile_exports_on_tiny_checkpoints(tmp_path: Path) -> None:
    """The ffhq profile's models (StyleGAN2, e4e, IR-SE50 in the published formats, tiny) export,
    pass the exporter's own onnxruntime check, and run at batch 1 and 3."""
    folder, manifest = export_profile("ffhq", tmp_path / "ffhq")
    exporters = {entry.name: entry.exporter for entry in manifest.models}
    print(f"ffhq exporters: {exporters}")
    assert set(exporters) == {
        "arcface-ir-se50",
        "e4e-ffhq",
        "stylegan2-ffhq.synthesis",
        "stylegan2-ffhq.mapping",
    }
    tiny = OnnxExport(folder, device="cpu")
    for entry in manifest.models:
        shape = [3 if dim == "batch" else int(dim) for dim in entry.inputs[0].shape]
        inputs = torch.rand(shape)
        assert tiny[entry.name](inputs).shape[0] == 3
        assert tiny[entry.name](inputs[:1]).shape[0] == 1


def test_the_torchscript_exporter_takes_over_where_dynamo_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_: onnx_export.ExportTarget) -> bytes:
        raise RuntimeError("no dynamo here\nsecond line")

    monkeypatch.setattr(onnx_export, "_export_dynamo", refuse)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval()
    target = onnx_export.ExportTarget("tiny", "recognizer", module, torch.rand(1, 3, 8, 8), "images", "codes")
    graph = onnx_export.export_graph(target)
    assert graph.exporter == "torchscript" and graph.fallback_reason == "RuntimeError: no dynamo here"
    assert graph.max_abs_diff < 1e-5
    model = onnx.load_from_string(graph.data)
    assert onnx_export._spec(model.graph.input[0]).shape == ["batch", 3, 8, 8]
    session = ort.InferenceSession(graph.data, providers=["CPUExecutionProvider"])
    (codes,) = session.run(None, {"images": np.zeros((3, 3, 8, 8), np.float32)})
    assert codes.shape == (3, 144)
