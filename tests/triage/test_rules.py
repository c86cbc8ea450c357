"""Routing rules: the shipped defaults, matching, study routing, and validation messages with lines."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import prescreen.triage as triage_package
from prescreen.domain import ORDER_PRIORITY_ALIASES
from prescreen.errors import RulesError
from prescreen.triage.priority import PRIORITIES
from prescreen.triage.rules import (
    Routing,
    Rule,
    RuleMatch,
    RuleSet,
    SeriesFacts,
    default_rules_path,
    load_default_rules,
    load_rules,
    order_priority_level,
    parse_rules,
    route_study,
)

ECG = SeriesFacts(task="ecg-rhythm", modality="ECG", label="normal", score=0.05, flagged=False)
AF = dataclasses.replace(ECG, label="af", score=0.93, flagged=True)
US = SeriesFacts(task="breast-us", modality="US", body_part="BREAST", label="benign", score=0.2, flagged=False)
CHEST = SeriesFacts(task="chest-xray", modality="CR", body_part="CHEST", label="normal", score=0.1, flagged=False)
CT = SeriesFacts(task=None, modality="CT", body_part="HEAD")


def rule_text(*rules: str) -> str:
    return "rules:\n" + "".join(rules)


def rule(name: str, match: str = "", worklist: str = "x", priority: str = "routine") -> str:
    body = f"  - name: {name}\n"
    if match:
        body += f"    match: {match}\n"
    return body + f"    worklist: {worklist}\n    priority: {priority}\n"


# --- the shipped rules -----------------------------------------------------------------------------


def test_default_rules_ship_inside_the_package_and_load() -> None:
    path = default_rules_path()
    assert path.is_file()
    assert path.parent == Path(triage_package.__file__ or "").parent
    rules = load_default_rules()
    assert [r.name for r in rules.rules] == [
        "noisy-ecg",
        "ecg-af-confident",
        "ecg-flagged",
        "ecg-safety",
        "ecg",
        "holter-ventricular-run-or-pause",
        "holter-flagged",
        "holter",
        "breast-us-flagged",
        "breast-us-safety",
        "breast-us",
        "chest-xray-flagged",
        "chest-xray-safety",
        "chest-xray",
        "ecg-not-screened",
        "not-screened",
        "catch-all",
    ]
    assert rules.worklists() == ["ecg-repeat", "cardiology", "sonography", "thoracic-radiology", "general-radiology"]
    assert rules.rules[-1].match.is_catch_all
    assert load_default_rules() is rules  # parsed once
    assert load_rules(path) == rules


def test_a_study_flagged_only_at_the_safety_point_goes_to_the_specialist_at_urgent() -> None:
    rules = load_default_rules()
    for task, worklist in (
        ("ecg-rhythm", "cardiology"),
        ("chest-xray", "thoracic-radiology"),
        ("breast-us", "sonography"),
    ):
        safety_only = SeriesFacts(task=task, label="x", score=0.3, flagged=False, flagged_safety=True)
        routing = rules.route(safety_only)
        assert routing is not None and (routing.worklist, routing.priority) == (worklist, "urgent"), task
        neither = SeriesFacts(task=task, label="x", score=0.1, flagged=False, flagged_safety=False)
        routing = rules.route(neither)
        assert routing is not None and (routing.worklist, routing.priority) == (worklist, "routine"), task


def test_flag_conditions_by_operating_point() -> None:
    both = RuleMatch(flagged_balanced=True)
    assert both.matches(SeriesFacts(task="t", flagged=True, flagged_safety=True))
    assert not both.matches(SeriesFacts(task="t", flagged=False, flagged_safety=True))
    safety = RuleMatch(flagged_safety=True)
    assert safety.matches(SeriesFacts(task="t", flagged=False, flagged_safety=True))
    assert not safety.matches(SeriesFacts(task="t", flagged=False, flagged_safety=False))
    assert not safety.matches(SeriesFacts(task="t"))  # no result: no flag at all
    assert not safety.covers(RuleMatch(flagged=True)) and not RuleMatch(flagged=True).covers(safety)
    with pytest.raises(ValueError, match="same decision"):
        RuleMatch(flagged=True, flagged_balanced=False)
    with pytest.raises(ValueError, match="never match"):
        RuleMatch(flagged=True, flagged_safety=False)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (AF, Routing("cardiology", "stat", "ecg-af-confident")),
        (dataclasses.replace(AF, score=0.8), Routing("cardiology", "stat", "ecg-af-confident")),
        (dataclasses.replace(AF, score=0.79), Routing("cardiology", "urgent", "ecg-flagged")),
        (dataclasses.replace(AF, label="other", score=0.95), Routing("cardiology", "urgent", "ecg-flagged")),
        (ECG, Routing("cardiology", "routine", "ecg")),
        (
            dataclasses.replace(ECG, label="noisy", flagged=True, score=0.99),
            Routing("ecg-repeat", "urgent", "noisy-ecg"),
        ),
        (dataclasses.replace(ECG, label="NOISY", flagged=False), Routing("ecg-repeat", "urgent", "noisy-ecg")),
        (
            dataclasses.replace(US, label="malignant", flagged=True, score=0.9),
            Routing("sonography", "urgent", "breast-us-flagged"),
        ),
        (US, Routing("sonography", "routine", "breast-us")),
        (
            dataclasses.replace(CHEST, label="pneumonia", flagged=True),
            Routing("thoracic-radiology", "urgent", "chest-xray-flagged"),
        ),
        (CHEST, Routing("thoracic-radiology", "routine", "chest-xray")),
        (
            SeriesFacts(task="holter", modality="ECG", label="nsvt", flagged=True, score=1.0),
            Routing("cardiology", "urgent", "holter-ventricular-run-or-pause"),
        ),
        (
            SeriesFacts(task="holter", modality="ECG", label="pause", flagged=True, score=1.0),
            Routing("cardiology", "urgent", "holter-ventricular-run-or-pause"),
        ),
        (
            SeriesFacts(task="holter", modality="ECG", label="af", flagged=True, score=1.0),
            Routing("cardiology", "urgent", "holter-flagged"),
        ),
        (
            SeriesFacts(task="holter", modality="ECG", label="normal", flagged=False, score=0.3),
            Routing("cardiology", "routine", "holter"),
        ),
        (CT, Routing("general-radiology", "routine", "not-screened")),
        (SeriesFacts(), Routing("general-radiology", "routine", "not-screened")),
        (SeriesFacts(modality="ecg"), Routing("cardiology", "routine", "ecg-not-screened")),
        (SeriesFacts(task="knee-mri", score=0.9, flagged=True), Routing("general-radiology", "routine", "catch-all")),
    ],
)
def test_default_rules_route_the_canonical_cases(facts: SeriesFacts, expected: Routing) -> None:
    assert load_default_rules().route(facts) == expected


@pytest.mark.parametrize(
    ("order", "facts", "expected"),
    [
        ("STAT", ECG, "stat"),
        ("stat", CT, "stat"),
        (" Stat ", US, "stat"),
        ("S", CHEST, "stat"),
        ("HIGH", ECG, "urgent"),
        ("ASAP", CT, "urgent"),
        ("HIGH", AF, "stat"),  # never lowered
        ("ROUTINE", AF, "stat"),
        ("LOW", dataclasses.replace(AF, score=0.5), "urgent"),
        ("MEDIUM", ECG, "routine"),
        ("ROUTINE", ECG, "routine"),
        (None, ECG, "routine"),
        ("whenever", ECG, "routine"),
    ],
)
def test_order_priority_raises_the_priority_never_lowers_it(
    order: str | None, facts: SeriesFacts, expected: str
) -> None:
    routing = load_default_rules().route(dataclasses.replace(facts, order_priority=order))
    assert routing is not None
    assert routing.priority == expected
    assert routing.rule == load_default_rules().route(facts).rule  # type: ignore[union-attr]


def test_order_priority_levels() -> None:
    assert order_priority_level(None) is None
    assert order_priority_level("routine") is None
    assert order_priority_level("bogus") is None
    levels = {alias: order_priority_level(alias.lower()) for alias in ORDER_PRIORITY_ALIASES}
    assert set(levels.values()) <= {*PRIORITIES, None}
    assert levels["STAT"] == levels["S"] == "stat"
    assert levels["HIGH"] == levels["URGENT"] == levels["ASAP"] == levels["A"] == "urgent"
    assert levels["ROUTINE"] is levels["MEDIUM"] is levels["LOW"] is levels["R"] is None


def test_default_file_uses_only_safe_yaml() -> None:
    text = default_rules_path().read_text(encoding="utf-8")
    assert "!!" not in text and "!<" not in text
    assert isinstance(yaml.safe_load(text)["rules"], list)


# --- matching --------------------------------------------------------------------------------------


def one(match: str, worklist: str = "hit", priority: str = "routine") -> RuleSet:
    return parse_rules(rule_text(rule("r", match, worklist, priority)))


@pytest.mark.parametrize("field", ["task", "modality", "body_part", "label", "institution", "order_priority"])
def test_string_conditions_are_case_insensitive_lists_and_need_a_value(field: str) -> None:
    lower, upper = one(f"{{{field}: abc}}"), one(f"{{{field}: [Other, ' ABC ']}}")
    for rules in (lower, upper):
        assert rules.route(SeriesFacts(**{field: "Abc"})) is not None  # type: ignore[arg-type]
        assert rules.route(SeriesFacts(**{field: "abcd"})) is None  # type: ignore[arg-type]
        assert rules.route(SeriesFacts()) is None
    assert upper.route(SeriesFacts(**{field: "other"})) is not None  # type: ignore[arg-type]


def test_flag_condition_needs_a_result() -> None:
    flagged, unflagged = one("{flagged: true}"), one("{flagged: false}")
    assert flagged.route(SeriesFacts(flagged=True)) is not None
    assert flagged.route(SeriesFacts(flagged=False)) is None
    assert unflagged.route(SeriesFacts(flagged=False)) is not None
    assert unflagged.route(SeriesFacts(flagged=True)) is None
    assert flagged.route(SeriesFacts()) is None and unflagged.route(SeriesFacts()) is None


def test_screened_condition_is_whether_a_task_covered_the_series() -> None:
    screened, unscreened = one("{screened: true}"), one("{screened: false}")
    assert screened.route(ECG) is not None and screened.route(CT) is None
    assert unscreened.route(CT) is not None and unscreened.route(ECG) is None


def test_score_bounds_are_inclusive_and_need_a_score() -> None:
    rules = one("{score_min: 0.25, score_max: 0.75}")
    for score, hit in [(0.25, True), (0.5, True), (0.75, True), (0.2499, False), (0.7501, False), (None, False)]:
        assert (rules.route(SeriesFacts(score=score)) is not None) is hit, score
    assert one("{score_min: 0.5}").route(SeriesFacts(score=1.0)) is not None
    assert one("{score_max: 0.5}").route(SeriesFacts(score=0.0)) is not None
    assert one("{score_min: 1}").route(SeriesFacts(score=1.0)) is not None  # an int bound is a number


@pytest.mark.parametrize("match", ["", "{}", "null", "~"])
def test_an_empty_or_absent_match_is_a_catch_all(match: str) -> None:
    rules = one(match)
    assert rules.rules[0].match.is_catch_all
    for facts in (ECG, AF, US, CHEST, CT, SeriesFacts()):
        assert rules.route(facts) == Routing("hit", "routine", "r")


def test_all_conditions_must_hold_and_the_first_match_wins() -> None:
    rules = parse_rules(
        rule_text(
            rule("both", "{task: ecg-rhythm, flagged: true}", "a", "urgent"),
            rule("task", "{task: ecg-rhythm}", "b", "routine"),
        )
    )
    assert rules.route(AF) == Routing("a", "urgent", "both")
    assert rules.route(ECG) == Routing("b", "routine", "task")
    assert rules.route(US) is None  # no catch-all
    assert route_study(rules, [US]) == []


def test_priority_and_names_are_normalised() -> None:
    rules = parse_rules(rule_text(rule("'  spaced name  '", "", "x", "URGENT")))
    assert rules.rules[0].name == "spaced name"
    assert rules.rules[0].priority == "urgent"


def test_rule_sets_are_immutable() -> None:
    rules = load_default_rules()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.rules = ()  # type: ignore[misc]
    with pytest.raises(ValueError):
        rules.rules[0].worklist = "other"  # type: ignore[misc]  # a frozen pydantic model


# --- routing a study ------------------------------------------------------------------------------


def test_route_study_gives_one_item_per_worklist_with_the_most_urgent_priority() -> None:
    rules = load_default_rules()
    noisy = dataclasses.replace(ECG, label="noisy", flagged=True)
    series = [ECG, dataclasses.replace(AF, score=0.6), CT, AF, noisy, dataclasses.replace(CT, modality="MR")]
    assert route_study(rules, series) == [
        Routing("cardiology", "stat", "ecg-af-confident"),
        Routing("ecg-repeat", "urgent", "noisy-ecg"),
        Routing("general-radiology", "routine", "not-screened"),
    ]


def test_route_study_keeps_the_first_series_on_a_tie() -> None:
    rules = load_default_rules()
    other = dataclasses.replace(AF, label="other", score=0.7)
    assert route_study(rules, [dataclasses.replace(AF, score=0.5), other]) == [
        Routing("cardiology", "urgent", "ecg-flagged")
    ]
    assert route_study(rules, [ECG, ECG]) == [Routing("cardiology", "routine", "ecg")]


def test_route_study_sorts_by_priority_then_worklist() -> None:
    rules = load_default_rules()
    routed = route_study(rules, [CT, US, CHEST, ECG])
    assert [r.worklist for r in routed] == ["cardiology", "general-radiology", "sonography", "thoracic-radiology"]
    routed = route_study(rules, [CT, dataclasses.replace(CHEST, flagged=True), AF])
    assert [(r.worklist, r.priority) for r in routed] == [
        ("cardiology", "stat"),
        ("thoracic-radiology", "urgent"),
        ("general-radiology", "routine"),
    ]


def test_a_study_without_series_facts_is_routed_as_unscreenable() -> None:
    assert route_study(load_default_rules(), []) == [Routing("general-radiology", "routine", "not-screened")]


def test_order_priority_applies_per_series_in_a_study() -> None:
    series = [dataclasses.replace(f, order_priority="STAT") for f in (ECG, CT)]
    assert {r.priority for r in route_study(load_default_rules(), series)} == {"stat"}


# --- validation: every problem names its line (and the rule) --------------------------------------

BAD: list[tuple[str, str, int, list[str]]] = [
    (
        "bad-priority",
        rule_text(
            rule("a", "{task: ecg-rhythm}"),
            rule("noisy-ecg", "\n      task: ecg-rhythm\n      label: noisy", "ecg-repeat", "asap"),
        ),
        11,
        ["rule 2 'noisy-ecg': priority 'asap' is not one of stat, urgent, routine"],
    ),
    (
        "misspelt-match-key",
        rule_text(rule("a", "\n      scor_min: 0.5")),
        4,
        ["rule 1 'a'", "unknown key 'scor_min' in match", "did you mean 'score_min'?"],
    ),
    (
        "misspelt-rule-key",
        "rules:\n  - name: a\n    worklist: x\n    prio: stat\n",
        4,
        ["rule 1 'a'", "unknown key 'prio'", "did you mean 'priority'?"],
    ),
    ("missing-key", "rules:\n  - name: a\n    worklist: x\n", 2, ["rule 1 'a'", "missing key 'priority'"]),
    ("missing-name", "rules:\n  - worklist: x\n    priority: stat\n", 2, ["rule 1:", "missing key 'name'"]),
    (
        "empty-name",
        "rules:\n  - name: ''\n    worklist: x\n    priority: stat\n",
        2,
        ["rule 1:", "name '' is not a non-empty string"],
    ),
    ("bad-slug", rule_text(rule("a", "", "Cardiology")), 3, ["rule 1 'a'", "worklist 'Cardiology' is not a slug"]),
    ("slug-double-hyphen", rule_text(rule("a", "", "a--b")), 3, ["worklist 'a--b' is not a slug"]),
    (
        "bad-flag",
        rule_text(rule("a", "\n      flagged: maybe")),
        4,
        ["rule 1 'a'", "match.flagged must be a valid boolean"],
    ),
    ("bad-screened", rule_text(rule("a", "\n      screened: 1")), 4, ["match.screened must be a valid boolean"]),
    (
        "score-above-1",
        rule_text(rule("a", "\n      task: x\n      score_min: 1.5")),
        5,
        ["match.score_min must be less than or equal to 1"],
    ),
    (
        "score-below-0",
        rule_text(rule("a", "\n      score_max: -0.1")),
        4,
        ["match.score_max must be greater than or equal to 0"],
    ),
    (
        "score-not-number",
        rule_text(rule("a", "\n      score_min: high")),
        4,
        ["match.score_min must be a valid number"],
    ),
    ("score-bool", rule_text(rule("a", "\n      score_min: true")), 4, ["match.score_min must be a valid number"]),
    (
        "min-above-max",
        rule_text(rule("a", "\n      score_min: 0.9\n      score_max: 0.5")),
        4,
        ["match: score_min 0.9 is greater than score_max 0.5"],
    ),
    ("empty-list", rule_text(rule("a", "\n      task: []")), 4, ["match.task [] is empty"]),
    ("not-a-string", rule_text(rule("a", "\n      task: [ecg, 3]")), 4, ["match.task 3 is not a non-empty string"]),
    (
        "unscreened-with-label",
        rule_text(rule("a", "{screened: false, label: af}")),
        3,
        ["screened: false cannot be combined with label"],
    ),
    ("match-not-mapping", rule_text(rule("a", "[task]")), 3, ["match must be a mapping of conditions"]),
    (
        "rule-not-mapping",
        "rules:\n  - name: a\n    worklist: x\n    priority: stat\n  - just text\n",
        5,
        ["rule 2: a rule must be a mapping"],
    ),
    (
        "duplicate-name",
        rule_text(rule("a", "{task: x}"), rule("A", "{task: y}")),
        6,
        ["rule 2 'A': duplicate name (rule 1 at line 2)"],
    ),
    (
        "after-catch-all",
        rule_text(rule("x", "{task: x}"), rule("all"), rule("late", "{task: y}")),
        9,
        ["rule 3 'late'", "catch-all rule 2 'all' (line 6)"],
    ),
    (
        "two-catch-alls",
        rule_text(rule("all"), rule("all-2", "{}")),
        5,
        ["rule 2 'all-2'", "catch-all rule 1 'all' (line 2)"],
    ),
    (
        "shadowed",
        rule_text(rule("ecg", "{task: [ecg-rhythm, x]}"), rule("af", "{task: ecg-rhythm, label: af}")),
        6,
        ["rule 2 'af'", "rule 1 'ecg' (line 2) comes first"],
    ),
    (
        "shadowed-score",
        rule_text(rule("hi", "{score_min: 0.5}"), rule("higher", "{score_min: 0.8, score_max: 0.9}")),
        6,
        ["rule 2 'higher'", "can never match"],
    ),
    (
        "duplicate-key",
        "rules:\n  - name: a\n    worklist: x\n    priority: stat\n    priority: urgent\n",
        5,
        ["rule 1 'a': duplicate key 'priority' (first at line 4)"],
    ),
    (
        "duplicate-match-key",
        rule_text(rule("a", "\n      task: x\n      task: y")),
        5,
        ["rule 1 'a': duplicate key 'task' (first at line 4)"],
    ),
    ("duplicate-top-key", "rules: []\nrules:\n" + rule("a"), 2, ["duplicate top-level key 'rules' (first at line 1)"]),
    ("yaml-syntax", "rules:\n  - name: a\n    match: {task: [x\n    worklist: x\n", 4, ["YAML syntax error"]),
    ("yaml-indent", "rules:\n  - name: a\n   worklist: x\n", 3, ["YAML syntax error"]),
    ("yaml-tab", "rules:\n\t- name: a\n", 2, ["YAML syntax error", "'\\t'"]),
    ("yaml-unsafe-tag", "rules:\n  - name: !!python/object:os.system a\n", 2, ["YAML syntax error", "python/object"]),
    ("yaml-two-documents", "rules: []\n---\nrules: []\n", 2, ["YAML syntax error", "single document"]),
    ("empty-file", "", 1, ["empty"]),
    ("comments-only", "# nothing\n", 1, ["empty"]),
    ("not-a-mapping", "- name: a\n", 1, ["top-level 'rules:' list"]),
    ("scalar", "hello\n", 1, ["top-level 'rules:' list"]),
    ("no-rules-key", "\nrulez:\n  - name: a\n", 2, ["unknown top-level key 'rulez'"]),
    ("extra-top-key", "rules:\n" + rule("a") + "version: 1\n", 5, ["unknown top-level key 'version'"]),
    ("rules-not-a-list", "rules:\n  name: a\n", 2, ["'rules' must be a list of rules"]),
    ("rules-null", "rules:\n", 1, ["'rules' must be a list of rules"]),
    ("no-rules", "rules: []\n", 1, ["'rules' is empty"]),
]


@pytest.mark.parametrize(("text", "line", "fragments"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_rules_name_the_line_and_rule(text: str, line: int, fragments: list[str]) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.yaml")
    message = str(info.value)
    at_line = [m for m in message.splitlines() if m.startswith(f"rules.yaml line {line}: ")]
    assert at_line, message
    for fragment in fragments:
        assert any(fragment in m for m in at_line), message
    for each in message.splitlines():  # every reported problem has its own line number
        assert re.match(r"rules\.yaml line \d+: \S", each), each


def test_the_example_message_of_the_issue() -> None:
    text = default_rules_path().read_text(encoding="utf-8").replace("priority: urgent", "priority: asap", 1)
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.yaml")
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "priority: asap" in t)
    assert (
        str(info.value)
        == f"rules.yaml line {line}: rule 1 'noisy-ecg': priority 'asap' is not one of stat, urgent, routine"
    )


def test_all_problems_are_reported_sorted_by_line() -> None:
    text = rule_text(rule("a", "", "Bad", "asap"), rule("b", "{flagged: 2}"))
    with pytest.raises(RulesError) as info:
        parse_rules(text, "r.yaml")
    lines = str(info.value).splitlines()
    assert [int(m.split()[2].rstrip(":")) for m in lines] == [3, 4, 6]
    assert "worklist 'Bad'" in lines[0] and "priority 'asap'" in lines[1] and "rule 2 'b'" in lines[2]


def test_covers_is_sound() -> None:
    """If an earlier match covers a later one, no series matching the later one escapes the earlier."""
    rng = random.Random(7)
    tasks, labels = ["ecg-rhythm", "breast-us", None], ["af", "noisy", None]

    def random_match() -> RuleMatch:
        data: dict[str, object] = {}
        if rng.random() < 0.4:
            data["task"] = rng.sample(tasks[:2], rng.randint(1, 2))
        if rng.random() < 0.3:
            data["label"] = rng.choice(labels[:2])
        if rng.random() < 0.3:
            data["flagged"] = rng.random() < 0.5
        if rng.random() < 0.3:
            lo = rng.choice([0.0, 0.5, 0.8])
            data["score_min"] = lo
            if rng.random() < 0.5:
                data["score_max"] = rng.choice([x for x in (0.5, 0.8, 1.0) if x >= lo])
        if rng.random() < 0.2:
            data["screened"] = rng.random() < 0.5
            if not data["screened"]:
                for key in ("task", "label", "flagged", "score_min", "score_max"):
                    data.pop(key, None)
        return RuleMatch.model_validate(data)

    facts = [
        SeriesFacts(task=t, label=lab, flagged=f, score=s)
        for t in tasks
        for lab in labels
        for f in (True, False, None)
        for s in (None, 0.0, 0.5, 0.7, 0.8, 0.9, 1.0)
    ]
    covered = 0
    for _ in range(400):
        a, b = random_match(), random_match()
        if a.covers(b):
            covered += 1
            assert all(a.matches(f) for f in facts if b.matches(f)), (a, b)
    assert covered > 50


def test_rules_validate_as_models() -> None:
    rule_model = Rule.model_validate({"name": "n", "worklist": "w", "priority": "stat"})
    assert rule_model.match == RuleMatch()


# --- files and the CLI -------------------------------------------------------------------------------


def test_load_rules_reads_a_file_and_names_it(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(rule_text(rule("a", "{task: ecg-rhythm}", "cardiology"), rule("rest")), encoding="utf-8")
    rules = load_rules(good)
    assert rules.source == str(good) and len(rules.rules) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(rule_text(rule("a", "", "x", "soon")), encoding="utf-8")
    with pytest.raises(RulesError, match=rf"^{re.escape(str(bad))} line 4: rule 1 'a': priority 'soon'"):
        load_rules(bad)


def test_load_rules_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_rules(tmp_path / "missing.yaml")
    with pytest.raises(RulesError, match="cannot read the rules file"):
        load_rules(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"rules: \xff\xfe\n")
    with pytest.raises(RulesError, match="not a UTF-8 text file"):
        load_rules(binary)


def test_cli_rules_check(tmp_path: Path) -> None:
    from prescreen.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["rules", "check", str(default_rules_path())])
    assert result.exit_code == 0, result.output
    assert "17 rules" in result.output
    bad = tmp_path / "rules.yaml"
    bad.write_text(rule_text(rule("noisy-ecg", "{task: ecg-rhythm}", "ecg-repeat", "asap")), encoding="utf-8")
    result = runner.invoke(app, ["rules", "check", str(bad)])
    assert result.exit_code == 2
    assert "line 5" in result.output and "noisy-ecg" in result.output and "asap" in result.output
