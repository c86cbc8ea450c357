"""Audit records as RFC 5424 syslog lines carrying DICOM audit messages (``prescreen.security.syslog``),
and their UDP sender."""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

import pytest

from prescreen.security.audit import (
    CODES,
    GENESIS,
    Actor,
    ActorKind,
    AuditEntry,
    AuditEvent,
    AuditRecord,
    Outcome,
    new_record,
)
from prescreen.security.sm import hmac_sm3_hex
from prescreen.security.syslog import (
    BOM,
    MSGID,
    SD_ID,
    SyslogSender,
    audit_message_xml,
    parse_endpoint,
    syslog_line,
)

AT = datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.12345"
PATIENT_NAME = "Rivera^Ana"
PATIENT_ID = "P00012345"
PSEUDONYM = hmac_sm3_hex(b"k" * 32, PATIENT_ID.encode())


def make(
    event: AuditEvent = AuditEvent.STUDY_READ,
    outcome: Outcome = Outcome.SUCCESS,
    actor: Actor | None = None,
    seq: int = 3,
    study_uid: str | None = STUDY,
    patient_hash: str | None = PSEUDONYM,
) -> AuditRecord:
    entry = AuditEntry(
        event,
        actor or Actor(ActorKind.USER, "dr.wang", "10.1.2.3"),
        outcome,
        study_uid=study_uid,
        patient_hash=patient_hash,
        object_id="item-7",
    )
    return new_record(seq, GENESIS, entry, at=AT)


def parse(line: str) -> tuple[str, ET.Element]:
    """The header (up to the BOM) and the parsed XML of a line."""
    header, bom, xml = line.partition(BOM)
    assert bom == BOM
    return header, ET.fromstring(xml)


def test_a_success_is_a_notice_of_authpriv() -> None:
    line = syslog_line(make(), hostname="ris-01")
    assert line.startswith("<85>1 ")


@pytest.mark.parametrize("outcome", [Outcome.MINOR_FAILURE, Outcome.SERIOUS_FAILURE, Outcome.MAJOR_FAILURE])
def test_a_failure_is_a_warning(outcome: Outcome) -> None:
    line = syslog_line(make(AuditEvent.SIGN_IN_FAILED, outcome), hostname="ris-01")
    assert line.startswith("<84>1 ")


def test_the_header_fields_are_rfc5424() -> None:
    record = make()
    line = syslog_line(record, hostname="ris-01")
    header, _ = parse(line)
    sd = f'[{SD_ID} seq="3" event="study-read" hash="{record.hash}"]'
    assert header == f"<85>1 2024-03-01T08:00:00.123456Z ris-01 prescreen - {MSGID} {sd} "
    assert MSGID == "DICOM+RFC3881"
    assert re.fullmatch(r'\[prescreen@32473 seq="3" event="study-read" hash="[0-9a-f]{64}"\]', sd)
    assert "\n" not in line


def test_the_hostname_defaults_to_this_host() -> None:
    line = syslog_line(make())
    assert line.split(" ")[2] == (socket.gethostname() or "-")[:255]


def test_the_source_is_named_in_header_and_message() -> None:
    line = syslog_line(make(), hostname="h", source="prescreen-2")
    header, message = parse(line)
    assert header.split(" ")[3] == "prescreen-2"
    source = message.find("AuditSourceIdentification")
    assert source is not None
    assert source.get("AuditSourceID") == "prescreen-2"


def test_the_audit_message_carries_the_dicom_fields() -> None:
    record = make()
    _, message = parse(syslog_line(record, hostname="h"))
    assert message.tag == "AuditMessage"
    ident = message.find("EventIdentification")
    assert ident is not None
    assert ident.attrib == {"EventActionCode": "R", "EventDateTime": record.at, "EventOutcomeIndicator": "0"}
    event_id = ident.find("EventID")
    assert event_id is not None
    assert event_id.attrib == {"csd-code": "110110", "codeSystemName": "DCM", "originalText": "Patient Record"}
    assert ident.find("EventTypeCode") is None  # a study read has no type code
    participant = message.find("ActiveParticipant")
    assert participant is not None
    assert participant.get("UserID") == "dr.wang"
    assert participant.get("UserIsRequestor") == "true"
    assert participant.get("AlternativeUserID") == "user"
    assert participant.get("NetworkAccessPointID") == "10.1.2.3"
    assert participant.get("NetworkAccessPointTypeCode") == "2"
    objects = message.findall("ParticipantObjectIdentification")
    assert [o.get("ParticipantObjectID") for o in objects] == [STUDY, PSEUDONYM]
    study, patient = objects
    assert (study.get("ParticipantObjectTypeCode"), study.get("ParticipantObjectTypeCodeRole")) == ("2", "3")
    study_code = study.find("ParticipantObjectIDTypeCode")
    assert study_code is not None
    assert study_code.get("csd-code") == "110180"
    assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == ("1", "1")


