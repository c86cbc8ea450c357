"""The physician's label of a study in the review state machine: which labels are choices, and that
a screened study's draft is not submitted without one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prescreen.errors import ConflictError, InvalidRequestError
from prescreen.triage.review import (
    NOT_ASSESSABLE,
    Actor,
    ItemState,
    allowed_actions,
    check_label,
    decide,
    label_choices,
)

ECG = ("normal", "af", "other", "noisy")
NOW = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=15)
ANN = Actor("ann", "attending")


@pytest.mark.parametrize(
    ("label", "classes", "stored"),
    [
        (None, ECG, None),
        ("", ECG, None),
        ("   ", ECG, None),
        ("af", ECG, "af"),
        (" AF ", ECG, "af"),
        ("Not  Assessable", ECG, NOT_ASSESSABLE),
        ("not assessable", (), NOT_ASSESSABLE),
        ("benign", ("normal", "benign", "malignant"), "benign"),
    ],
)
def test_labels_are_the_task_classes_or_not_assessable(
    label: str | None, classes: tuple[str, ...], stored: str | None
) -> None:
    assert check_label(label, classes) == stored


@pytest.mark.parametrize(("label", "classes"), [("pneumonia", ECG), ("normal", ()), ("a f", ECG), ("x" * 300, ECG)])
def test_other_labels_are_refused_with_the_choices(label: str, classes: tuple[str, ...]) -> None:
    with pytest.raises(InvalidRequestError, match="not one of this study's labels") as caught:
        check_label(label, classes)
    assert ", ".join(label_choices(classes)) in str(caught.value) and len(str(caught.value)) < 200


@given(st.sampled_from((*ECG, NOT_ASSESSABLE)), st.sampled_from([str.upper, str.title, str.lower, lambda s: f" {s}\t"]))
def test_a_choice_in_any_case_and_spacing_is_that_choice(choice: str, spell: object) -> None:
    assert check_label(spell(choice), ECG) == choice  # type: ignore[operator]


def draft(label_missing: bool) -> ItemState:
    return ItemState("draft", "ann", "ann", NOW + timedelta(minutes=5), has_draft=True, label_missing=label_missing)


def test_a_draft_without_label_is_not_submitted() -> None:
    with pytest.raises(ConflictError, match="record your own label"):
        decide(draft(True), "sign", ANN, NOW, LEASE)
    assert decide(draft(False), "sign", ANN, NOW, LEASE).state == "awaiting_review"
    assert allowed_actions(draft(True), ANN, NOW) == ["claim", "release", "draft"]
    assert allowed_actions(draft(False), ANN, NOW) == ["claim", "release", "draft", "sign"]


def test_the_label_does_not_matter_to_a_cosign_or_an_empty_draft() -> None:
    review = ItemState("awaiting_review", "ann", None, None, has_draft=False, label_missing=True)
    assert decide(review, "sign", Actor("cy", "associate_chief"), NOW, LEASE).state == "final"
    empty = ItemState("draft", "ann", "ann", NOW + timedelta(minutes=5), has_draft=False, label_missing=True)
    with pytest.raises(ConflictError, match="no draft text"):  # the empty draft is named first
        decide(empty, "sign", ANN, NOW, LEASE)
