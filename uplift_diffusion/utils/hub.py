"""Hugging Face Hub access on machines without a network: one quick reachability check instead of huggingface_hub's
retries (5 retries with back-off: ~24 s per file, ~47 s for a VAE lookup that tries two layouts)."""

from __future__ import annotations

import os
import socket
import warnings
from urllib.parse import urlparse

_checked: bool | None = None  # None: not checked yet; True: reachable; False: switched to offline mode


def hub_is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def ensure_hub_reachable(timeout: float = 3.0) -> bool:
    """Check once per process that the Hub endpoint answers a TCP connection within ``timeout`` seconds.

    When it does not (no network, DNS failure, firewall), huggingface_hub is switched to offline mode for the rest of
    the process, as ``HF_HUB_OFFLINE=1`` would: files already in the local cache still load, the others fail at once
    instead of after ~24 s of retries, and a warning says to set ``HF_HUB_OFFLINE=1``. Returns whether the Hub is
    reachable (``False`` too when offline mode was already on).
    """
    global _checked
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if _checked is None:
        url = urlparse(constants.ENDPOINT)
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            with socket.create_connection((url.hostname, port), timeout=timeout):
                _checked = True
        except OSError as err:
            _checked = False
            constants.HF_HUB_OFFLINE = True
            os.environ["HF_HUB_OFFLINE"] = "1"
            warnings.warn(f"the Hugging Face Hub ({url.hostname}) cannot be reached ({err.strerror or err}); using "
                          f"only files already downloaded (set HF_HUB_OFFLINE=1 to skip this check)", stacklevel=2)
    return _checked


def offline_hint() -> str:
    return ("this machine is offline (HF_HUB_OFFLINE=1 or the Hub could not be reached)" if hub_is_offline()
            else "the Hub could not serve it")
