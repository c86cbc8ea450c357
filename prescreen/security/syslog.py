"""Audit records as DICOM audit messages (PS3.15 A.5, the RFC 3881 schema) in RFC 5424 syslog lines,
for a hospital's audit repository (IHE ATNA): ``prescreen audit export`` writes them, and
``PRESCREEN_AUDIT_SYSLOG`` streams them over UDP."""

from __future__ import annotations

import socket
from xml.etree import ElementTree as ET

from prescreen.security.audit import CODES, AuditEvent, AuditRecord

FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4
MSGID = "DICOM+RFC3881"
SD_ID = "prescreen@32473"  # 32473: the example enterprise number of RFC 5612
BOM = "\ufeff"


def _code(parent: ET.Element, tag: str, code: str, meaning: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": "DCM", "originalText": meaning})


def audit_message_xml(record: AuditRecord, source: str = "prescreen") -> str:
    """The DICOM ``AuditMessage`` of a record (no patient name or id: the patient is its pseudonym)."""
    message = ET.Element("AuditMessage")
    ident = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": record.action,
            "EventDateTime": record.at,
            "EventOutcomeIndicator": str(record.outcome),
        },
    )
    code = CODES.get(AuditEvent(record.event)) if record.event in AuditEvent._value2member_map_ else None
    _code(ident, "EventID", record.event_id, code.event_id_meaning if code else record.event)
    if record.event_type:
        _code(ident, "EventTypeCode", record.event_type, (code.type_meaning if code else None) or record.event)
    participant = {"UserID": record.actor, "UserIsRequestor": "true", "AlternativeUserID": record.actor_kind}
    if record.address:
        participant["NetworkAccessPointID"] = record.address
        participant["NetworkAccessPointTypeCode"] = "2"  # an IP address
    ET.SubElement(message, "ActiveParticipant", participant)
    ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": source})
    if record.study_uid:
        study = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": record.study_uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _code(study, "ParticipantObjectIDTypeCode", "110180", "Study Instance UID")
    if record.patient_hash:
        patient = ET.SubElement(
            message,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": record.patient_hash,
                "ParticipantObjectTypeCode": "1",
                "ParticipantObjectTypeCodeRole": "1",
                "ParticipantObjectDataLifeCycle": "6",
            },
        )
        ET.SubElement(
            patient,
            "ParticipantObjectIDTypeCode",
            {"csd-code": "2", "codeSystemName": "RFC-3881", "originalText": "Patient Number (HMAC-SM3 pseudonym)"},
        )
    return ET.tostring(message, encoding="unicode")


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_line(record: AuditRecord, hostname: str | None = None, source: str = "prescreen") -> str:
    """One RFC 5424 line: ``<PRI>1 TIME HOST prescreen - DICOM+RFC3881 [SD] BOM XML``. The structured
    data carries the record's sequence number and chain hash, so a receiver can check the chain too."""
    severity = SEVERITY_NOTICE if record.outcome == 0 else SEVERITY_WARNING
    host = (hostname or socket.gethostname() or "-")[:255]
    sd = f'[{SD_ID} seq="{record.seq}" event="{_sd_value(record.event)}" hash="{record.hash}"]'
    xml = audit_message_xml(record, source).replace("\n", " ")
    return f"<{FACILITY_AUTHPRIV * 8 + severity}>1 {record.at} {host} {source} - {MSGID} {sd} {BOM}{xml}"


def parse_endpoint(value: str) -> tuple[str, int]:
    """``host:port`` → (host, port).

    Raises:
        ValueError: not ``host:port`` with a port in 1–65535.
    """
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"PRESCREEN_AUDIT_SYSLOG must be host:port, not {value!r}")
    return host, int(port)


class SyslogSender:
    """Sends syslog lines over UDP (RFC 5426) to one collector."""

    def __init__(self, endpoint: str) -> None:
        self.host, self.port = parse_endpoint(endpoint)
        self._socket = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, line: str) -> None:
        self._socket.sendto(line.encode("utf-8"), (self.host, self.port))

    def close(self) -> None:
        self._socket.close()
