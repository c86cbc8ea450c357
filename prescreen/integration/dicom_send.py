"""Send DICOM instances (e.g. the result SR) to a PACS by C-STORE, as a pynetdicom SCU."""

from __future__ import annotations

import logging
import ssl
import string
from collections.abc import Sequence
from dataclasses import dataclass

import pydicom
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from prescreen.config import get_settings
from prescreen.errors import DeliveryError, InvalidDestinationError

logger = logging.getLogger(__name__)

MAX_AE_TITLE = 16
MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1..255
SUCCESS_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})  # success, and the warnings that store the instance
LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # pynetdicom converts between these
AE_CHARACTERS = frozenset(string.printable) - frozenset("\\\t\n\r\x0b\x0c")


def check_ae_title(title: str, what: str = "AE title") -> str:
    """Return the AE title without its insignificant leading/trailing spaces, if it is valid.

    Args:
        title: the AE title.
        what: what the title is, for the error message.

    Returns:
        The stripped title.

    Raises:
        InvalidDestinationError: when the title is empty, longer than 16 characters, or has a
            backslash or a control character.
    """
    stripped = title.strip(" ")
    if not stripped:
        raise InvalidDestinationError(f"{what} is empty")
    if len(stripped) > MAX_AE_TITLE:
        raise InvalidDestinationError(f"{what} {stripped!r} is longer than {MAX_AE_TITLE} characters")
    if not set(stripped) <= AE_CHARACTERS:
        raise InvalidDestinationError(f"{what} {stripped!r} has a backslash, a control or a non-ASCII character")
    return stripped


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM C-STORE SCP: its AE title, host and port.

    Args:
        ae_title: the called AE title (1 to 16 characters).
        host: host name or IP address (IPv6 without brackets).
        port: TCP port, 1 to 65535.

    Raises:
        InvalidDestinationError: when a field is not valid.
    """

    ae_title: str
    host: str
    port: int
    #: DICOM TLS (``tls:AE@host:port``; the server's certificate checked against the system's CAs and
    #: ``PRESCREEN_DICOM_TLS_CA``)
    tls: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "called AE title"))
        if not self.host or any(c.isspace() or c in "/@[]" for c in self.host):
            raise InvalidDestinationError(f"host {self.host!r} is not a host name or IP address")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise InvalidDestinationError(f"port {self.port!r} is not between 1 and 65535")

    @classmethod
    def parse(cls, text: str) -> DicomDestination:
        """Parse ``AE@host:port`` (an IPv6 host in brackets: ``AE@[::1]:104``), or ``tls:AE@host:port``
        for DICOM TLS (port 2762 by convention).

        Args:
            text: the destination.

        Returns:
            The destination.

        Raises:
            InvalidDestinationError: when text is not of that form, or a part is not valid.
        """
        form = "expected AE@host:port (or tls:AE@host:port), e.g. PACS@pacs.example.org:104"
        text = text.strip()
        tls = text.lower().startswith("tls:")
        if tls:
            text = text[4:]
        ae_title, at, address = text.rpartition("@")
        if not at or not ae_title:
            raise InvalidDestinationError(f"DICOM destination {text!r}: {form}")
        if address.startswith("["):
            host, bracket, rest = address[1:].partition("]")
            if not bracket or not rest.startswith(":"):
                raise InvalidDestinationError(f"DICOM destination {text!r}: {form}")
            port_text = rest[1:]
        else:
            host, colon, port_text = address.rpartition(":")
            if not colon or ":" in host:
                raise InvalidDestinationError(f"DICOM destination {text!r}: {form}")
        if not (port_text.isascii() and port_text.isdigit()):
            raise InvalidDestinationError(f"DICOM destination {text!r}: port {port_text!r} is not a number")
        return cls(ae_title=ae_title, host=host, port=int(port_text), tls=tls)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls:' if self.tls else ''}{self.ae_title}@{host}:{self.port}"


def client_tls_context() -> ssl.SSLContext:
    """TLS 1.2+ checking the server's certificate and name against the system's CAs and
    ``PRESCREEN_DICOM_TLS_CA`` (a PEM file of the hospital's CA, or of a self-signed server)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    ca = get_settings().dicom_tls_ca
    if ca is not None:
        context.load_verify_locations(cafile=str(ca))
    return context


def c_store(
    datasets: Sequence[pydicom.Dataset],
    destination: DicomDestination,
    *,
    calling_ae: str = "PRESCREEN",
    timeout: float = 30,
) -> None:
    """Send the datasets to the destination by C-STORE (one association per 128 presentation contexts).

    A context is requested for each SOP class and transfer syntax of the datasets; little endian
    uncompressed datasets may go as explicit or implicit VR, the others only as they are.

    Args:
        datasets: the instances to send (with file meta, or in memory: then little endian).
        destination: the C-STORE SCP.
        calling_ae: our AE title.
        timeout: seconds to wait for the connection, for each association step and for each answer.

    Raises:
        DeliveryError: when a dataset lacks its SOP UIDs, the association is rejected, aborted or
            times out, the destination accepts no context for a dataset, or a store status is
            neither success nor a warning that stores the instance (0xB000, 0xB006, 0xB007).
        InvalidDestinationError: when calling_ae is not a valid AE title.
        ValueError: when timeout is not positive.
    """
    calling = check_ae_title(calling_ae, "calling AE title")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout}")
    groups: dict[tuple[str, str], list[pydicom.Dataset]] = {}
    for index, ds in enumerate(datasets):
        groups.setdefault(_context_key(ds, index), []).append(ds)
    keys = list(groups)
    for start in range(0, len(keys), MAX_CONTEXTS):
        batch = keys[start : start + MAX_CONTEXTS]
        contexts = [_context(sop_class, syntax) for sop_class, syntax in batch]
        _send(contexts, [ds for key in batch for ds in groups[key]], destination, calling, timeout)
    if datasets:
        logger.info("C-STORE of %d instance(s) to %s done", len(datasets), destination)


