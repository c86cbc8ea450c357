"""The DICOM listener (pynetdicom): C-ECHO and C-STORE into the store.

Protocol errors become protocol statuses here, at the edge: success (0x0000) only once the
instance is durable; 0xC210 when the dataset cannot be decoded; 0xA900 when it lacks a UID the
store needs; 0xA700 when it cannot be stored; 0x0124 (refused: not authorized) when the sender is
no registered client and anonymous ingest is off. The same SOP Instance UID twice is stored once.

Senders are machine clients (``prescreen clients add --ae``): an association is theirs when it comes
from one of their AE titles and networks, or when it carries their API key by DICOM User Identity
Negotiation (a username+passcode with the key as passcode, or the key alone as username or JWT).
Their studies are stamped with the client's institution, whatever the dataset says.
"""

from __future__ import annotations

import logging
import ssl
import weakref
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, _config, evt, sop_class
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from prescreen.config import Settings
from prescreen.errors import InvalidStudyError, MissingIdentifierError, NotAuthenticatedError
from prescreen.security.audit import Actor, ActorKind, AuditEntry, AuditEvent, Outcome
from prescreen.store.audit import record_now
from prescreen.store.clients import authenticate_client, client_for_ae
from prescreen.store.ingest import Ingestor
from prescreen.store.users import Principal

log = logging.getLogger(__name__)

TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

ULTRASOUND_IMAGE_STORAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.3"
# pynetdicom knows no service class for retired SOP classes until told: both are plain storage
for _uid, _keyword in (
    (ULTRASOUND_IMAGE_STORAGE_RETIRED, "UltrasoundImageStorageRetired"),
    (ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED, "UltrasoundMultiFrameImageStorageRetired"),
):
    if not hasattr(sop_class, _keyword):
        sop_class.register_uid(_uid, _keyword, StorageServiceClass)

STORAGE_CLASSES = [
    uid.ComputedRadiographyImageStorage,
    uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing,
    uid.UltrasoundImageStorage,
    uid.UltrasoundMultiFrameImageStorage,
    # retired in 1993, still sent by older ultrasound machines in county hospitals
    ULTRASOUND_IMAGE_STORAGE_RETIRED,
    ULTRASOUND_MULTIFRAME_IMAGE_STORAGE_RETIRED,
    uid.SecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    uid.CTImageStorage,
    uid.EnhancedCTImageStorage,
    uid.MRImageStorage,
    uid.EnhancedMRImageStorage,
    uid.TwelveLeadECGWaveformStorage,
    uid.GeneralECGWaveformStorage,
    uid.AmbulatoryECGWaveformStorage,
]

SUCCESS = 0x0000
NOT_AUTHORIZED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_DECODE = 0xC210


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO: at most 64 characters
    return status


def store_status(ingestor: Ingestor, data: bytes, sender: str | None, sent_by: Sender | None = None) -> Dataset:
    """Store one encoded instance and say how it went, as a C-STORE response status."""
    try:
        if sent_by is None:
            received = ingestor.store_dicom(data, sender=sender)
        else:
            received = ingestor.store_dicom(data, sender=sender, institution=sent_by.institution, actor=sent_by.actor)
    except MissingIdentifierError as exc:
        return _status(DATASET_MISMATCH, str(exc))
    except InvalidStudyError:
        return _status(CANNOT_DECODE, "the dataset could not be decoded")
    except Exception as exc:  # the type only: a database error's text may quote patient fields
        log.error("C-STORE from %s could not be stored: %s", sender, type(exc).__name__)
        return _status(OUT_OF_RESOURCES, "the instance could not be stored")
    if received.duplicate:
        log.info("C-STORE from %s: duplicate instance, stored once", sender)
    return _status(SUCCESS)


@dataclass(frozen=True)
class Sender:
    """Who sent an instance: the audit actor and the institution its studies are stamped with."""

    actor: Actor
    institution: str | None


def identify(
    event: Any, ingestor: Ingestor, verified: MutableMapping[Any, Principal], anonymous: bool
) -> Sender | None:
    """The sender of an association: a client by its key (User Identity) or its AE title and
    address; anonymous when anonymous ingest is on; ``None`` (refuse) otherwise."""
    ae_title = str(event.assoc.requestor.ae_title).strip()
    host = _peer_host(event.assoc)
    where = f"{ae_title}@{host}"
    client = verified.get(event.assoc) or client_for_ae(ingestor.sessions, ae_title, host)
    if client is not None:
        return Sender(Actor(ActorKind.CLIENT, client.login, where), client.institution)
    if anonymous:
        return Sender(Actor(ActorKind.ANONYMOUS, ae_title or "unknown", where), None)
    return None


def _handle_user_id(
    event: Any, ingestor: Ingestor, verified: MutableMapping[Any, Principal]
) -> tuple[bool, bytes | None]:
    """DICOM User Identity Negotiation: accept an association that presents a client's API key."""
    fields = (event.secondary_field, event.primary_field) if event.user_id_type == 2 else (event.primary_field,)
    for value in fields:
        key = bytes(value or b"").decode("utf-8", "replace").strip()
        if not key:
            continue
        try:
            client = authenticate_client(ingestor.sessions, key, _peer_host(event.assoc))
        except NotAuthenticatedError:
            continue
        verified[event.assoc] = client
        return True, None
    log.warning("refused a DICOM association: its user identity is no valid client key")
    return False, None


