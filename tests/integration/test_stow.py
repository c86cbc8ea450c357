"""STOW-RS pure parts: the multipart/related body, the Store Instances Response and its status."""

from __future__ import annotations

import pydicom
import pytest

from prescreen.errors import InvalidStudyError, UnsupportedMediaTypeError
from prescreen.integration.stow import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    FailedRef,
    StoredRef,
    multipart_boundary,
    parse_multipart_related,
    store_response,
    stow_status,
)

CT = 'multipart/related; type="application/dicom"; boundary="b-1"'
# payloads full of the bytes a careless splitter trips on: CR, LF, CRLF, "--", a near-boundary
TRICKY = [
    b"\r\n--b-\r\n\r\n\x00\xff\r",
    b"\n\r\n\r--b-2 x\r\n",
    b"\r\n",
    b"plain",
]


def multipart(
    payloads: list[bytes], boundary: str = "b-1", headers: str = "Content-Type: application/dicom\r\n"
) -> bytes:
    body = b"".join(b"\r\n--" + boundary.encode() + b"\r\n" + headers.encode() + b"\r\n" + p for p in payloads)
    return body + b"\r\n--" + boundary.encode() + b"--"


def test_binary_payloads_come_back_exactly() -> None:
    assert parse_multipart_related(CT, multipart(TRICKY)) == TRICKY


def test_preamble_epilogue_padding_and_first_boundary_at_start() -> None:
    body = (
        b"this is the preamble\r\n--b-1  \t\r\nContent-Type: application/dicom\r\nContent-Length: 3\r\n\r\nabc"
        b"\r\n--b-1\r\n\r\ndef"  # a part without headers is taken as the multipart's type
        b"\r\n--b-1--\r\nthis is the epilogue\r\n--b-1\r\n\r\nnot a part"
    )
    assert parse_multipart_related(CT, body) == [b"abc", b"def"]
    assert parse_multipart_related(CT, body[len(b"this is the preamble\r\n") :]) == [b"abc", b"def"]


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/related; type=application/dicom; boundary=b-1",
        'Multipart/Related;boundary="b-1";type="Application/DICOM"',
        "multipart/related; boundary=b-1",  # no type: each part's Content-Type decides
    ],
)
def test_quoted_and_unquoted_parameters(content_type: str) -> None:
    assert parse_multipart_related(content_type, multipart([b"x"])) == [b"x"]


def test_part_headers_with_parameters() -> None:
    body = multipart([b"x"], headers='Content-Type: application/dicom; transfer-syntax="1.2.840.10008.1.2.1"\r\n')
    assert parse_multipart_related(CT, body) == [b"x"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "",
        "application/dicom",
        "multipart/form-data; boundary=b-1",
        'multipart/related; type="application/dicom+json"; boundary=b-1',
    ],
)
def test_other_media_types_are_unsupported(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        parse_multipart_related(content_type, multipart([b"x"]))


def test_a_part_of_another_type_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="part 2"):
        body = b"--b-1\r\n\r\nx\r\n--b-1\r\nContent-Type: application/json\r\n\r\n{}\r\n--b-1--"
        parse_multipart_related(CT, body)


def test_unsupported_media_type_is_an_invalid_study() -> None:
    assert issubclass(UnsupportedMediaTypeError, InvalidStudyError)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/related; type=application/dicom", multipart([b"x"])),  # no boundary
        (CT, b"no delimiter at all"),
        (CT, b"\r\n--b-1--\r\n"),  # only the close delimiter
        (CT, multipart([b"x"])[: -len(b"--b-1--")]),  # truncated: no close delimiter
        (CT, b"--b-1\r\nContent-Type: application/dicom\r\nno blank line\r\n--b-1--"),
        (CT, b"--b-1junk\r\n\r\nx\r\n--b-1--"),  # malformed boundary line
    ],
)
def test_malformed_bodies(content_type: str, body: bytes) -> None:
    with pytest.raises(InvalidStudyError) as info:
        parse_multipart_related(content_type, body)
    assert not isinstance(info.value, UnsupportedMediaTypeError)


def test_boundary_of_content_type() -> None:
    assert multipart_boundary('multipart/related; type="application/dicom"; boundary="a b:c"') == "a b:c"


def test_store_response_lists_stored_and_failed() -> None:
    stored = [StoredRef("1.2.840.10008.5.1.4.1.1.7", f"1.2.3.{i}", "1.2.3", "1.2.3.9") for i in (1, 2)]
    failed = [
        FailedRef(None, None, CANNOT_UNDERSTAND),
        FailedRef("1.2.840.10008.5.1.4.1.1.7", "1.2.4.1", OUT_OF_RESOURCES),
    ]
    doc = store_response(stored, failed, "http://host/dicomweb/")
    assert doc["00081190"] == {"vr": "UR", "Value": ["http://host/dicomweb/studies/1.2.3"]}
    ds = pydicom.Dataset.from_json(doc)
    assert [item.ReferencedSOPInstanceUID for item in ds.ReferencedSOPSequence] == ["1.2.3.1", "1.2.3.2"]
    first = ds.ReferencedSOPSequence[0]
    assert first.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert first.RetrieveURL == "http://host/dicomweb/studies/1.2.3/series/1.2.3.9/instances/1.2.3.1"
    assert [item.FailureReason for item in ds.FailedSOPSequence] == [0xC000, 0xA700]
    assert "ReferencedSOPInstanceUID" not in ds.FailedSOPSequence[0]
    assert ds.FailedSOPSequence[1].ReferencedSOPInstanceUID == "1.2.4.1"
    assert doc["00081198"]["Value"][0]["00081197"] == {"vr": "US", "Value": [49152]}


def test_store_response_of_several_studies_or_none() -> None:
    stored = [StoredRef(None, "1.1.1", "1.1", "1.1.9"), StoredRef(None, "1.2.1", "1.2", "1.2.9")]
    doc = store_response(stored, [], "http://host/dicomweb")
    assert "00081190" not in doc and "00081198" not in doc
    assert "00081150" not in doc["00081199"]["Value"][0]  # SOP Class unknown: left out
    nothing = store_response([], [FailedRef(None, None, CANNOT_UNDERSTAND)], "http://host/dicomweb")
    assert set(nothing) == {"00081198"}


@pytest.mark.parametrize(("stored", "failed", "status"), [(2, 0, 200), (1, 1, 202), (0, 2, 409), (0, 0, 409)])
def test_stow_status(stored: int, failed: int, status: int) -> None:
    assert stow_status(stored, failed) == status
