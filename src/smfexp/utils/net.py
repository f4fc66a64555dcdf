"""The one network probe: can this machine open a TCP connection to a service right now?

Offline machines must fail in seconds with a message naming the fix, not after a library's
retries. The hub and W&B are asked through here, honouring their own offline switches and
endpoint overrides.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

_FALSE = ("", "0", "false", "False", "no")


def reachable(url_or_host: str, timeout: float = 3.0) -> bool:
    """True if a TCP connection to the host (port from the URL, else 443) opens in time."""
    parsed = urlparse(url_or_host if "://" in url_or_host else f"https://{url_or_host}")
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((parsed.hostname or url_or_host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """The Hugging Face hub (``HF_ENDPOINT``), unless ``HF_HUB_OFFLINE`` /
    ``HF_DATASETS_OFFLINE`` say not to try."""
    for switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(switch, "0") not in _FALSE:
            return False
    return reachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co", timeout)


def wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