def _handle_store(
    event: Any,
    ingestor: Ingestor,
    limit: int,
    verified: MutableMapping[Any, Principal],
    anonymous: bool,
    senders: MutableMapping[Any, Sender],
) -> Dataset:
    """The instance arrives in a temporary Part 10 file (pynetdicom writes it as the PDUs come in,
    so a large instance does not sit in memory); over ``limit`` bytes it is refused unread. The
    sender is identified once per association (its AE title, address and key do not change)."""
    sender = str(event.assoc.requestor.ae_title).strip() or None
    sent_by = senders.get(event.assoc)
    if sent_by is None:
        sent_by = identify(event, ingestor, verified, anonymous)
        if sent_by is not None:
            senders[event.assoc] = sent_by
    if sent_by is None:
        log.warning("C-STORE refused: the calling AE title is no registered client and anonymous ingest is off")
        where = f"{sender or ''}@{_peer_host(event.assoc)}"
        refusal = AuditEntry(
            AuditEvent.ACCESS_DENIED,
            Actor(ActorKind.ANONYMOUS, sender or "unknown", where),
            Outcome.MINOR_FAILURE,
            detail={"via": "C-STORE", "status": NOT_AUTHORIZED},
        )
        try:
            record_now(ingestor.sessions, refusal)
        except Exception as exc:  # the refusal stands even when the trail cannot be written
            log.error("could not record a refused C-STORE: %s", type(exc).__name__)
        return _status(NOT_AUTHORIZED, "not authorized: register this AE as a client")
    try:
        path = Path(event.dataset_path)
        if path.stat().st_size > limit:
            return _status(OUT_OF_RESOURCES, f"instance over the limit of {limit} bytes")
        data = path.read_bytes()
    except OSError:
        return _status(OUT_OF_RESOURCES, "the instance could not be received")
    return store_status(ingestor, data, sender, sent_by)


def _handle_echo(_event: Any) -> int:
    return SUCCESS


def make_ae(settings: Settings) -> AE:
    """An AE with the storage contexts, the AE title (a different called AE title is rejected,
    reason 0x07), the calling AE allow-list and the timeouts of ``settings``. A connection that
    sends no association request within ``PRESCREEN_DICOM_ACSE_TIMEOUT_SECONDS`` is closed, so idle
    connections cannot hold the listener's association slots."""
    _config.STORE_RECV_CHUNKED_DATASET = True  # received datasets go to a temporary file, not memory
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.maximum_pdu_size = 0  # no limit: large images in fewer PDUs
    ae.network_timeout = settings.dicom_network_timeout_seconds
    ae.acse_timeout = settings.dicom_acse_timeout_seconds
    ae.dimse_timeout = settings.dicom_network_timeout_seconds
    ae.maximum_associations = settings.dicom_max_associations
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    for storage_class in STORAGE_CLASSES:
        ae.add_supported_context(storage_class, TRANSFER_SYNTAXES)
    if settings.dicom_allowed_aes:
        ae.require_calling_aet = list(settings.dicom_allowed_aes)
    return ae


def limit_per_address(server: ThreadedAssociationServer, limit: int) -> None:
    """Close a new connection from an address that already holds ``limit`` associations (open or
    still negotiating), so that one host cannot take every slot and well-behaved senders keep one."""

    def verify_request(_request: object, client_address: tuple[str, int] | str) -> bool:
        host = client_address[0] if isinstance(client_address, tuple) else client_address
        held = sum(1 for assoc in server.active_associations if _peer_host(assoc) == host)
        if held >= limit:
            log.warning("closed a connection: its address already holds %d associations", held)
            return False
        return True

    server.verify_request = verify_request  # type: ignore[method-assign,assignment]


def _peer_host(assoc: Any) -> str | None:
    try:
        return str(assoc.requestor.address)
    except (AttributeError, ValueError):  # not yet known
        return None


def start_listener(
    ingestor: Ingestor, settings: Settings, host: str | None = None, *, tls: bool = False
) -> ThreadedAssociationServer | None:
    """Start listening (non-blocking); ``None`` when the port is 0. ``tls``: the DICOM TLS listener on
    ``PRESCREEN_DICOM_TLS_PORT`` with ``PRESCREEN_TLS_CERT``/``PRESCREEN_TLS_KEY`` (``None`` unless
    all three are set)."""
    port = settings.dicom_tls_port if tls else settings.dicom_port
    if port == 0 or (tls and (settings.tls_cert is None or settings.tls_key is None)):
        return None
    ae = make_ae(settings)
    limit = settings.max_upload_bytes
    verified: MutableMapping[Any, Principal] = weakref.WeakKeyDictionary()
    senders: MutableMapping[Any, Sender] = weakref.WeakKeyDictionary()
    anonymous = "ingest" in settings.anonymous_permissions
    handlers: list[Any] = [
        (evt.EVT_C_STORE, _handle_store, [ingestor, limit, verified, anonymous, senders]),
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_USER_ID, _handle_user_id, [ingestor, verified]),
    ]
    address = (host or settings.host, port)
    context = server_tls_context(settings) if tls else None
    server = ae.start_server(address, block=False, evt_handlers=handlers, ssl_context=context)
    assert server is not None  # non-blocking: the running server
    limit_per_address(server, settings.dicom_max_associations_per_address)
    log.info("DICOM%s listener %s on %s:%d", " TLS" if tls else "", settings.dicom_ae_title, *address)
    return server


def server_tls_context(settings: Settings) -> ssl.SSLContext:
    """TLS 1.2+ with the service's certificate (the BCP 195 profile DCMTK uses by default)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context
