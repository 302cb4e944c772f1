"""verydeep's own format: a safetensors file (torchvision-layout keys) whose header holds the model card (card.py)
as JSON, and where the file came from. Safe to open from anyone: safetensors holds no code."""
from __future__ import annotations

import json
from pathlib import Path

from ..card import TORCHVISION, Card
from ..errors import ConfigError, WeightsError
from ..utils import atomic_write
from .base import Tensors, register
from .torchvision import from_state_dict

FORMAT_VERSION = 2  # 1: config, preprocess, class_names, train_scale, box as separate keys (still read)


def write(model, path: Path, provenance: dict | None = None) -> None:
    from safetensors.torch import save_file

    from ..provenance import provenance as made

    header = {"format_version": FORMAT_VERSION, "card": model.card.to_dict(), "provenance": provenance or made()}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={"verydeep": json.dumps(header)}))


def _card_of(header) -> Card:
    if not isinstance(header, dict):
        raise ConfigError(f"expected a JSON object, found {type(header).__name__}")
    version = header.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise WeightsError(f"written by a newer verydeep (format {version})")
    if version >= 2:
        return Card.from_dict(header.get("card"))
    legacy = {k: header[k] for k in ("config", "preprocess", "class_names", "train_scale", "box")
              if header.get(k) is not None}
    return Card.from_dict(legacy)


def _is_safetensors(head: bytes, path: Path) -> bool:
    n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    return 2 <= n <= 100_000_000 and head[8:9] == b"{"  # a safetensors JSON header, possibly truncated


@register("verydeep", detect=_is_safetensors, order=30)
def read(path: Path) -> Tensors:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read as safetensors: {str(e).splitlines()[0][:200]}") from None
    t = from_state_dict(sd, path, "verydeep")
    if "verydeep" not in meta and t.fmt == "verydeep":  # a card-less file (a hub's model.safetensors): torchvision's
        t.fmt, t.preprocess = "torchvision", TORCHVISION
    if "verydeep" in meta:
        try:
            t.card = _card_of(json.loads(meta["verydeep"]))
        except WeightsError as e:
            raise WeightsError(f"{path}: {e}") from None
        except ValueError as e:  # ConfigError and JSON errors
            raise WeightsError(f"{path}: malformed verydeep header: {e}") from None
        t.preprocess, t.pooling = t.card.preprocess, t.card.pooling
    return t
