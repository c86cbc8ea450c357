"""The ambulatory-ECG (Holter) part of the reading page: an event strip for each event the analysis
found (10 s around it on the standard grid, each beat's class above the trace). The draft report
pre-filled from the summary is :mod:`prescreen.serving.holter_report`.

Only the strip's window of the record is decoded, so a strip of a 24-hour record costs what the
strip does. Nothing here logs: the files are patient data.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from prescreen.datasets.readers import read_ecg_files
from prescreen.errors import InvalidStudyError, NotFoundError, PrescreenError
from prescreen.security.audit import AuditEvent
from prescreen.serving.auth import actor_of
from prescreen.serving.deps import get_ingestor
from prescreen.serving.pages import PageReader, png_response, same_origin
from prescreen.serving.previews import ecg_png, placeholder_png
from prescreen.store.audit import record_study_access
from prescreen.store.views import findings_of, preview_files
from prescreen.store.worklist import check_access, load_item

holter_pages_router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(same_origin)])

STRIP_MAX_SECONDS = 12.0


def event_strip_window(event: dict[str, Any]) -> tuple[float, float, list[tuple[float, str]]]:
    """Where an event's strip starts, how long it is (at most ``STRIP_MAX_SECONDS``) and its beat
    labels relative to its start.

    Raises:
        InvalidStudyError: the event carries no strip.
    """
    strip = event.get("strip")
    if not isinstance(strip, dict):
        raise InvalidStudyError("this event has no strip")
    start = max(0.0, float(strip.get("start_s", 0.0)))
    seconds = min(STRIP_MAX_SECONDS, max(1.0, float(strip.get("end_s", start + 10.0)) - start))
    beats = [(float(t) - start, str(label)) for t, label in strip.get("beats", [])]
    return start, seconds, beats


@holter_pages_router.get("/items/{item_id}/series/{series_uid}/events/{index}.png")
def event_strip(request: Request, user: PageReader, item_id: str, series_uid: str, index: int) -> Response:
    """The strip of event ``index`` of a series' Holter analysis (401 without a session, 403 outside
    the user's worklists and institutions, 404 for no such event, 422 with a PNG that says why when
    the record cannot be drawn)."""
    if user is None:
        return Response("sign in again", status_code=401, media_type="text/plain")
    ingestor = get_ingestor(request)
    with ingestor.sessions.begin() as session:
        item, study = load_item(session, item_id)
        check_access(user, item.worklist, study.institution, item=True)
        detail = {"series_uid": series_uid[:64], "as": "event strip", "event": index}
        record_study_access(session, AuditEvent.IMAGE_READ, actor_of(request, user), study.id, item_id, detail)
        summaries = [f.summary for f in findings_of(session, study.id) if f.series_uid == series_uid and f.summary]
        events = summaries[0].get("events", []) if summaries else []
        if not 0 <= index < len(events):
            raise NotFoundError("no such event in this series' analysis")
        try:
            wanted = preview_files(session, study.id, series_uid)
        except InvalidStudyError as exc:
            return png_response(placeholder_png(str(exc)), 422, None)
    try:
        start, seconds, beats = event_strip_window(events[index])
        named = {name: ingestor.blobs.get(key) for name, key in wanted if name}
        record = read_ecg_files(named, start, seconds)
        png = ecg_png(record, seconds=seconds, offset_s=start, beats=beats)
    except PrescreenError as exc:
        return png_response(placeholder_png(str(exc)), 422, None)
    return png_response(png, 200, None)
