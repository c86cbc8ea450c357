"""The double-review state machine of a worklist item: who may do what, and what it leads to.

Transitions (anything else is refused)::

    from                       action   by                                                 to
    unread                     claim    attending or above (becomes first reader)          claimed
    claimed                    release  the holder                                         unread
    claimed, draft, returned   draft    the first reader, holding the claim                draft
    draft                      sign     the first reader, holding the claim, non-empty,    awaiting_review (submitted)
                                        labelled (a screened study)
    awaiting_review            claim    associate_chief or above, not the first reader     awaiting_review (review)
    awaiting_review            sign     associate_chief or above, not the first reader     final (cosigned)
    awaiting_review            return   associate_chief or above, not the first reader     returned
    claimed, draft, returned   claim    the first reader (renews or takes the lease back)  (unchanged)
    draft, returned, aw._rev.  release  the holder                                         (unchanged)
    final                      amend    the first reader (attending+) or associate_chief+  draft (new version)

* ``claim`` takes a *lease* (``claimed_by`` until ``claim_expires``). A lease is active while
  ``now < claim_expires``; an expired lease counts as released (:func:`effective`), so an expired
  claim on a ``claimed`` item returns it to ``unread``. Claiming again renews the lease.
* The first reader (grade attending or above) claims an ``unread`` item, saves drafts and signs the
  draft: that *submits* it (``awaiting_review``, signature ``"submitted"``) and releases the claim.
* A second reader (grade associate_chief or above, never the first reader) co-signs it (``final``,
  signature ``"cosigned"``) or returns it with a comment (``returned``). The reviewer may claim the
  review first (so that no other reviewer acts meanwhile) but need not, as long as no other reviewer
  holds an active review claim.
* A ``returned`` item is released: it waits for its first reader, who alone may claim it again, save
  a revised draft and sign (submit) it again. Signing a returned item directly is refused: save a
  revised draft first.
* The first reader records their own *label* of the study with the draft: one of the task's classes
  or ``"not assessable"`` (:func:`check_label`), the ground truth that monitors the models in
  service. A draft of a screened study (one with a task) is not submitted without it.
* ``amend`` on a ``final`` report starts a new version as a ``draft`` held by the amending user, who
  becomes its first reader: the original first reader (attending or above) or anyone of grade
  associate_chief or above. The new version needs a new co-signature.
* A draft belongs to its first reader: nobody else may claim, edit or submit it (taking over
  someone's draft is an administrative act outside this module).

Errors, checked in this order:

1. the item's state does not allow the action → :class:`~prescreen.errors.ConflictError` (409);
2. the actor may never do it on this item (grade, own report, someone else's draft, someone
   else's claim for actions that need the claim) → :class:`~prescreen.errors.ForbiddenError` (403);
3. it needs a claim nobody holds, or a claim is held by someone else (``claim`` only), or the draft
   is empty, or the draft of a screened study has no physician label →
   :class:`~prescreen.errors.ConflictError` (409).

A label that is not one of the task's choices is an :class:`~prescreen.errors.InvalidRequestError`
(400), from :func:`check_label`.

Every error message says why. Decisions are pure: the caller stores the :class:`Decision`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from prescreen.domain import ReviewState
from prescreen.errors import ConflictError, ForbiddenError, InvalidRequestError

State = ReviewState
STATES: tuple[State, ...] = tuple(ReviewState)

Action = Literal["claim", "release", "draft", "sign", "return", "amend"]
ACTIONS: tuple[Action, ...] = ("claim", "release", "draft", "sign", "return", "amend")

Grade = Literal["resident", "attending", "associate_chief", "chief"]
GRADES: tuple[Grade, ...] = ("resident", "attending", "associate_chief", "chief")
"""Grades, lowest first."""

SignatureKind = Literal["submitted", "cosigned"]

FIRST_READER_MIN_GRADE: Grade = "attending"
"""The lowest grade that may read a study as first reader (claim, draft, submit)."""
COSIGNER_MIN_GRADE: Grade = "associate_chief"
"""The lowest grade that may review (claim the review, co-sign, return)."""

_NOMINAL_LEASE = timedelta(minutes=1)

NOT_ASSESSABLE = "not assessable"
"""The physician's label of a study that cannot be judged (it counts in no sensitivity or accuracy)."""


