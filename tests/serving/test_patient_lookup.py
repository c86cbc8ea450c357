"""Lookup by patient id through its blind index: patient ids are stored sealed, the lookup matches
the HMAC-SM3 of the id, and every lookup by patient is audited under the patient's pseudonym."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select, text

from prescreen.config import get_settings
from prescreen.pipeline.runtime import open_store
from prescreen.security.keys import patient_pseudonym
from prescreen.serving.app import create_app
from prescreen.store.schema_security import AuditEvent as AuditRow


def test_studies_are_found_by_patient_id_without_the_id_in_the_clear(tmp_path: Path) -> None:
    ingestor = open_store(get_settings())
    record = {"r.hea": b"r 1 500 5000\n", "r.dat": b"\x00\x01" * 64}
    for patient in ("P-001", "P-001", "P-002"):
        ingestor.store_upload(record, patient_id=patient, patient_name="张三丰")
    app = create_app()
    app.state.ingestor = ingestor
    client = TestClient(app)

    assert client.get("/v1/studies", params={"patient_id": "P-001"}).json()["total"] == 2
    assert client.get("/v1/studies", params={"patient_id": " P-002 "}).json()["total"] == 1
    assert client.get("/v1/studies", params={"patient_id": "P-003"}).json()["total"] == 0
    assert client.get("/v1/studies").json()["total"] == 3
    assert client.get("/v1/studies", params={"patient_id": ""}).status_code == 422

    index = patient_pseudonym(get_settings(), "P-001")
    with ingestor.sessions() as session:
        stored = session.execute(text("select patient_id, patient_index from studies")).all()
        assert all("P-00" not in str(pid) for pid, _ in stored)  # sealed
        assert sum(1 for _, found in stored if found == index) == 2
        searches = session.scalars(select(AuditRow).where(AuditRow.patient_hash == index)).all()
    lookups = [row for row in searches if row.event == "study-read"]
    assert len(lookups) == 1 and json.loads(lookups[0].detail) == {"as": "search by patient", "found": 2}