def test_a_sign_in_has_its_type_code_and_no_objects() -> None:
    record = make(AuditEvent.SIGN_IN_FAILED, Outcome.MINOR_FAILURE, study_uid=None, patient_hash=None)
    _, message = parse(syslog_line(record, hostname="h"))
    ident = message.find("EventIdentification")
    assert ident is not None
    assert ident.get("EventOutcomeIndicator") == "4"
    type_code = ident.find("EventTypeCode")
    assert type_code is not None
    assert (type_code.get("csd-code"), type_code.get("originalText")) == ("110122", "Login")
    assert message.findall("ParticipantObjectIdentification") == []


def test_an_actor_without_address_has_no_network_access_point() -> None:
    _, message = parse(syslog_line(make(actor=Actor.system()), hostname="h"))
    participant = message.find("ActiveParticipant")
    assert participant is not None
    assert participant.get("UserID") == "prescreen"
    assert "NetworkAccessPointID" not in participant.attrib


@pytest.mark.parametrize("event", list(AuditEvent))
def test_every_event_makes_a_parseable_message(event: AuditEvent) -> None:
    record = make(event)
    _, message = parse(syslog_line(record, hostname="h"))
    event_id = message.find("EventIdentification/EventID")
    assert event_id is not None
    assert event_id.get("csd-code") == CODES[event].event_id
    assert event_id.get("originalText") == CODES[event].event_id_meaning


def test_the_patient_appears_only_as_its_pseudonym() -> None:
    record = make()
    line = syslog_line(record, hostname="h")
    assert PSEUDONYM in line
    assert PATIENT_ID not in line
    for part in PATIENT_NAME.split("^"):
        assert part not in line
    assert "Rivera" not in audit_message_xml(record)


def test_markup_in_fields_is_escaped() -> None:
    actor = Actor(ActorKind.USER, 'x"/><Evil a="1', "10.0.0.1")
    line = syslog_line(make(actor=actor), hostname="h")
    _, message = parse(line)
    assert message.find("Evil") is None
    participant = message.find("ActiveParticipant")
    assert participant is not None
    assert participant.get("UserID") == 'x"/><Evil a="1'


def test_an_unknown_event_name_still_makes_a_message() -> None:
    """A record read back from an older version may name an event this version does not know."""
    import dataclasses

    record = dataclasses.replace(make(), event="retired-event")
    _, message = parse(syslog_line(record, hostname="h"))
    event_id = message.find("EventIdentification/EventID")
    assert event_id is not None
    assert event_id.get("originalText") == "retired-event"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:514", ("127.0.0.1", 514)),
        ("[::1]:514", ("::1", 514)),
        ("audit.hospital.local:6514", ("audit.hospital.local", 6514)),
        ("h:1", ("h", 1)),
        ("h:65535", ("h", 65535)),
    ],
)
def test_parse_endpoint_good(value: str, parsed: tuple[str, int]) -> None:
    assert parse_endpoint(value) == parsed


@pytest.mark.parametrize(
    "value", ["host", "host:0", "host:70000", "host:65536", ":514", "host:", "", "host:-1", "host:51a", "host: 514"]
)
def test_parse_endpoint_bad(value: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_endpoint(value)


def test_parse_endpoint_refuses_empty_brackets() -> None:
    with pytest.raises(ValueError):
        parse_endpoint("[]:514")


def _receive(family: socket.AddressFamily, host: str) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as receiver:
        receiver.bind((host, 0))
        receiver.settimeout(5)
        port = receiver.getsockname()[1]
        endpoint = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        sender = SyslogSender(endpoint)
        record = make()
        line = syslog_line(record, hostname="ris-01")
        try:
            sender.send(line)
        finally:
            sender.close()
        data, _ = receiver.recvfrom(65535)
    assert data == line.encode("utf-8")
    text = data.decode("utf-8")
    assert text.startswith("<85>1 ")
    assert f'hash="{record.hash}"' in text
    assert BOM.encode("utf-8") in data  # EF BB BF before the XML


def test_syslog_sender_sends_a_udp_datagram() -> None:
    _receive(socket.AF_INET, "127.0.0.1")


def test_syslog_sender_sends_over_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    _receive(socket.AF_INET6, "::1")


def test_syslog_sender_refuses_a_bad_endpoint() -> None:
    with pytest.raises(ValueError):
        SyslogSender("localhost")