def label_choices(classes: Sequence[str]) -> tuple[str, ...]:
    """The labels a physician may give a study of a task with these classes: the classes, then
    :data:`NOT_ASSESSABLE` (only that for a study no model screened)."""
    return (*classes, NOT_ASSESSABLE)


def check_label(label: str | None, classes: Sequence[str]) -> str | None:
    """The physician's label as stored: ``None`` when none was given (absent or blank), else the
    choice of :func:`label_choices` it names (compared without case and surrounding spaces).

    Raises:
        InvalidRequestError: a label that is not one of the choices (the message lists them).
    """
    if label is None or not label.strip():
        return None
    wanted = " ".join(label.split()).casefold()
    choices = label_choices(classes)
    for choice in choices:
        if choice.casefold() == wanted:
            return choice
    raise InvalidRequestError(
        f"the label {label.strip()[:40]!r} is not one of this study's labels: {', '.join(choices)}"
    )


def grade_at_least(g: str, minimum: str) -> bool:
    """Whether grade ``g`` is ``minimum`` or above.

    Args:
        g: a grade.
        minimum: the lowest grade that qualifies.

    Raises:
        ValueError: either is not one of :data:`GRADES`.
    """
    for value in (g, minimum):
        if value not in GRADES:
            raise ValueError(f"grade {value!r} is not one of {', '.join(GRADES)}")
    return GRADES.index(g) >= GRADES.index(minimum)  # type: ignore[arg-type,unused-ignore]


@dataclass(frozen=True)
class Actor:
    """The user acting.

    Attributes:
        user_id: the user's id.
        grade: the user's grade.
    """

    user_id: str
    grade: Grade


@dataclass(frozen=True)
class ItemState:
    """What the state machine needs to know about an item.

    Attributes:
        state: one of :data:`STATES`.
        first_reader: the first reader's user id (None while ``unread``).
        claimed_by: the lease holder, or None.
        claim_expires: when the lease ends (set exactly when ``claimed_by`` is).
        has_draft: whether a non-empty draft text exists (needed to submit).
        label_missing: the study was screened (its item has a task) and the draft carries no
            physician label (needed to submit).
    """

    state: str
    first_reader: str | None
    claimed_by: str | None
    claim_expires: datetime | None
    has_draft: bool
    label_missing: bool = False


@dataclass(frozen=True)
class Decision:
    """The outcome of an allowed action; the caller stores it.

    Attributes:
        state: the new state.
        first_reader: the first reader after the action.
        claimed_by: the lease holder after the action, or None.
        claim_expires: the end of that lease, or None.
        has_draft: whether a draft text exists afterwards (the text itself is the caller's).
        signature: what a ``sign`` means for the signature record: ``"submitted"`` (first reader)
            or ``"cosigned"`` (second reader); None for other actions.
        new_version: True when ``amend`` starts a new report version.
    """

    state: State
    first_reader: str | None
    claimed_by: str | None
    claim_expires: datetime | None
    has_draft: bool
    signature: SignatureKind | None = None
    new_version: bool = False


