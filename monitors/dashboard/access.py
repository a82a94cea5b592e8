"""Who may read the dashboard, and as whom its queries run.

Two credentials, each sent as ``Authorization: Bearer <credential>`` or in the
``flowmesh_token`` cookie that ``POST /login`` sets:

- the operator's token (``--token-file``): the request runs with the rights of
  the role the dashboard connects as. Off loopback the token is required.
- with ``--jwt-secret-file``, a Supabase user's JWT (HS256, ``exp`` required):
  the request runs the way PostgREST runs it, in a transaction with the
  claim's role and ``request.jwt.claims`` set, so row-level security shows the
  user their own tetrahedrons only.

On loopback with no token file, a request with no credential runs with the
connecting role's rights. A credential that is presented and wrong is always
refused, never ignored. No credential is ever logged or put in a message.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path

from flowmesh_edge.mesh.address import is_loopback

#: The cookie POST /login sets (HttpOnly, SameSite=Strict).
COOKIE = "flowmesh_token"
#: The roles a JWT may carry: Supabase's. Any other is refused, so a token
#: cannot make the dashboard act as an arbitrary database role.
JWT_ROLES = frozenset({"anon", "authenticated", "service_role"})
#: Shortest token accepted in a token file: shorter ones can be guessed.
MIN_TOKEN_CHARS = 16
#: Shortest JWT secret accepted: HS256 wants a key of at least its hash's size
#: (RFC 7518, 3.2); Supabase's are longer.
MIN_JWT_SECRET_BYTES = 32


class AccessError(ValueError):
    """A configuration the dashboard refuses to start with; ``str()`` is one line."""


class Unauthorized(Exception):
    """A request without an acceptable credential; ``str()`` says why, never quoting it."""


@dataclass(frozen=True)
class Identity:
    """As whom a request's queries run: the connecting role (``role`` None), or a JWT's."""

    role: str | None = None
    #: The JWT's claims, as JSON (what PostgREST puts in request.jwt.claims).
    claims: str | None = None
    #: When the JWT expires (Unix time): a live stream opened with it ends then.
    expires_at: float | None = None

    @property
    def key(self) -> tuple[str | None, str | None]:
        """Requests with equal keys see the same rows."""
        return (self.role, self.claims)


#: The connecting role's rights: no JWT.
OPERATOR = Identity()


def read_secret(path: Path, what: str) -> str:
    """The secret in ``path`` (its first non-blank line), refused unless the file
    is mode 0600 or stricter (the relay's rule for its token file)."""
    from flowmesh_edge.relay.command import TokenFileError, check_private

    try:
        check_private(path, what)
        text = path.read_text(encoding="utf-8")
    except TokenFileError as exc:
        raise AccessError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AccessError(f"{what} {path} cannot be read: "
                          f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise AccessError(f"{what} {path} is empty")
    return lines[0]


@dataclass(frozen=True)
class Access:
    """The dashboard's access rule: an optional token and an optional JWT secret."""

    token: str | None = None
    jwt_secret: str | None = None

    @classmethod
    def for_bind(cls, bind: str, token_file: Path | None, jwt_secret_file: Path | None) -> Access:
        """The rule for serving on ``bind``: off loopback a token file is required."""
        if token_file is None and not is_loopback(bind):
            raise AccessError(f"binding to {bind} serves other machines: give --token-file "
                              "(a file of mode 0600 holding the token clients must send)")
        token = read_secret(token_file, "token file") if token_file else None
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise AccessError(f"the token in {token_file} is {len(token)} characters; "
                              f"use at least {MIN_TOKEN_CHARS}")
        secret = read_secret(jwt_secret_file, "JWT secret file") if jwt_secret_file else None
        if secret is not None and len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise AccessError(f"the JWT secret in {jwt_secret_file} is {len(secret.encode())} bytes; "
                              f"HS256 needs at least {MIN_JWT_SECRET_BYTES}")
        return cls(token=token, jwt_secret=secret)

    @property
    def open(self) -> bool:
        """Whether a request with no credential is let in (loopback, no token file)."""
        return self.token is None

    def identify(self, authorization: str | None, cookie: str | None) -> Identity:
        """The identity of a request from its Authorization header and cookie, or Unauthorized."""
        credential = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized("the Authorization header must be 'Bearer <token>'")
            credential = value.strip()
        elif cookie:
            credential = cookie
        if credential is None:
            if self.open:
                return OPERATOR
            raise Unauthorized("a token is required (Authorization: Bearer, or log in at /login)")
        return self.check(credential)

    def check(self, credential: str) -> Identity:
        """The identity ``credential`` (the token, or a JWT) stands for, or Unauthorized."""
        if self.token is not None and hmac.compare_digest(credential.encode(), self.token.encode()):
            return OPERATOR
        if self.jwt_secret is not None and credential.count(".") == 2:
            return self._jwt_identity(credential)
        raise Unauthorized("the token is not valid")

    def _jwt_identity(self, token: str) -> Identity:
        import jwt

        try:
            claims = jwt.decode(token, self.jwt_secret, algorithms=["HS256"],
                                options={"require": ["exp"], "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the JWT has expired") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the JWT is not valid: {exc}") from None
        role = claims.get("role")
        if role not in JWT_ROLES:
            raise Unauthorized(f"the JWT's role must be one of {', '.join(sorted(JWT_ROLES))}")
        return Identity(role=role, claims=json.dumps(claims, separators=(",", ":"), sort_keys=True),
                        expires_at=float(claims["exp"]))
