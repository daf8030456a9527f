"""The checksum of a checkpoint's weights, and the check every reader makes before using one:
it loads without running code (``weights_only``), and its weights match their checksum. No
Lightning here, so predict and resume check a file without importing it."""

import hashlib
from pathlib import Path
from typing import Any, Optional

import torch


CHECKSUM = "microtrain_sha256"  # of the checkpoint's weights, checked before a resume


def weights_digest(state_dict: dict[str, Any]) -> str:
    """SHA-256 of every tensor's bytes, by name: ~2 ms a MB here."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if isinstance(tensor, torch.Tensor):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sealed(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with the checksum of its weights."""
    checkpoint[CHECKSUM] = weights_digest(checkpoint.get("state_dict", {}))
    return checkpoint


def check_checkpoint(path: Path) -> Optional[str]:
    """What is wrong with a checkpoint file, or None: it must load without running code and
    its weights must match its checksum (a file that does not say one is taken as written)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- truncated, corrupt or foreign: the message names it
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"it does not load: {text[:120]}"
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "it is not a microtrain or Lightning checkpoint"
    expected = checkpoint.get(CHECKSUM)
    if expected is not None and expected != weights_digest(checkpoint["state_dict"]):
        return "its weights do not match their checksum"
    return None
