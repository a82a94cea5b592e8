"""SCRAM-SHA-256 verifiers, computed on the client.

FlowMesh creates roles (device credentials, the pooler's role) with a password
it makes itself; it sends the server only the verifier PostgreSQL would store
(RFC 5802, 7677), so the clear text never reaches the server, its log or
pg_stat_statements.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets

#: PostgreSQL's own default (scram_iterations), so verifiers look like its own.
ITERATIONS = 4096


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password``.

    The password must be ASCII (FlowMesh's are): SASLprep leaves ASCII unchanged.
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


def verifier_matches(password: str, verifier: str) -> bool:
    """Whether ``verifier`` is the SCRAM-SHA-256 verifier of ``password``."""
    with contextlib.suppress(ValueError, IndexError):
        iterations, salt = verifier.split("$")[1].split(":")
        return hmac.compare_digest(
            scram_verifier(password, salt=base64.b64decode(salt), iterations=int(iterations)), verifier)
    return False
