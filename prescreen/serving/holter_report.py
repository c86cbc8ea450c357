"""The draft report of an ambulatory ECG (Holter), pre-filled from the analysis summary in the
page's language: the recording, the rate, the ectopic beats, the events and what the AI flagged.
The reader edits it before signing; nothing here decides anything."""

from __future__ import annotations

from typing import Any

from prescreen.serving.i18n import gettext
from prescreen.serving.previews import clock
from prescreen.store.views import StudyDetail


def holter_draft(summary: dict[str, Any]) -> str:
    """A draft report from a Holter summary, in the page's language, for the reader to edit: the
    recording, the rhythm's rate, the ectopic beats, the events and what the AI flagged."""
    beats = summary.get("beats", {})
    rate = summary.get("heart_rate", {})
    burden = summary.get("burden", {})
    counts = summary.get("counts", {})
    low, high = rate.get("min") or {}, rate.get("max") or {}
    lines = [
        gettext(
            "Ambulatory ECG of %(hours)s h %(minutes)s min; analysable %(analysed)s min.",
            hours=int(float(summary.get("duration_s", 0.0)) // 3600),
            minutes=int(float(summary.get("duration_s", 0.0)) % 3600 // 60),
            analysed=round(float(summary.get("analysed_s", 0.0)) / 60),
        ),
        gettext(
            "Heart rate %(low)s–%(high)s bpm (mean %(mean)s; lowest at %(low_at)s, highest at %(high_at)s).",
            low=_bpm(low.get("bpm")),
            high=_bpm(high.get("bpm")),
            mean=_bpm(rate.get("mean")),
            low_at=clock(float(low.get("at_s", 0.0))),
            high_at=clock(float(high.get("at_s", 0.0))),
        ),
        gettext(
            "Beats: %(total)s in all; ventricular ectopic %(v)s (%(v_burden)s %%), supraventricular ectopic %(s)s "
            "(%(s_burden)s %%).",
            total=sum(int(v) for v in beats.values()),
            v=int(beats.get("V", 0)),
            v_burden=_pct(burden.get("V")),
            s=int(beats.get("S", 0)),
            s_burden=_pct(burden.get("S")),
        ),
        gettext(
            "Ventricular couplets %(vc)s, ventricular runs %(vr)s; supraventricular runs %(sr)s; pauses over 2 s "
            "%(p)s (over 3 s: %(lp)s); atrial fibrillation %(af)s min.",
            vc=int(counts.get("v_couplets", 0)),
            vr=int(counts.get("v_runs", 0)),
            sr=int(counts.get("s_runs", 0)),
            p=int(counts.get("pauses", 0)),
            lp=int(counts.get("long_pauses", 0)),
            af=round(float(summary.get("af_minutes", 0.0)), 1),
        ),
    ]
    if float(summary.get("not_analysable_s", 0.0)) >= 60:
        lines.append(
            gettext("Not analysable: %(minutes)s min.", minutes=round(float(summary["not_analysable_s"]) / 60))
        )
    reasons = summary.get("flag_reasons") or []
    if reasons:
        lines.append(gettext("AI pre-screen flagged: %(reasons)s.", reasons="; ".join(str(r) for r in reasons)))
    lines.append(gettext("Conclusion: "))
    return "\n".join(lines)


def _bpm(value: Any) -> str:
    return "—" if value is None else str(round(float(value)))


def _pct(value: Any) -> str:
    return "0" if value is None else f"{float(value):.1f}"


def draft_for(study: StudyDetail) -> str:
    """The pre-filled draft of a study whose series has a Holter summary, else an empty text."""
    for series in study["series"]:
        result = series["result"]
        if result is not None and result["summary"]:
            return holter_draft(result["summary"])
    return ""
