"""Routing rules: which worklist (specialty) and priority a screened study goes to.

A rules file is YAML with one top-level key, ``rules:``, an ORDERED list; the first rule that matches a
series wins::

    rules:
      - name: noisy-ecg            # unique (case-insensitive)
        match:                     # every given condition must hold; empty or absent = catch-all
          task: ecg-rhythm         # a string or a list of strings (any of them)
          label: noisy
        worklist: ecg-repeat       # a slug: lowercase letters, digits, hyphens
        priority: urgent           # stat, urgent or routine

Match conditions (strings are compared case-insensitively):

* ``task``, ``modality``, ``body_part``, ``label``, ``institution``, ``order_priority``: a string or a
  list; a series whose value is missing (None) does not match them;
* ``flagged`` (true/false): the AI flag (the decision at the model's balanced operating point); a
  series without a result matches neither. ``flagged_balanced`` is the same condition by its full
  name; ``flagged_safety`` is the decision at the safety operating point (sensitivity >= 0.95 on
  validation), which flags every study the balanced point flags and more;
* ``screened`` (true/false): whether a model covered the series (``task`` is not None);
* ``score_min`` / ``score_max`` (0..1, inclusive): the AI score; a series without score does not match.

Priority: the rule's priority, raised by the study's order priority when that is more urgent:
``STAT`` (HL7 ``S``) means stat, ``HIGH`` (``URGENT``, HL7 ``A``/``ASAP``) means urgent, anything else
(``ROUTINE``, ``MEDIUM``, ``LOW``, none) leaves the rule's priority. It never lowers it. The one
vocabulary is :class:`prescreen.domain.OrderPriority`.

Validation (:func:`parse_rules`, :func:`load_rules`) names the rule (index from 1, and name) and the
line of the problem: YAML syntax, a missing or misspelt key, a bad value, duplicate names, no rules,
and unreachable rules (after a catch-all, or after a rule that matches everything they match).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, ValidationError, field_validator
from pydantic import model_validator as _model_validator

from prescreen.domain import OrderPriority, Priority
from prescreen.errors import RulesError
from prescreen.triage.priority import PRIORITIES, most_urgent, rank

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_NAME_FIELDS = ("task", "modality", "body_part", "label", "institution", "order_priority")
_MODEL_FIELDS = ("task", "label", "flagged", "flagged_balanced", "flagged_safety", "score_min", "score_max")
_FLAG_FIELDS = ("flagged", "flagged_balanced", "flagged_safety")  # only a screened series has them


def order_priority_level(order_priority: str | None) -> Priority | None:
    """The priority an order priority asks for, or None (``ROUTINE``, ``LOW``, unknown, missing).

    Args:
        order_priority: the study's order priority, e.g. ``STAT``, ``HIGH``, ``ROUTINE``.
    """
    try:
        parsed = OrderPriority.parse(order_priority)
    except ValueError:
        return None  # an unknown vocabulary asks for nothing
    return parsed.level if parsed is not None else None


@dataclass(frozen=True)
class SeriesFacts:
    """What routing looks at for one series of a study.

    Attributes:
        task: the screening task that covered the series, or None when no model covered it.
        modality: DICOM modality (``ECG``, ``US``, ``CR``...).
        body_part: DICOM body part examined.
        label: the AI label (e.g. ``af``, ``noisy``, ``malignant``).
        score: the AI flag score (0..1).
        flagged: whether the AI flagged the series (at the balanced operating point).
        flagged_safety: whether the series is flagged at the safety operating point.
        institution: the sending institution.
        order_priority: the order's priority (``STAT``, ``HIGH``, ``ROUTINE``, ``MEDIUM``, ``LOW``).
    """

    task: str | None = None
    modality: str | None = None
    body_part: str | None = None
    label: str | None = None
    score: float | None = None
    flagged: bool | None = None
    institution: str | None = None
    order_priority: str | None = None
    flagged_safety: bool | None = None

    @property
    def flagged_balanced(self) -> bool | None:
        return self.flagged


@dataclass(frozen=True)
class Routing:
    """Where a study goes.

    Attributes:
        worklist: the worklist (specialty) slug.
        priority: the priority (the rule's, raised by the order priority).
        rule: the name of the rule that matched.
    """

    worklist: str
    priority: Priority
    rule: str


def _norm(value: str) -> str:
    return value.strip().casefold()


class RuleMatch(BaseModel):
    """The conditions of a rule; all given ones must hold. None = no condition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: tuple[str, ...] | None = None
    modality: tuple[str, ...] | None = None
    body_part: tuple[str, ...] | None = None
    label: tuple[str, ...] | None = None
    institution: tuple[str, ...] | None = None
    order_priority: tuple[str, ...] | None = None
    flagged: StrictBool | None = None
    flagged_balanced: StrictBool | None = None
    flagged_safety: StrictBool | None = None
    screened: StrictBool | None = None
    score_min: StrictFloat | None = Field(default=None, ge=0.0, le=1.0)
    score_max: StrictFloat | None = Field(default=None, ge=0.0, le=1.0)

    @field_validator(*_NAME_FIELDS, mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        if value is None:
            return None
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("[] is empty: give a string or a non-empty list of strings")
        out = []
        for v in values:
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"{v!r} is not a non-empty string")
            out.append(_norm(v))
        return tuple(out)

    @_model_validator(mode="after")
    def _consistent(self) -> RuleMatch:
        if self.score_min is not None and self.score_max is not None and self.score_min > self.score_max:
            raise ValueError(f"score_min {self.score_min} is greater than score_max {self.score_max}")
        if None not in (self.flagged, self.flagged_balanced) and self.flagged is not self.flagged_balanced:
            raise ValueError("flagged and flagged_balanced are the same decision and cannot differ")
        if self.flagged_balanced_value is True and self.flagged_safety is False:
            raise ValueError(
                "flagged (balanced) true with flagged_safety false can never match: the safety point flags "
                "everything the balanced point flags"
            )
        if self.screened is False:
            model_only = [f for f in _MODEL_FIELDS if getattr(self, f) is not None]
            if model_only:
                raise ValueError(
                    f"screened: false cannot be combined with {', '.join(model_only)} "
                    "(a series no model covered has no task, label, flag or score), so the rule can never match"
                )
        return self

    @property
    def flagged_balanced_value(self) -> bool | None:
        """The balanced-flag condition, by either of its names."""
        return self.flagged if self.flagged is not None else self.flagged_balanced

    @property
    def is_catch_all(self) -> bool:
        """True when the match has no condition at all."""
        return all(getattr(self, f) is None for f in type(self).model_fields)

    def matches(self, facts: SeriesFacts) -> bool:
        """Whether a series meets every condition.

        Args:
            facts: the series.
        """
        for f in _NAME_FIELDS:
            allowed: tuple[str, ...] | None = getattr(self, f)
            value: str | None = getattr(facts, f)
            if allowed is not None and (value is None or _norm(value) not in allowed):
                return False
        balanced = self.flagged_balanced_value
        if balanced is not None and facts.flagged is not balanced:
            return False
        if self.flagged_safety is not None and facts.flagged_safety is not self.flagged_safety:
            return False
        if self.screened is not None and (facts.task is not None) is not self.screened:
            return False
        lo, hi = self._score_range()
        return not (self.has_score_range and (facts.score is None or not lo <= facts.score <= hi))

    def covers(self, other: RuleMatch) -> bool:
        """Whether every series ``other`` matches is matched by this one too (a sound, field-wise test).

        Args:
            other: a later rule's match.
        """
        for f in _NAME_FIELDS:
            mine: tuple[str, ...] | None = getattr(self, f)
            theirs: tuple[str, ...] | None = getattr(other, f)
            if mine is not None and (theirs is None or not set(theirs) <= set(mine)):
                return False
        if self.flagged_balanced_value is not None and other.flagged_balanced_value is not self.flagged_balanced_value:
            return False
        if self.flagged_safety is not None and other.flagged_safety is not self.flagged_safety:
            return False
        implied_screened = True if other.task is not None else other.screened  # a task condition implies it
        if self.screened is not None and implied_screened is not self.screened:
            return False
        if self.has_score_range:
            if not other.has_score_range:
                return False
            lo, hi = self._score_range()
            other_lo, other_hi = other._score_range()
            if other_lo < lo or other_hi > hi:
                return False
        return True

    @property
    def has_score_range(self) -> bool:
        """True when the match has a score condition."""
        return self.score_min is not None or self.score_max is not None

    def _score_range(self) -> tuple[float, float]:
        lo = -math.inf if self.score_min is None else self.score_min
        hi = math.inf if self.score_max is None else self.score_max
        return lo, hi


class Rule(BaseModel):
    """One routing rule: a name, conditions, and the worklist and priority it gives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    match: RuleMatch = Field(default_factory=RuleMatch)
    worklist: str
    priority: Priority

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{value!r} is not a non-empty string")
        return value.strip()

    @field_validator("match", mode="before")
    @classmethod
    def _match(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("worklist", mode="before")
    @classmethod
    def _worklist(cls, value: Any) -> Any:
        if not isinstance(value, str) or not _SLUG.match(value):
            raise ValueError(f"{value!r} is not a slug (lowercase letters, digits and single hyphens, e.g. cardiology)")
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority(cls, value: Any) -> Any:
        if not isinstance(value, str) or value.strip().lower() not in PRIORITIES:
            raise ValueError(f"{value!r} is not one of {', '.join(PRIORITIES)}")
        return value.strip().lower()

    def matches(self, facts: SeriesFacts) -> bool:
        """Whether the rule matches a series.

        Args:
            facts: the series.
        """
        return self.match.matches(facts)


_RULE_KEYS = tuple(Rule.model_fields)
_MATCH_KEYS = tuple(RuleMatch.model_fields)


@dataclass(frozen=True)
class RuleSet:
    """An ordered, validated list of rules; the first that matches wins.

    Attributes:
        rules: the rules, in file order.
        source: where they came from (a path, or ``<rules>``).
    """

    rules: tuple[Rule, ...]
    source: str = "<rules>"

    def route(self, facts: SeriesFacts) -> Routing | None:
        """Route one series: the first matching rule, its priority raised by the order priority.

        Args:
            facts: the series.

        Returns:
            The routing, or None when no rule matches (a rule set without catch-all).
        """
        for rule in self.rules:
            if rule.matches(facts):
                ordered = order_priority_level(facts.order_priority)
                priority = rule.priority if ordered is None else most_urgent(rule.priority, ordered)
                return Routing(rule.worklist, priority, rule.name)
        return None

    def worklists(self) -> list[str]:
        """The distinct worklists the rules route to, in rule order."""
        return list(dict.fromkeys(rule.worklist for rule in self.rules))


def route_study(rules: RuleSet, series: Sequence[SeriesFacts]) -> list[Routing]:
    """Route a study: one routing per distinct worklist its series go to.

    Each worklist gets the most urgent priority among the series routed there (and that series' rule;
    the first such series on a tie). Series no rule matches are left out. A study without any series
    facts is routed as one unscreenable series (``SeriesFacts()``, task None).

    Args:
        rules: the rule set.
        series: the facts of each series of the study.

    Returns:
        The routings, most urgent first, then by worklist name.
    """
    best: dict[str, Routing] = {}
    for facts in series or [SeriesFacts()]:
        routing = rules.route(facts)
        if routing is None:
            continue
        current = best.get(routing.worklist)
        if current is None or rank(routing.priority) < rank(current.priority):
            best[routing.worklist] = routing
    return sorted(best.values(), key=lambda r: (rank(r.priority), r.worklist))


# --- loading and validation ------------------------------------------------------------------------


def default_rules_path() -> Path:
    """The routing rules shipped with prescreen (``prescreen/triage/default_rules.yaml``)."""
    return Path(__file__).with_name("default_rules.yaml")


@cache
def load_default_rules() -> RuleSet:
    """The shipped routing rules (parsed once).

    Raises:
        RulesError: the shipped file is invalid (a packaging bug).
    """
    return load_rules(default_rules_path())


def load_rules(path: Path) -> RuleSet:
    """Read and validate a rules file.

    Args:
        path: the YAML file.

    Raises:
        RulesError: the file cannot be read, or is invalid; the message names the rule and the line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RulesError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc.strerror or exc}") from None
    return parse_rules(text, str(path))


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse and validate rules from YAML text.

    Args:
        text: the YAML text.
        source: the file name used in messages.

    Raises:
        RulesError: the text is invalid. The message has one line per problem, each like
            ``rules.yaml line 14: rule 3 'noisy-ecg': priority 'asap' is not one of stat, urgent, routine``.
    """
    node, data = _load_yaml(text, source)
    seq_node, items = _rules_list(node, data, source)
    problems: list[tuple[int, str]] = []
    rules: list[tuple[int, Rule, yaml.Node]] = []
    for index, (item_node, item) in enumerate(zip(seq_node.value, items, strict=True), start=1):
        what = _rule_label(index, item)
        if not isinstance(item_node, yaml.MappingNode) or not isinstance(item, dict):
            problems.append((_line(item_node), f"{what}: a rule must be a mapping with keys {', '.join(_RULE_KEYS)}"))
            continue
        dups = _duplicate_keys(item_node, recursive=True)
        for key, line, first in dups:
            problems.append((line, f"{what}: duplicate key {key!r} (first at line {first})"))
        try:
            rule = Rule.model_validate(item)
        except ValidationError as exc:
            problems.extend((line, f"{what}: {msg}") for line, msg in _validation_problems(exc, item_node))
            continue
        if not dups:
            rules.append((index, rule, item_node))
    problems.extend(_duplicate_names(rules))
    problems.extend(_unreachable(rules))
    if problems:
        problems.sort(key=lambda p: p[0])
        raise RulesError("\n".join(f"{source} line {line}: {msg}" for line, msg in problems))
    return RuleSet(tuple(rule for _, rule, _ in rules), source)


def _load_yaml(text: str, source: str) -> tuple[yaml.Node, Any]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise RulesError(f"{source}{_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:  # reader errors (bad characters) carry no mark
        raise RulesError(f"{source}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    if node is None:
        raise RulesError(f"{source} line 1: the file is empty; expected a top-level 'rules:' list")
    return node, data


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" line {mark.line + 1}" if mark is not None else ""
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context:
        started = f" started at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
        if exc.problem.startswith("but "):  # the composer's "expected X ... but found Y"
            problem = f"{exc.context}{started}, {exc.problem}"
        else:
            problem += f" ({exc.context}{started})"
    return f"{where}: YAML syntax error: {problem}"


def _rules_list(node: yaml.Node, data: Any, source: str) -> tuple[yaml.SequenceNode, list[Any]]:
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        raise RulesError(f"{source} line {_line(node)}: expected a mapping with a top-level 'rules:' list")
    for key, line, first in _duplicate_keys(node, recursive=False):
        raise RulesError(f"{source} line {line}: duplicate top-level key {key!r} (first at line {first})")
    for key_node, _ in node.value:
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.value == "rules"):
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            raise RulesError(f"{source} line {_line(key_node)}: unknown top-level key {key!r}; expected only 'rules'")
    seq_node = _child(node, "rules")
    if seq_node is None:
        raise RulesError(f"{source} line {_line(node)}: no top-level 'rules:' list")
    items = data["rules"]
    if not isinstance(seq_node, yaml.SequenceNode) or not isinstance(items, list):
        raise RulesError(f"{source} line {_line(seq_node)}: 'rules' must be a list of rules")
    if not items:
        raise RulesError(f"{source} line {_line(seq_node)}: 'rules' is empty; give at least one rule")
    return seq_node, items


def _rule_label(index: int, item: Any) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    if isinstance(name, str) and name.strip():
        return f"rule {index} {name.strip()!r}"
    return f"rule {index}"


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _child(node: yaml.Node, key: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(key, str):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return value_node  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
        return node.value[key]  # type: ignore[no-any-return]
    return None


def _key_node(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return key_node
    return None


def _node_at(node: yaml.Node, loc: tuple[str | int, ...]) -> yaml.Node:
    """The deepest node along ``loc`` (the node itself when the path is missing)."""
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        node = child
    return node


def _duplicate_keys(node: yaml.Node, *, recursive: bool) -> list[tuple[str, int, int]]:
    found: list[tuple[str, int, int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    found.append((key_node.value, _line(key_node), seen[key_node.value]))
                else:
                    seen[key_node.value] = _line(key_node)
            if recursive:
                found.extend(_duplicate_keys(value_node, recursive=True))
    elif isinstance(node, yaml.SequenceNode) and recursive:
        for child in node.value:
            found.extend(_duplicate_keys(child, recursive=True))
    return found


def _validation_problems(exc: ValidationError, rule_node: yaml.Node) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        path = _path(loc)
        kind = error["type"]
        if kind == "extra_forbidden":
            parent = loc[:-1]
            allowed = _MATCH_KEYS if parent == ("match",) else _RULE_KEYS
            where = f" in {_path(parent)}" if parent else ""
            key_node = _key_node(_node_at(rule_node, parent), str(loc[-1]))
            line = _line(key_node) if key_node is not None else _line(rule_node)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            out.append((line, f"unknown key {loc[-1]!r}{where} ({hint}allowed: {', '.join(allowed)})"))
            continue
        line = _line(_node_at(rule_node, loc))
        if kind == "missing":
            out.append((line, f"missing key {loc[-1]!r}"))
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            out.append((line, f"{path} must be a mapping of conditions, not {error.get('input')!r}"))
        elif kind == "value_error":
            detail = str(error["msg"]).removeprefix("Value error, ")
            leaf = bool(loc) and loc[-1] in _RULE_KEYS + _MATCH_KEYS and loc != ("match",)
            out.append((line, f"{path} {detail}" if leaf else f"{path}: {detail}"))
        else:
            detail = str(error["msg"]).replace("Input should be", "must be")
            out.append((line, f"{path} {detail}, not {error.get('input')!r}"))
    return out


def _path(loc: tuple[str | int, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "rule"


def _duplicate_names(rules: list[tuple[int, Rule, yaml.Node]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    seen: dict[str, tuple[int, int]] = {}
    for index, rule, node in rules:
        key = rule.name.casefold()
        name_node = _child(node, "name")
        line = _line(name_node) if name_node is not None else _line(node)
        if key in seen:
            first_index, first_line = seen[key]
            out.append((line, f"rule {index} {rule.name!r}: duplicate name (rule {first_index} at line {first_line})"))
        else:
            seen[key] = (index, line)
    return out


def _unreachable(rules: list[tuple[int, Rule, yaml.Node]]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for j, (index, rule, node) in enumerate(rules):
        for earlier_index, earlier, earlier_node in rules[:j]:
            if not earlier.match.covers(rule.match):
                continue
            first = f"rule {earlier_index} {earlier.name!r} (line {_line(earlier_node)})"
            if earlier.match.is_catch_all:
                why = f"it comes after the catch-all {first}, so it can never match"
            else:
                why = f"{first} comes first and matches everything it matches, so it can never match"
            out.append((_line(node), f"rule {index} {rule.name!r}: {why}"))
            break
    return out
