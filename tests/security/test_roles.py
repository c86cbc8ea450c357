"""Roles and permissions (``prescreen.security.roles``): separation of duties (三员分立) and the
exact permissions of each role."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prescreen.errors import InvalidUserError
from prescreen.security.roles import (
    CLIENT_PERMISSIONS,
    ROLE_PERMISSIONS,
    SEPARATED_ROLES,
    Permission,
    Role,
    check_role_mix,
    parse_roles,
    permissions_of_roles,
)

SEPARATED = ["admin", "security_admin", "auditor"]


def test_the_three_separated_roles() -> None:
    assert {Role.ADMIN, Role.SECURITY_ADMIN, Role.AUDITOR} == SEPARATED_ROLES


@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(SEPARATED, 2)))
def test_every_pair_of_separated_roles_is_refused_naming_both(first: str, second: str) -> None:
    with pytest.raises(InvalidUserError) as caught:
        parse_roles([first, second])
    message = str(caught.value)
    assert first in message
    assert second in message
    assert "三员分立" in message


@pytest.mark.parametrize("extra", ["reader", "ml_engineer"])
@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(SEPARATED, 2)))
def test_a_separated_pair_is_refused_even_beside_another_role(extra: str, first: str, second: str) -> None:
    with pytest.raises(InvalidUserError, match="separation of duties"):
        parse_roles([extra, first, second])


def test_all_three_separated_roles_are_refused() -> None:
    with pytest.raises(InvalidUserError) as caught:
        parse_roles(SEPARATED)
    assert all(role in str(caught.value) for role in SEPARATED)


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations(SEPARATED, 2)))
def test_check_role_mix_refuses_enum_pairs(first: str, second: str) -> None:
    with pytest.raises(InvalidUserError):
        check_role_mix([Role(first), Role(second)])


@pytest.mark.parametrize("role", SEPARATED)
def test_one_separated_role_alone_is_allowed(role: str) -> None:
    assert parse_roles([role]) == (Role(role),)
    check_role_mix([Role(role), Role.READER, Role.ML_ENGINEER])


def test_reader_and_admin_together_are_allowed() -> None:
    assert parse_roles(["reader", "admin"]) == (Role.READER, Role.ADMIN)
    assert parse_roles(["admin", "reader"]) == (Role.READER, Role.ADMIN)  # vocabulary order


def test_roles_are_deduplicated_trimmed_and_case_folded() -> None:
    assert parse_roles([" Reader ", "READER", "reader", "ML_Engineer"]) == (Role.READER, Role.ML_ENGINEER)


@pytest.mark.parametrize("unknown", ["root", "superuser", "", "admin,reader", "audit", "security admin"])
def test_unknown_role_is_refused_naming_it(unknown: str) -> None:
    with pytest.raises(InvalidUserError) as caught:
        parse_roles(["reader", unknown])
    assert repr(unknown) in str(caught.value)


def test_no_role_is_refused() -> None:
    with pytest.raises(InvalidUserError, match="at least one role"):
        parse_roles([])


def test_the_auditor_can_only_read_the_audit_trail() -> None:
    assert permissions_of_roles([Role.AUDITOR]) == {Permission.HEALTH, Permission.AUDIT_READ}


def test_the_admin_cannot_read_clinical_data_or_the_audit_trail() -> None:
    granted = permissions_of_roles([Role.ADMIN])
    for permission in (Permission.WORKLISTS_READ, Permission.REPORTS_WRITE, Permission.AUDIT_READ):
        assert permission not in granted
    assert Permission.USERS_ADMIN in granted
    assert Permission.CLIENTS_ADMIN not in granted  # the security administrator's


def test_the_reader_cannot_administer_or_audit() -> None:
    granted = permissions_of_roles([Role.READER])
    for permission in (
        Permission.USERS_ADMIN,
        Permission.AUDIT_READ,
        Permission.CLIENTS_ADMIN,
        Permission.MODELS_ADMIN,
    ):
        assert permission not in granted
    assert {Permission.WORKLISTS_READ, Permission.REPORTS_WRITE} <= granted


def test_the_security_admin_manages_clients_only() -> None:
    assert permissions_of_roles([Role.SECURITY_ADMIN]) == {Permission.HEALTH, Permission.CLIENTS_ADMIN}


def test_only_the_auditor_reads_the_audit_trail() -> None:
    assert [r for r in Role if Permission.AUDIT_READ in ROLE_PERMISSIONS[r]] == [Role.AUDITOR]


def test_every_role_has_permissions_and_health() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)
    assert all(Permission.HEALTH in granted for granted in ROLE_PERMISSIONS.values())


def test_machine_clients_have_no_administrative_permission() -> None:
    forbidden = {Permission.USERS_ADMIN, Permission.CLIENTS_ADMIN, Permission.AUDIT_READ, Permission.MODELS_ADMIN}
    assert not CLIENT_PERMISSIONS & forbidden
    assert Permission.REPORTS_WRITE not in CLIENT_PERMISSIONS


def test_no_roles_no_permissions() -> None:
    assert permissions_of_roles([]) == frozenset()


@given(st.sets(st.sampled_from(list(Role))))
def test_permissions_are_the_union_of_the_roles(roles: set[Role]) -> None:
    granted = permissions_of_roles(roles)
    expected: set[Permission] = set()
    for role in roles:
        expected |= ROLE_PERMISSIONS[role]
    assert granted == expected
    assert all(ROLE_PERMISSIONS[r] <= granted for r in roles)


@given(st.lists(st.sampled_from([r.value for r in Role]), min_size=1, max_size=8))
def test_parse_roles_accepts_exactly_the_lists_without_a_separated_pair(values: list[str]) -> None:
    separated = {v for v in values if v in SEPARATED}
    if len(separated) > 1:
        with pytest.raises(InvalidUserError):
            parse_roles(values)
    else:
        parsed = parse_roles(values)
        assert set(parsed) == {Role(v) for v in values}
        assert list(parsed) == [r for r in Role if r in parsed]
