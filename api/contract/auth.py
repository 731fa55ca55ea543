"""Scoped bearer tokens: ``DM_API_TOKENS`` beside the single ``DM_API_TOKEN``.

``DM_API_TOKENS`` is a JSON object mapping each token to its scopes, e.g.
``{"<trade-engine token>": ["positions:write", "pnl:write", "read"], "<extractor token>":
["klines:write", "read"]}`` (a comma-separated string works too). Scopes: ``read``,
``positions:write``, ``pnl:write``, ``klines:write``, or ``*`` for all. The older
``DM_API_TOKEN`` keeps working and carries every scope.

* Tokens are compared as SHA-256 digests with ``hmac.compare_digest`` against every
  configured entry (no early exit on the first match), so timing reveals nothing.
* Tokens are never logged nor echoed: ``DM_API_TOKENS`` is a ``SecretStr`` (the older
  ``DM_API_TOKEN`` is a plain ``Settings`` field: its repr shows it), errors name the
  missing scope, never the token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass

from api.contract.datasets import SCOPES
from api.errors import AuthError

ALL = "*"


class TokenConfigError(ValueError):
    """``DM_API_TOKENS`` is malformed (raised at start-up, never with the token in the message)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenRegistry:
    entries: tuple[tuple[bytes, frozenset[str]], ...]

    @property
    def configured(self) -> bool:
        return bool(self.entries)

    def scopes(self, token: str) -> frozenset[str] | None:
        """The scopes of ``token``, or None when it is not a configured token."""
        given = _digest(token)
        found: frozenset[str] | None = None
        for digest, scopes in self.entries:
            if hmac.compare_digest(given, digest) and found is None:
                found = scopes
        return found

    @staticmethod
    def allows(scopes: frozenset[str], scope: str) -> bool:
        return ALL in scopes or scope in scopes


def parse_tokens(raw: str | None, legacy: str | None = None) -> TokenRegistry:
    """The registry from ``DM_API_TOKENS`` (JSON) and ``DM_API_TOKEN`` (all scopes)."""
    entries: list[tuple[bytes, frozenset[str]]] = []
    if legacy:
        entries.append((_digest(legacy), frozenset({ALL})))
    if raw and raw.strip():
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise TokenConfigError("DM_API_TOKENS must be a JSON object {token: [scopes]}") from None
        if not isinstance(data, Mapping):
            raise TokenConfigError("DM_API_TOKENS must be a JSON object {token: [scopes]}")
        for n, (token, scopes) in enumerate(data.items()):
            if isinstance(scopes, str):
                scopes = [s.strip() for s in scopes.split(",") if s.strip()]
            if not isinstance(token, str) or len(token) < 16:
                raise TokenConfigError(f"DM_API_TOKENS entry #{n + 1}: a token must be a string of 16+ characters")
            if not isinstance(scopes, list) or not scopes:
                raise TokenConfigError(f"DM_API_TOKENS entry #{n + 1}: scopes must be a non-empty list")
            unknown = [s for s in scopes if s not in (*SCOPES, ALL)]
            if unknown:
                raise TokenConfigError(
                    f"DM_API_TOKENS entry #{n + 1}: unknown scope(s) {unknown}; known: {', '.join((*SCOPES, ALL))}"
                )
            entries.append((_digest(token), frozenset(scopes)))
    return TokenRegistry(tuple(entries))


# Refusals are the API's one auth error (api/errors.py): 401 no or unknown token, 403 scope missing.
ScopeDenied = AuthError


def authorize(registry: TokenRegistry, token: str | None, scope: str) -> None:
    """Raise :class:`ScopeDenied` unless ``token`` carries ``scope``."""
    if not registry.configured:
        raise ScopeDenied(403, "writes are disabled: neither DM_API_TOKEN nor DM_API_TOKENS is configured")
    if not token:
        raise ScopeDenied(401, f"a token with scope {scope!r} is required: send 'Authorization: Bearer <token>'")
    scopes = registry.scopes(token)
    if scopes is None:
        raise ScopeDenied(401, "the token is not valid")
    if not registry.allows(scopes, scope):
        raise ScopeDenied(403, f"the token lacks scope {scope!r} (it has: {', '.join(sorted(scopes))})")
