"""Who is calling, and may they: service identity, scoped tokens, and the auth mode.

Three kinds of credential, all sent as ``Authorization: Bearer <token>`` (``X-API-Token`` is
accepted too):

* ``DM_SERVICE_TOKENS``: the platform's services. JSON ``{service: token}`` or
  ``{service: {"token": ..., "scopes": [...]}}``. The service names itself in
  ``X-Petrosa-Service``; the token must be that service's. Known services get the scopes of
  :data:`DEFAULT_SERVICE_SCOPES` unless the entry names its own.
* ``DM_API_TOKENS``: anonymous scoped tokens, JSON ``{token: [scopes]}`` (a comma-separated
  string works too). They keep working beside the service tokens.
* ``DM_API_TOKEN``: the older single token; it carries every scope.

Scopes name a dataset or route family and what may be done to it (:data:`SCOPES`); ``*``
grants all of them.

``DM_AUTH_MODE`` decides what an unverified or unauthorised request gets: ``enforce`` (the
default) answers 401/403; ``audit`` lets it pass and has the API log and count it by service
and route, which is what moving a fleet of services onto tokens needs; ``off`` checks nothing.

Why it looks like this:

* Tokens are compared as SHA-256 digests with ``hmac.compare_digest`` against every entry (no
  early exit on the first match), so timing reveals nothing about which entry matched.
* Tokens are never logged nor echoed: the settings are ``SecretStr``, errors name the service
  or the missing scope, never a token.
* A service name is client input: it is bounded and checked against a plain character class
  before it is used anywhere (metrics labels, logs, audit rows).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from api.contract.datasets import SCOPE_KLINES, SCOPE_PNL, SCOPE_POSITIONS, SCOPE_READ
from api.contract.datasets import SCOPES as DATASET_SCOPES
from api.errors import AuthError

ALL = "*"
AuthMode = Literal["enforce", "audit", "off"]
AUTH_MODES: tuple[str, ...] = ("enforce", "audit", "off")

# Route families and service collections beyond the /api/v1 datasets' own scopes.
SCOPE_LEDGER = "ledger:write"
SCOPE_CONFIG = "config:write"
SCOPE_LIFECYCLE = "lifecycle:write"
SCOPE_BACKFILL = "backfill:write"
SCOPE_SIGNALS = "signals:write"
SCOPE_ARTIFACTS = "characterization_artifacts:write"
SCOPE_BOOT_PROBES = "tradeengine_boot_probes:write"
SCOPE_RATE_LIMITS = "config_rate_limits:write"
SCOPE_HEARTBEAT = "heartbeat_state:write"
SCOPE_TRADING_CONFIGS = "trading_configs:write"
SCOPE_LEVERAGE = "leverage_status:write"
SCOPES: tuple[str, ...] = (
    *DATASET_SCOPES,
    SCOPE_LEDGER,
    SCOPE_CONFIG,
    SCOPE_LIFECYCLE,
    SCOPE_BACKFILL,
    SCOPE_SIGNALS,
    SCOPE_ARTIFACTS,
    SCOPE_BOOT_PROBES,
    SCOPE_RATE_LIMITS,
    SCOPE_HEARTBEAT,
    SCOPE_TRADING_CONFIGS,
    SCOPE_LEVERAGE,
)

# What each of the platform's services does here (docs/PLATFORM_CONTRACT.md), by the names
# their DM_SERVICE_NAME defaults to. A DM_SERVICE_TOKENS entry may name other scopes.
DEFAULT_SERVICE_SCOPES: dict[str, frozenset[str]] = {
    "petrosa-tradeengine": frozenset(
        {
            SCOPE_READ,
            SCOPE_POSITIONS,
            SCOPE_PNL,
            SCOPE_LEDGER,
            SCOPE_BOOT_PROBES,
            SCOPE_TRADING_CONFIGS,
            SCOPE_LEVERAGE,
            SCOPE_HEARTBEAT,
            SCOPE_RATE_LIMITS,
        }
    ),
    "petrosa-bot-ta-analysis": frozenset(
        {SCOPE_READ, SCOPE_SIGNALS, SCOPE_CONFIG, SCOPE_LIFECYCLE, SCOPE_ARTIFACTS, SCOPE_HEARTBEAT, SCOPE_RATE_LIMITS}
    ),
    "petrosa-realtime-strategies": frozenset(
        {SCOPE_READ, SCOPE_SIGNALS, SCOPE_CONFIG, SCOPE_LIFECYCLE, SCOPE_HEARTBEAT, SCOPE_RATE_LIMITS}
    ),
    "petrosa-binance-data-extractor": frozenset({SCOPE_READ, SCOPE_KLINES}),
}

SERVICE_HEADER = "X-Petrosa-Service"
MAX_SERVICE_NAME = 64
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")  # fullmatch, bounded: linear
ANONYMOUS = "anonymous"
INVALID_NAME = "invalid-name"


class TokenConfigError(ValueError):
    """``DM_API_TOKENS``/``DM_SERVICE_TOKENS`` is malformed (raised at start-up, never showing a token)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class TokenEntry:
    digest: bytes
    scopes: frozenset[str]
    service: str | None = None  # set for DM_SERVICE_TOKENS entries
    label: str = "api-token"  # what the audit trail records for an anonymous token