def check_item(item: ItemState) -> None:
    """Check that an item's fields are consistent with its state (an expired lease counts as none).

    Args:
        item: the item.

    Raises:
        ValueError: an unknown state, a lease without expiry (or the reverse), an unread item with a
            first reader or an active claim, another state without first reader, a ``claimed`` item not
            held by its first reader, a draft held by someone else, a review claimed by the first
            reader, or a final item with an active claim.
    """
    if item.state not in STATES:
        raise ValueError(f"unknown item state {item.state!r}; expected one of {', '.join(STATES)}")
    if (item.claimed_by is None) != (item.claim_expires is None):
        raise ValueError("claimed_by and claim_expires must be set together")
    holder = item.claimed_by
    if item.state == ReviewState.UNREAD:
        if item.first_reader is not None or holder is not None:
            raise ValueError("an unread item has neither first reader nor active claim")
        return
    if item.first_reader is None:
        raise ValueError(f"a {item.state} item must have a first reader")
    if item.state == ReviewState.CLAIMED and holder != item.first_reader:
        raise ValueError("a claimed item must be held by its first reader")
    if item.state in (ReviewState.DRAFT, ReviewState.RETURNED) and holder not in (None, item.first_reader):
        raise ValueError(f"a {item.state} item can only be held by its first reader")
    if item.state == ReviewState.AWAITING_REVIEW and holder == item.first_reader:
        raise ValueError("the first reader cannot hold the review claim")
    if item.state == ReviewState.FINAL and holder is not None:
        raise ValueError("a final item cannot be claimed")


def lease_active(item: ItemState, now: datetime) -> bool:
    """Whether the item has a lease that has not expired (``now < claim_expires``).

    Args:
        item: the item.
        now: the current time.
    """
    return item.claimed_by is not None and (item.claim_expires is None or now < item.claim_expires)


def effective(item: ItemState, now: datetime) -> ItemState:
    """The item with an expired lease treated as released.

    A ``claimed`` item whose lease expired is back to ``unread`` (no first reader); any other state
    keeps its state and first reader and loses the holder.

    Args:
        item: the item as stored.
        now: the current time.
    """
    if item.claimed_by is None or lease_active(item, now):
        return item
    if item.state == ReviewState.CLAIMED:
        return ItemState(ReviewState.UNREAD, None, None, None, item.has_draft)
    return replace(item, claimed_by=None, claim_expires=None)


def decide(item: ItemState, action: str, actor: Actor, now: datetime, lease: timedelta) -> Decision:
    """Decide one action on an item.

    Args:
        item: the item as stored (an expired lease is treated as released).
        action: one of :data:`ACTIONS`.
        actor: who acts.
        now: the current time.
        lease: how long a claim (or its renewal) lasts.

    Raises:
        ConflictError: the item's state does not allow the action; a claim held by someone else
            (``claim``); an action that needs the claim while nobody holds it; signing an empty draft.
        ForbiddenError: the actor's grade does not allow it; the first reader reviewing their own
            report; someone else's draft; someone else's claim (for actions other than ``claim``).
        ValueError: an unknown action or grade, a lease that is not positive, or an inconsistent item.
    """
    if lease <= timedelta(0):
        raise ValueError(f"the lease must be positive, not {lease}")
    handler = _HANDLERS.get(action)
    if handler is None:
        raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    if actor.grade not in GRADES:
        raise ValueError(f"grade {actor.grade!r} is not one of {', '.join(GRADES)}")
    current = effective(item, now)
    check_item(current)
    return handler(current, actor, now, lease)


def allowed_actions(item: ItemState, actor: Actor, now: datetime) -> list[str]:
    """The actions :func:`decide` would allow the actor now, in :data:`ACTIONS` order (UI buttons).

    An inconsistent item (or an unknown grade) allows nothing.

    Args:
        item: the item as stored.
        actor: the user.
        now: the current time.
    """
    allowed: list[str] = []
    for action in ACTIONS:
        try:
            decide(item, action, actor, now, _NOMINAL_LEASE)
        except (ConflictError, ForbiddenError, ValueError):
            continue
        allowed.append(action)
    return allowed


# --- the actions ---------------------------------------------------------------------------------

_Handler = Callable[[ItemState, Actor, datetime, timedelta], Decision]


