"""DICOMweb STOW-RS (PS3.18 §10.5), the pure parts: the ``multipart/related`` request body and the
Store Instances Response (DICOM JSON, PS3.18 F.2) with its HTTP status.

The multipart body is split by hand (RFC 2046: every delimiter is ``CRLF--boundary``, the first one
may open the body, the last is ``CRLF--boundary--``): the bytes of each part are returned exactly as
sent, whatever CR/LF bytes they hold.
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from prescreen.errors import InvalidStudyError, UnsupportedMediaTypeError

DICOM = "application/dicom"
MULTIPART_RELATED = "multipart/related"

# Failure Reason (0008,1197) values of the Store Instances Response (PS3.18 Table 10.5.3-2, PS3.4 C.4.2.1.4)
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

_PADDING = b" \t"


@dataclass(frozen=True)
class StoredRef:
    """One instance the server stored (or already had)."""

    sop_class_uid: str | None
    sop_instance_uid: str
    study_uid: str
    series_uid: str


@dataclass(frozen=True)
class FailedRef:
    """One instance the server did not store; the UIDs are unknown when the part could not be read."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    reason: int


def _param(message: email.message.Message, name: str) -> str | None:
    value = message.get_param(name)
    if value is None:
        return None
    return email.utils.collapse_rfc2231_value(value).strip()


def _content_type(value: str) -> email.message.Message:
    message = email.message.Message()
    message["Content-Type"] = value
    return message


#: RFC 2046 boundary characters, 1-70 of them, not ending in a space
BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")


def multipart_boundary(content_type: str) -> str:
    """The boundary of a STOW-RS request, once its media type is checked.

    A missing ``type`` parameter is accepted (each part's own ``Content-Type`` is still checked);
    any other ``type`` than ``application/dicom`` (e.g. ``application/dicom+json`` with bulk data) is
    refused.

    Args:
        content_type: the request's ``Content-Type`` header.

    Raises:
        UnsupportedMediaTypeError: not ``multipart/related``, or its ``type`` is not ``application/dicom``.
        InvalidStudyError: no ``boundary`` parameter.
    """
    message = _content_type(content_type)
    if not content_type.strip() or message.get_content_type() != MULTIPART_RELATED:
        raise UnsupportedMediaTypeError(
            f'STOW-RS takes multipart/related; type="{DICOM}", not {content_type.split(";")[0].strip() or "no type"}'
        )
    kind = _param(message, "type")
    if kind is not None and kind.lower() != DICOM:
        raise UnsupportedMediaTypeError(f"STOW-RS here takes parts of type {DICOM}, not {kind}")
    boundary = _param(message, "boundary")
    if not boundary:
        raise InvalidStudyError("the multipart/related content type has no boundary")
    if not BOUNDARY.fullmatch(boundary):
        raise InvalidStudyError("the multipart boundary must be 1-70 ASCII characters (RFC 2046)")
    return boundary


def _part_payload(part: bytes, index: int) -> bytes:
    """The payload of one part, after its headers (whose Content-Type must be ``application/dicom``)."""
    if part.startswith(b"\r\n"):  # no headers
        return part[2:]
    end = part.find(b"\r\n\r\n")
    if end < 0:
        raise InvalidStudyError(f"part {index} of the multipart body has no end of headers")
    headers = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(part[: end + 2])
    declared = headers.get("Content-Type")
    if declared is not None:
        kind = _content_type(str(declared)).get_content_type()
        if kind != DICOM:
            raise UnsupportedMediaTypeError(f"part {index} is {kind}; STOW-RS here takes {DICOM} parts only")
    return part[end + 4 :]


def parse_multipart_related(content_type: str, body: bytes) -> list[bytes]:
    """The payloads of a STOW-RS ``multipart/related; type="application/dicom"`` body.

    The preamble before the first delimiter and the epilogue after the close delimiter are ignored;
    a part may carry headers (its ``Content-Type``, when present, must be ``application/dicom``; a
    part without one is taken as ``application/dicom``, the ``type`` of the whole).

    Args:
        content_type: the request's ``Content-Type`` header.
        body: the raw request body.

    Raises:
        UnsupportedMediaTypeError: the request or one part is not ``application/dicom``.
        InvalidStudyError: no boundary, no part, no close delimiter (a truncated body), or a part without
            the end of its headers.
    """
    delimiter = b"\r\n--" + multipart_boundary(content_type).encode("latin-1")
    data = b"\r\n" + body  # the first delimiter may open the body, without the CRLF before it
    start = data.find(delimiter)
    if start < 0:
        raise InvalidStudyError("the multipart body has no part (its boundary does not occur)")
    payloads: list[bytes] = []
    position = start + len(delimiter)
    while True:
        if data.startswith(b"--", position):  # close delimiter; the rest is the epilogue
            break
        line_end = data.find(b"\r\n", position)
        if line_end < 0 or data[position:line_end].strip(_PADDING):
            raise InvalidStudyError("the multipart body has a malformed boundary line")
        following = data.find(delimiter, line_end)
        if following < 0:
            raise InvalidStudyError("the multipart body ends without its close delimiter (truncated?)")
        payloads.append(_part_payload(data[line_end + 2 : following], len(payloads) + 1))
        position = following + len(delimiter)
    if not payloads:
        raise InvalidStudyError("the multipart body has no part")
    return payloads


def _ref_item(sop_class_uid: str | None, sop_instance_uid: str | None) -> Dataset:
    item = Dataset()
    if sop_class_uid:
        item.ReferencedSOPClassUID = sop_class_uid
    if sop_instance_uid:
        item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def store_response(stored: Sequence[StoredRef], failed: Sequence[FailedRef], retrieve_base: str) -> dict[str, Any]:
    """The Store Instances Response (PS3.18 Table 10.5.3-3) as DICOM JSON.

    Retrieve URLs are ``<retrieve_base>/studies/<study>/series/<series>/instances/<sop>``; the
    top-level Retrieve URL (0008,1190) names the study when every stored instance is of one study.

    Args:
        stored: the instances stored (duplicates included: they are stored).
        failed: the instances refused, each with its Failure Reason.
        retrieve_base: the DICOMweb root URL of this service (e.g. ``http://host/dicomweb``).
    """
    base = retrieve_base.rstrip("/")
    response = Dataset()
    studies = {ref.study_uid for ref in stored}
    if len(studies) == 1:
        response.RetrieveURL = f"{base}/studies/{studies.pop()}"
    if failed:
        items = []
        for failure in failed:
            item = _ref_item(failure.sop_class_uid, failure.sop_instance_uid)
            item.FailureReason = failure.reason
            items.append(item)
        response.FailedSOPSequence = DicomSequence(items)
    if stored:
        items = []
        for ref in stored:
            item = _ref_item(ref.sop_class_uid, ref.sop_instance_uid)
            item.RetrieveURL = (
                f"{base}/studies/{ref.study_uid}/series/{ref.series_uid}/instances/{ref.sop_instance_uid}"
            )
            items.append(item)
        response.ReferencedSOPSequence = DicomSequence(items)
    return response.to_json_dict()


def stow_status(n_stored: int, n_failed: int) -> int:
    """The HTTP status of a Store Instances Response (PS3.18 §10.5.3).

    Args:
        n_stored: instances stored.
        n_failed: instances refused.

    Returns:
        200 when all were stored, 202 when some failed, 409 when none was stored.
    """
    if n_stored == 0:
        return 409
    return 202 if n_failed else 200
