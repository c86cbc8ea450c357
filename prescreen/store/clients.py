"""Machine clients: a PACS, modality or edge node of one institution, with an API key (shown once,
stored as its SM3 hash), the AE titles it sends from and the networks it may call from."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from prescreen.errors import ConflictError, InvalidUserError, NotAuthenticatedError, NotFoundError
from prescreen.security.roles import CLIENT_PERMISSIONS
from prescreen.security.sm import sm3_hex
from prescreen.store.schema_security import Client
from prescreen.store.users import INSTITUTION, Principal

KEY_PREFIX = "psk_"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
AE = re.compile(r"^[ -~]{1,16}$")


@dataclass(frozen=True)
class ClientInfo:
    name: str
    institution: str
    ae_titles: tuple[str, ...]
    networks: tuple[str, ...]
    active: bool
    created_at: datetime


def _info(row: Client) -> ClientInfo:
    return ClientInfo(
        row.name, row.institution, tuple(row.ae_titles or ()), tuple(row.networks or ()), row.active, row.created_at
    )


def is_client_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def add_client(
    sessions: sessionmaker[Session],
    *,
    name: str,
    institution: str,
    ae_titles: Sequence[str] = (),
    networks: Sequence[str] = (),
) -> tuple[ClientInfo, str]:
    """Register a client; returns it and its API key (the only time the key is seen).

    Raises:
        InvalidUserError: a malformed name, institution, AE title or network.
        ConflictError: the name is taken.
    """
    name = name.strip().lower()
    if not NAME.fullmatch(name):
        raise InvalidUserError(f"client name {name!r}: 2–64 lowercase letters, digits, '.', '_' or '-'")
    if not INSTITUTION.fullmatch(institution.strip()):
        raise InvalidUserError(f"institution {institution!r}: letters, digits, spaces and '.', '(', ')', '-'")
    aes = [a.strip() for a in ae_titles if a.strip()]
    bad_ae = [a for a in aes if not AE.fullmatch(a) or "\\" in a]
    if bad_ae:
        raise InvalidUserError(f"AE title {bad_ae[0]!r}: 1–16 printable characters, no backslash")
    nets = []
    for value in networks:
        try:
            nets.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise InvalidUserError(f"network {value!r} is not an IP address or CIDR (e.g. 10.7.0.0/16)") from None
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = Client(
        name=name,
        institution=institution.strip(),
        ae_titles=aes,
        networks=nets,
        key_hash=sm3_hex(key.encode()),
        active=True,
        created_at=datetime.now(UTC),
    )
    try:
        with sessions.begin() as session:
            session.add(row)
    except IntegrityError as exc:
        raise ConflictError(f"client {name!r} exists") from exc
    return _info(row), key


def revoke_client(session: Session, name: str) -> ClientInfo:
    row = session.scalars(select(Client).where(Client.name == name.strip().lower())).one_or_none()
    if row is None:
        raise NotFoundError(f"no client {name!r}")
    row.active = False
    row.revoked_at = datetime.now(UTC)
    return _info(row)


def list_clients(sessions: sessionmaker[Session]) -> list[ClientInfo]:
    with sessions() as session:
        return [_info(r) for r in session.scalars(select(Client).order_by(Client.name))]


def _in_networks(address: str | None, networks: Sequence[str]) -> bool:
    if not networks:
        return True
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n) for n in networks)


def client_principal(row: Client) -> Principal:
    return Principal(
        id=row.id,
        login=row.name,
        name=row.name,
        grade="none",
        specialties=(),
        institution=row.institution,
        is_admin=False,
        roles=(),
        institutions=(row.institution,),
        kind="client",
        permissions=CLIENT_PERMISSIONS,
    )


def authenticate_client(sessions: sessionmaker[Session], key: str, address: str | None) -> Principal:
    """The client holding ``key``, calling from ``address``.

    Raises:
        NotAuthenticatedError: an unknown or revoked key, or a call from outside its networks.
    """
    with sessions() as session:
        row = session.scalars(select(Client).where(Client.key_hash == sm3_hex(key.encode()))).one_or_none()
    if row is None or not row.active:
        raise NotAuthenticatedError("the API key is not valid (unknown or revoked)")
    if not _in_networks(address, row.networks or []):
        raise NotAuthenticatedError("this client may not call from this address")
    return client_principal(row)


def client_for_ae(sessions: sessionmaker[Session], ae_title: str, address: str | None) -> Principal | None:
    """The active client that sends as ``ae_title`` from ``address``, if any."""
    with sessions() as session:
        rows = session.scalars(select(Client).where(Client.active.is_(True))).all()
    for row in rows:
        if ae_title in (row.ae_titles or []) and _in_networks(address, row.networks or []):
            return client_principal(row)
    return None