def _claim(item: ItemState, actor: Actor, now: datetime, lease: timedelta) -> Decision:
    state = item.state
    if state == ReviewState.FINAL:
        raise ConflictError("the report is final: amend it to start a new version")
    if state == ReviewState.AWAITING_REVIEW:
        _check_reviewer(item, actor, "review")
        if lease_active(item, now) and item.claimed_by != actor.user_id:
            raise ConflictError(f"the review is claimed by {item.claimed_by} until {_when(item)}")
        return _keep(item, claimed_by=actor.user_id, claim_expires=now + lease)
    _check_first_reader_grade(actor, "read a study as first reader")
    if state == ReviewState.UNREAD:
        return Decision(ReviewState.CLAIMED, actor.user_id, actor.user_id, now + lease, item.has_draft)
    if state == ReviewState.CLAIMED:  # active lease (an expired one made it unread): its holder is the first reader
        if item.claimed_by != actor.user_id:
            raise ConflictError(f"the item is claimed by {item.claimed_by} until {_when(item)}")
        return _keep(item, claimed_by=actor.user_id, claim_expires=now + lease)
    # draft, returned
    _check_own_draft(item, actor)
    return _keep(item, claimed_by=actor.user_id, claim_expires=now + lease)


def _release(item: ItemState, actor: Actor, now: datetime, lease: timedelta) -> Decision:
    if item.state in (ReviewState.UNREAD, ReviewState.FINAL):
        raise ConflictError(f"a {_label(item.state)} item has no claim to release")
    if item.claimed_by is None:
        raise ConflictError("the item is not claimed (a lease that expired is already released)")
    if item.claimed_by != actor.user_id:
        raise ForbiddenError(f"the item is claimed by {item.claimed_by}; only the holder may release it")
    if item.state == ReviewState.CLAIMED:
        return Decision(ReviewState.UNREAD, None, None, None, item.has_draft)
    return _keep(item, claimed_by=None, claim_expires=None)


def _draft(item: ItemState, actor: Actor, now: datetime, lease: timedelta) -> Decision:
    if item.state not in (ReviewState.CLAIMED, ReviewState.DRAFT, ReviewState.RETURNED):
        raise ConflictError(_no_draft_reason(item.state))
    _check_first_reader_grade(actor, "write a report as first reader")
    if item.state == ReviewState.CLAIMED:
        if item.claimed_by != actor.user_id:
            raise ForbiddenError(f"the item is claimed by {item.claimed_by}; only the holder may write its draft")
    else:
        _check_own_draft(item, actor)
    _check_holds_claim(item, actor, "saving a draft")
    return Decision(ReviewState.DRAFT, item.first_reader, actor.user_id, now + lease, True)


def _sign(item: ItemState, actor: Actor, now: datetime, lease: timedelta) -> Decision:
    state = item.state
    if state == ReviewState.AWAITING_REVIEW:
        _check_reviewer(item, actor, "co-sign")
        _check_not_held_by_other(item, actor, "co-sign")
        return Decision(ReviewState.FINAL, item.first_reader, None, None, False, signature="cosigned")
    if state != ReviewState.DRAFT:
        raise ConflictError(_no_sign_reason(state))
    _check_first_reader_grade(actor, "sign a report as first reader")
    if item.first_reader != actor.user_id:
        raise ForbiddenError(f"only the first reader ({item.first_reader}) may sign this draft")
    _check_holds_claim(item, actor, "signing")
    if not item.has_draft:
        raise ConflictError("there is no draft text to sign: save a draft first")
    if item.label_missing:
        raise ConflictError(
            "record your own label of the study with the draft (one of the task's classes, or "
            f"'{NOT_ASSESSABLE}') before signing"
        )
    return Decision(ReviewState.AWAITING_REVIEW, item.first_reader, None, None, False, signature="submitted")


def _return(item: ItemState, actor: Actor, now: datetime, lease: timedelta) -> Decision:
    if item.state != ReviewState.AWAITING_REVIEW:
        raise ConflictError(f"only a report awaiting review can be returned; this item is {_label(item.state)}")
    _check_reviewer(item, actor, "return")
    _check_not_held_by_other(item, actor, "return")
    return Decision(ReviewState.RETURNED, item.first_reader, None, None, True)


