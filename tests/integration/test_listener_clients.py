"""Senders as machine clients on the DICOM listener: with anonymous ingest off, an unknown calling
AE is refused (0x0124) and audited; a client's AE title, or its API key by User Identity
Negotiation, is accepted; the study is stamped with the client's institution, not the dataset's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ComputedRadiographyImageStorage
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from prescreen.config import Settings
from prescreen.integration.listener import NOT_AUTHORIZED, SUCCESS, start_listener
from prescreen.pipeline.runtime import open_store
from prescreen.security.keys import audit_public_key
from prescreen.store.audit import AuditQuery, search, verify
from prescreen.store.clients import add_client, revoke_client
from prescreen.store.ingest import Ingestor
from prescreen.store.schema import Study
from tests.integration.test_listener import AE_TITLE, HOST, free_port, synthetic


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Ingestor, Settings]]:
    settings = Settings(dicom_port=free_port(), dicom_ae_title=AE_TITLE, home=tmp_path, anonymous_permissions=[])
    ingestor = open_store(settings)
    server: ThreadedAssociationServer | None = start_listener(ingestor, settings, host=HOST)
    assert server is not None
    yield ingestor, settings
    server.shutdown()


def send(port: int, calling: str, identity: UserIdentityNegotiation | None = None) -> tuple[bool, int | None, str]:
    """C-STORE one CR with InstitutionName "Elsewhere"; (associated, status, study uid)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    ds = synthetic()
    ds.InstitutionName = "Elsewhere"
    assoc = ae.associate(HOST, port, ae_title=AE_TITLE, ext_neg=[identity] if identity else None)
    if not assoc.is_established:
        return False, None, ds.StudyInstanceUID
    try:
        status = assoc.send_c_store(ds)
        return True, int(status.Status) if status else None, ds.StudyInstanceUID
    finally:
        assoc.release()


def institution_of(ingestor: Ingestor, study_uid: str) -> str | None:
    with ingestor.sessions() as session:
        return session.scalars(select(Study.institution).where(Study.study_uid == study_uid)).one_or_none()


def key_identity(key: str, kind: int = 2) -> UserIdentityNegotiation:
    identity = UserIdentityNegotiation()
    identity.user_identity_type = kind
    identity.primary_field = b"pacs-clinic7" if kind == 2 else key.encode()
    if kind == 2:
        identity.secondary_field = key.encode()
    return identity


def test_an_unknown_ae_is_refused_and_the_refusal_audited(listener: tuple[Ingestor, Settings]) -> None:
    ingestor, settings = listener
    associated, status, study_uid = send(settings.dicom_port, "STRANGER")
    assert (associated, status) == (True, NOT_AUTHORIZED)
    assert institution_of(ingestor, study_uid) is None  # nothing stored
    with ingestor.sessions() as session:
        denied, _ = search(session, AuditQuery(event="access-denied"))
    assert [(r.actor, r.outcome) for r in denied] == [("STRANGER", 4)]


def test_a_client_ae_is_accepted_and_stamps_its_institution(listener: tuple[Ingestor, Settings]) -> None:
    ingestor, settings = listener
    add_client(ingestor.sessions, name="pacs-clinic7", institution="clinic-7", ae_titles=["PACS7"])
    associated, status, study_uid = send(settings.dicom_port, "PACS7")
    assert (associated, status) == (True, SUCCESS)
    assert institution_of(ingestor, study_uid) == "clinic-7"  # not the dataset's "Elsewhere"
    with ingestor.sessions() as session:
        received, _ = search(session, AuditQuery(event="instance-received"))
    assert [(r.actor, r.actor_kind, r.study_uid) for r in received] == [("pacs-clinic7", "client", study_uid)]
    assert received[0].address is not None and received[0].address.startswith("PACS7@")
    assert verify(ingestor.sessions, audit_public_key(settings)).ok


@pytest.mark.parametrize("kind", [1, 2])
def test_a_key_by_user_identity_negotiation_is_accepted(listener: tuple[Ingestor, Settings], kind: int) -> None:
    ingestor, settings = listener
    _, key = add_client(ingestor.sessions, name="pacs-clinic7", institution="clinic-7")
    associated, status, study_uid = send(settings.dicom_port, "ANYAE", key_identity(key, kind))
    assert (associated, status) == (True, SUCCESS)
    assert institution_of(ingestor, study_uid) == "clinic-7"


def test_a_wrong_or_revoked_key_rejects_the_association(listener: tuple[Ingestor, Settings]) -> None:
    ingestor, settings = listener
    _, key = add_client(ingestor.sessions, name="pacs-clinic7", institution="clinic-7")
    assert send(settings.dicom_port, "ANYAE", key_identity("psk_" + "x" * 43))[0] is False
    with ingestor.sessions.begin() as session:
        revoke_client(session, "pacs-clinic7")
    assert send(settings.dicom_port, "ANYAE", key_identity(key))[0] is False
