"""How people appear in the panels: their names, their initials, or stable pseudonyms.

For audiences that must not see who is who. The choice applies where the panels' results are
shaped, in the kernel, so that neither the page, the shared cache's readers nor the CLI's
output ever hold a name the setting hides. A pseudonym is a keyed hash of the name (HMAC-
SHA256): the same person gets the same pseudonym in every panel, every refresh and every
viewer of a server, and without the key nobody can tell it back by hashing likely names.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import tempfile
import threading
from base64 import b32encode
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivendata import settings

PEOPLE = ("names", "initials", "pseudonyms")
KEY_FILE = "pseudonym.key"


def initials(name: str) -> str:
    """``'Popescu Ana-Maria'`` -> ``'P. A.'``: the first letter of each word."""
    letters = [word[0].upper() for word in name.split() if word[0].isalnum()]
    return " ".join(f"{letter}." for letter in letters) or "?"


def pseudonym(name: str, key: bytes) -> str:
    """``'Person K7Q2MXA4'``: the same for the same name and key, unguessable without the key."""
    digest = hmac.new(key, name.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return "Person " + b32encode(digest).decode()[:8]


_making = threading.Lock()


@functools.cache
def _key(configured: str, directory: str) -> bytes:
    if configured:
        return configured.encode()
    # One random key per installation, kept beside the shared cache, so that every kernel of a
    # server (and every restart) shows the same pseudonyms.
    path = Path(directory) / KEY_FILE
    with _making:  # the panels are shaped in several threads at once
        try:
            return bytes.fromhex(path.read_text().strip())
        except (OSError, ValueError):
            pass
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temp = tempfile.mkstemp(prefix=KEY_FILE, dir=path.parent)  # 0600
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.close(fd)
            os.link(temp, path)  # the first kernel to get here decides; the others read its key
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)
        return bytes.fromhex(path.read_text().strip())


def key() -> bytes:
    """The pseudonyms' key: DRIVENDATA_PSEUDONYM_KEY, or this installation's random one."""
    return _key(settings.get("pseudonym_key"), settings.get("cache_dir"))


def shower(mode: str) -> Callable[[Any], Any]:
    """Return the function that turns a name into what the mode shows (missing names stay)."""
    if mode == "initials":
        return lambda name: initials(name) if isinstance(name, str) and name else name
    if mode == "pseudonyms":
        k = key()
        return lambda name: pseudonym(name, k) if isinstance(name, str) and name else name
    return lambda name: name
