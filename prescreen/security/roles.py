"""Roles and permissions: who may do what.

Human users hold one or more :class:`Role`; machine clients (PACS, modalities, edge nodes) hold the
fixed :data:`CLIENT_PERMISSIONS`. Each HTTP route requires exactly one :class:`Permission`.

Separation of duties (三员分立, GB/T 22239-2019 §8.1.4): the administrator, the security
administrator and the auditor are three different people; :func:`check_role_mix` refuses one user
holding two of them.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from prescreen.errors import InvalidUserError


class Permission(StrEnum):
    """What a route needs."""

    HEALTH = "health"
    SCREEN = "screen"
    INGEST = "ingest"
    STUDIES_READ = "studies:read"
    MODELS_READ = "models:read"
    MODELS_ADMIN = "models:admin"
    WORKLISTS_READ = "worklists:read"
    REPORTS_WRITE = "reports:write"
    STATS_READ = "stats:read"
    USERS_ADMIN = "users:admin"
    CLIENTS_ADMIN = "clients:admin"
    AUDIT_READ = "audit:read"


class Role(StrEnum):
    """What a human user is for."""

    READER = "reader"
    ADMIN = "admin"
    SECURITY_ADMIN = "security_admin"
    AUDITOR = "auditor"
    ML_ENGINEER = "ml_engineer"


SEPARATED_ROLES = frozenset({Role.ADMIN, Role.SECURITY_ADMIN, Role.AUDITOR})
"""No user may hold two of these."""

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.READER: frozenset(
        {
            Permission.HEALTH,
            Permission.SCREEN,
            Permission.INGEST,
            Permission.STUDIES_READ,
            Permission.MODELS_READ,
            Permission.WORKLISTS_READ,
            Permission.REPORTS_WRITE,
            Permission.STATS_READ,
        }
    ),
    Role.ADMIN: frozenset({Permission.HEALTH, Permission.USERS_ADMIN, Permission.STATS_READ, Permission.MODELS_READ}),
    Role.SECURITY_ADMIN: frozenset({Permission.HEALTH, Permission.CLIENTS_ADMIN}),
    Role.AUDITOR: frozenset({Permission.HEALTH, Permission.AUDIT_READ}),
    Role.ML_ENGINEER: frozenset(
        {Permission.HEALTH, Permission.MODELS_READ, Permission.MODELS_ADMIN, Permission.STATS_READ, Permission.SCREEN}
    ),
}

CLIENT_PERMISSIONS = frozenset(
    {Permission.HEALTH, Permission.SCREEN, Permission.INGEST, Permission.STUDIES_READ, Permission.MODELS_READ}
)
"""What a machine client (PACS, modality, edge node) may do: send, screen, and follow its own studies."""


def parse_roles(values: Iterable[str]) -> tuple[Role, ...]:
    """Roles from their names, deduplicated in vocabulary order.

    Raises:
        InvalidUserError: an unknown role name, or a forbidden mix (:func:`check_role_mix`).
    """
    roles: set[Role] = set()
    for value in values:
        try:
            roles.add(Role(value.strip().lower()))
        except ValueError:
            raise InvalidUserError(f"role {value!r} is not one of {', '.join(Role)}") from None
    if not roles:
        raise InvalidUserError(f"a user needs at least one role ({', '.join(Role)})")
    check_role_mix(roles)
    return tuple(r for r in Role if r in roles)


def check_role_mix(roles: Iterable[Role]) -> None:
    """Refuse a user holding two of admin, security_admin and auditor (三员分立).

    Raises:
        InvalidUserError: the forbidden pair is named.
    """
    held = sorted(SEPARATED_ROLES.intersection(roles))
    if len(held) > 1:
        raise InvalidUserError(
            f"roles {' and '.join(held)} must be held by different users (separation of duties, 三员分立)"
        )


def permissions_of_roles(roles: Iterable[Role]) -> frozenset[Permission]:
    """The union of the permissions of ``roles``."""
    granted: set[Permission] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS[role]
    return frozenset(granted)
