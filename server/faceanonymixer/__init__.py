"""FaceAnonyMixer: cancelable face biometrics.

The package root imports nothing heavy: the model-facing names are loaded on first use, so that
``faceanonymixer --help`` and ``faceanonymixer health`` start without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from faceanonymixer._version import __version__

if TYPE_CHECKING:
    from faceanonymixer.engine.protection import ProtectionResult
    from faceanonymixer.engine.protection_key import ProtectionKey
    from faceanonymixer.engine.protector import Protector
    from faceanonymixer.faces.alignment import AlignedFace, FaceAligner
    from faceanonymixer.models.recognizers import Recognizer, load_recognizer

__all__ = [
    "AlignedFace",
    "FaceAligner",
    "ProtectionKey",
    "ProtectionResult",
    "Protector",
    "Recognizer",
    "__version__",
    "load_recognizer",
]

_LAZY = {
    "FaceAligner": "faceanonymixer.faces.alignment",
    "AlignedFace": "faceanonymixer.faces.alignment",
    "load_recognizer": "faceanonymixer.models.recognizers",
    "Recognizer": "faceanonymixer.models.recognizers",
    "Protector": "faceanonymixer.engine.protector",
    "ProtectionResult": "faceanonymixer.engine.protection",
    "ProtectionKey": "faceanonymixer.engine.protection_key",
}


#: top-level modules of the engine's dependencies (a broken or partial install lacks them)
_ENGINE_DEPENDENCIES = frozenset({"torch", "dlib", "face_recognition_models", "cryptography"})


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'faceanonymixer' has no attribute {name!r}")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.partition(".")[0] in _ENGINE_DEPENDENCIES:
            raise ImportError(
                f"faceanonymixer.{name} needs the engine's dependencies: pip install faceanonymixer ({error})"
            ) from error
        raise
    return getattr(module, name)