@dataclass(frozen=True)
class TokenRegistry:
    entries: tuple[TokenEntry, ...]
    services: frozenset[str] = field(default_factory=frozenset)

    @property
    def configured(self) -> bool:
        return bool(self.entries)

    def match(self, token: str) -> TokenEntry | None:
        """The entry ``token`` belongs to, comparing against every entry."""
        given = _digest(token)
        found: TokenEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(given, entry.digest) and found is None:
                found = entry
        return found

    def scopes(self, token: str) -> frozenset[str] | None:
        """The scopes of ``token``, or None when it is not a configured token."""
        entry = self.match(token)
        return entry.scopes if entry is not None else None

    @staticmethod
    def allows(scopes: frozenset[str], scope: str) -> bool:
        return ALL in scopes or scope in scopes


def _scope_list(value: object, where: str) -> frozenset[str]:
    if isinstance(value, str):
        value = [s.strip() for s in value.split(",") if s.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise TokenConfigError(f"{where}: scopes must be a non-empty list of strings")
    unknown = [s for s in value if s not in (*SCOPES, ALL)]
    if unknown:
        raise TokenConfigError(f"{where}: unknown scope(s) {unknown}; known: {', '.join((*SCOPES, ALL))}")
    return frozenset(value)


def _check_token(token: object, where: str) -> str:
    if not isinstance(token, str) or len(token) < 16 or len(token) > 4096:
        raise TokenConfigError(f"{where}: a token must be a string of 16 to 4096 characters")
    return token


def _json_object(raw: str, variable: str, shape: str) -> Mapping[str, object]:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise TokenConfigError(f"{variable} must be a JSON object {shape}") from None
    if not isinstance(data, Mapping):
        raise TokenConfigError(f"{variable} must be a JSON object {shape}")
    return data


def parse_tokens(raw: str | None, legacy: str | None = None, services: str | None = None) -> TokenRegistry:
    """The registry from ``DM_API_TOKENS`` (JSON), ``DM_API_TOKEN`` (all scopes) and ``DM_SERVICE_TOKENS``."""
    entries: list[TokenEntry] = []
    if legacy:
        entries.append(TokenEntry(_digest(legacy), frozenset({ALL}), label="api-token"))
    if raw and raw.strip():
        data = _json_object(raw, "DM_API_TOKENS", "{token: [scopes]}")
        for n, (token, scopes) in enumerate(data.items()):
            where = f"DM_API_TOKENS entry #{n + 1}"
            entries.append(
                TokenEntry(_digest(_check_token(token, where)), _scope_list(scopes, where), label="api-token")
            )
    names: set[str] = set()
    if services and services.strip():
        data = _json_object(services, "DM_SERVICE_TOKENS", '{service: token} or {service: {"token", "scopes"}}')
        for n, (name, spec) in enumerate(data.items()):
            where = f"DM_SERVICE_TOKENS entry #{n + 1}"
            if not isinstance(name, str) or _SERVICE_NAME.fullmatch(name) is None:
                raise TokenConfigError(
                    f"{where}: a service name is 1-64 of a-z 0-9 . _ - (starting with a letter/digit)"
                )
            if isinstance(spec, Mapping):
                token = _check_token(spec.get("token"), f"{where} ({name})")
                given = spec.get("scopes")
                scopes = _scope_list(given, f"{where} ({name})") if given is not None else None
            else:
                token = _check_token(spec, f"{where} ({name})")
                scopes = None
            if scopes is None:
                scopes = DEFAULT_SERVICE_SCOPES.get(name)
                if scopes is None:
                    raise TokenConfigError(
                        f"{where}: {name!r} is not one of the platform's services "
                        f"({', '.join(DEFAULT_SERVICE_SCOPES)}): give its scopes, "
                        '{"<name>": {"token": "...", "scopes": [...]}}'
                    )
            entries.append(TokenEntry(_digest(token), scopes, service=name, label=name))
            names.add(name)
    return TokenRegistry(tuple(entries), frozenset(names))


# --- identifying a caller ------------------------------------------------------------------------


def service_name(header: str | None) -> str | None:
    """The ``X-Petrosa-Service`` value if it is a well-formed name; :data:`INVALID_NAME` otherwise."""
    if header is None or header == "":
        return None
    if len(header) > MAX_SERVICE_NAME or _SERVICE_NAME.fullmatch(header) is None:
        return INVALID_NAME
    return header


@dataclass(frozen=True)
class Identity:
    """Who a request says it is, and whether its token proves it.

    ``name`` is what the audit trail records: the service name, or the token's label, or
    ``anonymous``. ``problem`` says why an unverified request is unverified (``None`` when the
    token proved the identity).
    """

    name: str
    verified: bool
    scopes: frozenset[str]
    problem: Literal["no_token", "bad_token", "token_mismatch", "unknown_service", "bad_service_name"] | None = None

    @property
    def recorded_as(self) -> str:
        return self.name if self.verified else f"{self.name} (unverified)"


def identify(registry: TokenRegistry, header: str | None, token: str | None) -> Identity:
    """Match the service header and the token against the registry (pure; never raises)."""
    claimed = service_name(header)
    if claimed == INVALID_NAME:
        return Identity(INVALID_NAME, False, frozenset(), "bad_service_name")
    if not token:
        return Identity(claimed or ANONYMOUS, False, frozenset(), "no_token")
    entry = registry.match(token)
    if entry is None:
        problem: Literal["bad_token", "unknown_service"] = (
            "unknown_service" if claimed is not None and claimed not in registry.services else "bad_token"
        )
        return Identity(claimed or ANONYMOUS, False, frozenset(), problem)
    if entry.service is not None:
        if claimed is not None and claimed != entry.service:
            return Identity(claimed, False, frozenset(), "token_mismatch")
        return Identity(entry.service, True, entry.scopes)
    # An anonymous scoped token: the header (if any) labels the caller, the token proves the scopes.
    if claimed is not None and claimed in registry.services:
        return Identity(claimed, False, frozenset(), "token_mismatch")
    return Identity(claimed or entry.label, True, entry.scopes)


PROBLEM_MESSAGES = {
    "no_token": "a token is required: send 'Authorization: Bearer <token>' (and 'X-Petrosa-Service: <name>')",
    "bad_token": "the token is not valid",
    "token_mismatch": "the token is not the one configured for the service named in X-Petrosa-Service",
    "unknown_service": "the service named in X-Petrosa-Service has no token configured here (DM_SERVICE_TOKENS)",
    "bad_service_name": "X-Petrosa-Service must be 1-64 of a-z 0-9 . _ - (starting with a letter or digit)",
}


@dataclass(frozen=True)
class Decision:
    """The answer for one request: pass, or refuse with ``status``; ``reason`` labels what audit mode let pass."""

    allowed: bool
    status: int = 200
    message: str = ""
    reason: str = "verified"  # verified | off | open | no_token | bad_token | ... | scope | disabled


def decide(
    registry: TokenRegistry, identity: Identity, scope: str, mode: AuthMode, *, open_when_unset: bool
) -> Decision:
    """Whether ``identity`` may use ``scope`` under ``mode``.

    ``open_when_unset``: with no token configured at all the scope is open (reads) rather than
    disabled (writes answer 403 then, as they always have).
    """
    if mode == "off":
        return Decision(True, reason="off")
    if not registry.configured:
        if open_when_unset:
            return Decision(True, reason="open")
        refusal = Decision(
            False,
            403,
            "writes are disabled: none of DM_API_TOKEN, DM_API_TOKENS, DM_SERVICE_TOKENS is configured",
            "disabled",
        )
        return refusal if mode == "enforce" else Decision(True, reason="disabled")
    if identity.verified and TokenRegistry.allows(identity.scopes, scope):
        return Decision(True)
    if identity.verified:
        reason, status = "scope", 403
        who = identity.name if identity.name in registry.services else "the token"
        message = f"{who} lacks scope {scope!r} (it has: {', '.join(sorted(identity.scopes))})"
    else:
        reason, status = identity.problem or "bad_token", 401
        message = PROBLEM_MESSAGES[reason]
        if reason == "no_token":
            message = f"{message}; scope {scope!r} is needed"
    if mode == "audit":
        return Decision(True, reason=reason, message=message)
    return Decision(False, status, message, reason)


# --- the older interface, kept for callers that have one token and no service header -----------


# Refusals are the API's one auth error (api/errors.py): 401 no or unknown token, 403 scope missing.
ScopeDenied = AuthError


def authorize(registry: TokenRegistry, token: str | None, scope: str) -> None:
    """Raise :class:`ScopeDenied` unless ``token`` carries ``scope`` (enforce mode, no service header)."""
    decision = decide(registry, identify(registry, None, token), scope, "enforce", open_when_unset=False)
    if not decision.allowed:
        raise ScopeDenied(decision.status, decision.message)