def _amend(item: ItemState, actor: Actor, now: datetime, lease: timedelta) -> Decision:
    if item.state != ReviewState.FINAL:
        raise ConflictError(f"only a final report can be amended; this item is {_label(item.state)}")
    own = item.first_reader == actor.user_id and grade_at_least(actor.grade, FIRST_READER_MIN_GRADE)
    if not own and not grade_at_least(actor.grade, COSIGNER_MIN_GRADE):
        raise ForbiddenError(
            f"only the first reader ({item.first_reader}) or a reader of grade {COSIGNER_MIN_GRADE} or above "
            f"may amend a final report; {actor.user_id} is {actor.grade}"
        )
    return Decision(ReviewState.DRAFT, actor.user_id, actor.user_id, now + lease, True, new_version=True)


_HANDLERS: dict[str, _Handler] = {
    "claim": _claim,
    "release": _release,
    "draft": _draft,
    "sign": _sign,
    "return": _return,
    "amend": _amend,
}


# --- checks --------------------------------------------------------------------------------------


def _check_first_reader_grade(actor: Actor, what: str) -> None:
    if not grade_at_least(actor.grade, FIRST_READER_MIN_GRADE):
        raise ForbiddenError(
            f"a {actor.grade} may not {what}: the first reader must be {FIRST_READER_MIN_GRADE} or above"
        )


def _check_reviewer(item: ItemState, actor: Actor, what: str) -> None:
    if item.first_reader == actor.user_id:
        raise ForbiddenError(f"the first reader may not {what} their own report: a second reader must")
    if not grade_at_least(actor.grade, COSIGNER_MIN_GRADE):
        raise ForbiddenError(f"a {actor.grade} may not {what}: the second reader must be {COSIGNER_MIN_GRADE} or above")


def _check_own_draft(item: ItemState, actor: Actor) -> None:
    if item.first_reader != actor.user_id:
        raise ForbiddenError(
            f"this {_label(item.state)} report belongs to its first reader ({item.first_reader}); only they may "
            "claim, edit or sign it"
        )


def _check_holds_claim(item: ItemState, actor: Actor, what: str) -> None:
    if item.claimed_by is None:
        raise ConflictError(f"claim the item before {what} (no active claim: it was released or expired)")
    if item.claimed_by != actor.user_id:  # pragma: no cover - excluded by check_item for the first reader
        raise ForbiddenError(f"the item is claimed by {item.claimed_by}")


def _check_not_held_by_other(item: ItemState, actor: Actor, what: str) -> None:
    if item.claimed_by is not None and item.claimed_by != actor.user_id:
        raise ForbiddenError(f"the review is claimed by {item.claimed_by} until {_when(item)}; only they may {what}")


def _keep(item: ItemState, *, claimed_by: str | None, claim_expires: datetime | None) -> Decision:
    return Decision(_state(item.state), item.first_reader, claimed_by, claim_expires, item.has_draft, signature=None)


def _state(value: str) -> State:
    for s in STATES:
        if s == value:
            return s
    raise ValueError(f"unknown item state {value!r}")  # pragma: no cover - excluded by check_item


def _when(item: ItemState) -> str:
    return item.claim_expires.isoformat() if item.claim_expires else "further notice"


def _label(state: str) -> str:
    return state.replace("_", " ")


def _no_draft_reason(state: str) -> str:
    if state == ReviewState.UNREAD:
        return "claim the item before writing a draft"
    if state == ReviewState.AWAITING_REVIEW:
        return "the report awaits review: a reviewer may return it for changes"
    return "the report is final: amend it to start a new version"


def _no_sign_reason(state: str) -> str:
    if state == ReviewState.UNREAD:
        return "there is nothing to sign: claim the item and save a draft first"
    if state == ReviewState.CLAIMED:
        return "there is no draft to sign: save a draft first"
    if state == ReviewState.RETURNED:
        return "the report was returned for changes: save a revised draft before signing"
    return "the report is already final"
