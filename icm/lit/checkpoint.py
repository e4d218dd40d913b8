"""Load a BetaVAE or DCGAN checkpoint safely: tensors and plain values only, never code.

``torch.load(weights_only=True)`` refuses any pickled Python object other than tensors and
plain containers, so a file crafted to run code on load is rejected instead of executed.
The module class is chosen from the stored weights (``encoder.*`` → BetaVAE,
``discriminator.*`` → DCGAN), built from the stored ``hyper_parameters`` (checked against
the class's constructor) and filled with ``load_state_dict(strict=True)``. Every failure is a
:class:`CheckpointError` whose message is one line naming the file.
"""

from __future__ import annotations

import inspect
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from icm.lit.base import GenerativeModule
from icm.lit.gan import DCGAN
from icm.lit.vae import BetaVAE

# Model kinds by their config name (conf/model/<kind>.yaml), the net that identifies them
# in a state_dict, and the hyper-parameters that are not stored (callables).
KINDS: dict[str, type[GenerativeModule]] = {"vae": BetaVAE, "dcgan": DCGAN}
_MARKER_NET = {"vae": "encoder", "dcgan": "discriminator"}
_NOT_STORED = {"optimizer", "optimizer_g", "optimizer_d"}
_MAX_MESSAGE = 240


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded (missing, corrupt, foreign, unsafe, wrong kind)."""


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


def _fail(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: {_one_line(reason)}")


def _kind_name(kind: str) -> str:
    return KINDS[kind].__name__


def _expected_kind(expect: str | type | None) -> str | None:
    if expect is None:
        return None
    for kind, cls in KINDS.items():
        if expect == kind or expect is cls or expect == cls.__name__:
            return kind
    raise ValueError(f"expect must be one of {sorted(KINDS)} or None, got {expect!r}")


def _check_archive(path: Path) -> None:
    """CRC-32 of every member of a zip-format checkpoint (torch's default format): damage
    inside the tensor data would otherwise load silently as wrong weights."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except Exception as exc:  # zipfile raises many types on damaged headers; all mean corrupt
        raise _fail(path, f"truncated or corrupt file ({type(exc).__name__}: {exc})") from None
    if damaged is not None:
        raise _fail(path, f"corrupt file: archive member {damaged} fails its CRC check")


def _read(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True``, its many failure types mapped to one line."""
    if zipfile.is_zipfile(path):
        _check_archive(path)
    try:
        with warnings.catch_warnings():
            # The weights-only unpickler warns about unusual pickle protocols of foreign files.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text or "Unsupported class" in text:
            detail = next(
                (ln.strip() for ln in text.splitlines() if "Unsupported" in ln), "unknown object"
            )
            raise _fail(
                path,
                f"refused: it stores Python objects that could run code when loaded ({detail}); "
                "only tensors and plain values are accepted",
            ) from None
        raise _fail(
            path, "not a PyTorch checkpoint that the safe (weights-only) loader can read"
        ) from None
    except EOFError:
        raise _fail(path, "empty or truncated file") from None
    except RuntimeError as exc:
        # The zip reader of torch: a truncated or damaged archive.
        first = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else ""
        raise _fail(path, f"truncated or corrupt file ({first})") from None
    except PermissionError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None
    except OSError as exc:
        # The zip reader seeks to offsets a damaged archive claims: truncated or corrupt.
        raise _fail(path, f"truncated or corrupt file ({exc.strerror or exc})") from None
    except Exception as exc:  # any other parser failure on a foreign file: still one line
        raise _fail(path, f"not a PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def _detect_kind(path: Path, state_dict: Mapping[str, Any]) -> str:
    found = [
        kind
        for kind, net in _MARKER_NET.items()
        if any(str(key).startswith(f"{net}.") for key in state_dict)
    ]
    if len(found) != 1:
        nets = sorted({str(key).split(".", 1)[0] for key in state_dict})
        raise _fail(
            path,
            f"not a BetaVAE or DCGAN checkpoint: its weights belong to nets {nets[:8]}, "
            "expected encoder.* (BetaVAE) or discriminator.* (DCGAN)",
        )
    return found[0]


def _hyper_parameters(path: Path, cls: type[GenerativeModule], stored: Any) -> dict[str, Any]:
    if not isinstance(stored, Mapping):
        raise _fail(path, f"hyper_parameters must be a mapping, got {type(stored).__name__}")
    params = inspect.signature(cls.__init__).parameters
    allowed = {name for name in params if name != "self"} - _NOT_STORED
    unknown = sorted(set(map(str, stored)) - allowed)
    if unknown:
        raise _fail(
            path,
            f"hyper_parameters has key(s) {unknown} that {cls.__name__} does not take; "
            f"allowed: {sorted(allowed)}",
        )
    return {str(k): v for k, v in stored.items()}


def load_module(path: str | Path, expect: str | type | None = None) -> GenerativeModule:
    """The BetaVAE or DCGAN stored in a Lightning checkpoint, on the CPU, in eval mode.

    Args:
        path: a ``.ckpt`` file written by ``icm-train`` (Lightning's ``save_checkpoint``).
        expect: ``"vae"`` / ``"dcgan"`` (or the class, or its name): fail unless the
            checkpoint holds that kind; ``None`` accepts either.

    Only the weights (and BatchNorm statistics) are restored: optimizer and regularizer
    states are training state and are left out.

    Raises:
        CheckpointError: one line naming the file: missing, empty, truncated or corrupt,
            not a PyTorch file, refused because it holds code-carrying Python objects, not a
            Lightning checkpoint, of the other model kind than ``expect``, hyper-parameters
            the class does not take or rejects, or weights that do not fit (strict load).
    """
    wanted = _expected_kind(expect)
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file")
    if not path.is_file():
        raise _fail(path, "not a file")
    checkpoint = _read(path)
    if not isinstance(checkpoint, Mapping):
        raise _fail(
            path,
            f"not a Lightning checkpoint: the file holds a {type(checkpoint).__name__}, "
            "expected a dict with state_dict and hyper_parameters",
        )
    missing = [key for key in ("state_dict", "hyper_parameters") if key not in checkpoint]
    if missing:
        raise _fail(path, f"not a Lightning checkpoint of icm: no {' or '.join(missing)}")
    state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise _fail(path, "state_dict must map parameter names to tensors")
    kind = _detect_kind(path, state_dict)
    if wanted is not None and kind != wanted:
        raise _fail(
            path,
            f"holds a {_kind_name(kind)} ({kind}) but a {_kind_name(wanted)} ({wanted}) "
            "was expected",
        )
    cls = KINDS[kind]
    hparams = _hyper_parameters(path, cls, checkpoint["hyper_parameters"])
    try:
        module = cls(**hparams)
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"hyper_parameters rejected by {cls.__name__}: {exc}") from None
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else "mismatch"
        raise _fail(path, f"weights do not fit {cls.__name__}: {detail}") from None
    return module.cpu().eval()