def c_echo(destination: DicomDestination, *, calling_ae: str = "PRESCREEN", timeout: float = 1.0) -> None:
    """Verify that the destination answers (C-ECHO): association, echo and release within ``timeout``
    seconds per step.

    Args:
        destination: the SCP to verify.
        calling_ae: our AE title.
        timeout: seconds to wait for the connection, for each association step and for the answer.

    Raises:
        DeliveryError: no association (nothing listening, unreachable, rejected, no answer in time),
            or the echo did not succeed.
        InvalidDestinationError: when calling_ae is not a valid AE title.
        ValueError: when timeout is not positive.
    """
    calling = check_ae_title(calling_ae, "calling AE title")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, not {timeout}")
    ae = AE(ae_title=calling)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    tls_args = (client_tls_context(), destination.host) if destination.tls else None
    try:
        try:
            assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
        except (OSError, ValueError, RuntimeError) as exc:
            raise DeliveryError(f"cannot associate with {destination}: {exc}") from exc
        if not assoc.is_established:
            raise DeliveryError(f"cannot associate with {destination}: {_why_not(assoc, timeout)}")
        try:
            status = assoc.send_c_echo()
        except (ValueError, AttributeError, RuntimeError) as exc:
            raise DeliveryError(f"C-ECHO to {destination} failed: {exc}") from exc
        finally:
            if assoc.is_established:
                assoc.release()
        code = status.get("Status") if status else None
        if code is None or int(code) != 0x0000:
            raise DeliveryError(f"C-ECHO to {destination} failed: no success status")
    finally:
        ae.shutdown()


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax:
        return UID(syntax)
    implicit, little = ds.original_encoding
    if implicit and little:
        return ImplicitVRLittleEndian
    if implicit is False and little is False:
        return ExplicitVRBigEndian
    return ExplicitVRLittleEndian


def _context_key(ds: pydicom.Dataset, index: int) -> tuple[str, str]:
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        raise DeliveryError(f"dataset {index + 1} lacks its SOP Class UID or SOP Instance UID; nothing was sent")
    syntax = _transfer_syntax(ds)
    return str(ds.SOPClassUID), "" if syntax in LITTLE_ENDIAN else str(syntax)


def _context(sop_class: str, syntax: str) -> PresentationContext:
    syntaxes: list[str | UID] = [syntax] if syntax else list(LITTLE_ENDIAN)
    return build_context(sop_class, syntaxes)


def _prepared(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The dataset itself if it has a transfer syntax in its file meta; else a shallow copy that has one."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return ds
    copy = pydicom.Dataset(ds)
    copy.file_meta = pydicom.dataset.FileMetaDataset(meta) if meta is not None else pydicom.dataset.FileMetaDataset()
    copy.file_meta.TransferSyntaxUID = _transfer_syntax(ds)
    return copy


def _send(
    contexts: list[PresentationContext],
    datasets: list[pydicom.Dataset],
    destination: DicomDestination,
    calling_ae: str,
    timeout: float,
) -> None:
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeout
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    tls_args = (client_tls_context(), destination.host) if destination.tls else None
    try:
        assoc = ae.associate(
            destination.host, destination.port, contexts=contexts, ae_title=destination.ae_title, tls_args=tls_args
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise DeliveryError(f"cannot associate with {destination}: {exc}") from exc
    if not assoc.is_established:
        raise DeliveryError(f"cannot associate with {destination}: {_why_not(assoc, timeout)}")
    done = False
    try:
        for ds in datasets:
            _store(assoc, ds, destination, timeout)
        done = True
    finally:
        if done:
            assoc.release()
        elif assoc.is_established:
            assoc.abort()
        ae.shutdown()


def _why_not(assoc: Association, timeout: float) -> str:
    if assoc.is_rejected:
        return "the association was rejected (check the called and calling AE titles and that we may store)"
    if assoc.is_aborted:
        return "the association was aborted"
    return f"no association within {timeout:g} s (nothing listening, unreachable or no answer)"


def _store(assoc: Association, ds: pydicom.Dataset, destination: DicomDestination, timeout: float) -> None:
    sop_class = UID(str(ds.SOPClassUID))
    try:
        status = assoc.send_c_store(_prepared(ds))
    except (ValueError, AttributeError, RuntimeError) as exc:
        if not assoc.is_established:
            raise DeliveryError(f"the association with {destination} ended during C-STORE: {exc}") from exc
        raise DeliveryError(f"{destination} cannot take a {sop_class.name} instance: {exc}") from exc
    code = status.get("Status")
    if code is None:
        raise DeliveryError(
            f"C-STORE of a {sop_class.name} instance to {destination} failed: "
            f"no answer within {timeout:g} s, or the association was aborted"
        )
    if int(code) not in SUCCESS_STATUSES:
        # The peer's Error Comment is left out: it may quote attributes of the instance.
        raise DeliveryError(
            f"C-STORE of a {sop_class.name} instance to {destination} failed with status 0x{int(code):04X}"
        )
