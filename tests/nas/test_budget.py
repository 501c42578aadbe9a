"""Budgets: '0.1%' of the base model or an absolute count; bad input is a UserError that says
what to write instead."""
from __future__ import annotations

import pytest
from torch import nn

from nas.budget import parse_budget
from search_spaces.anatomy import base_param_count
from nas.errors import UserError

BASE = 22_000_000


@pytest.mark.parametrize("spec,expected", [
    ("0.1%", 22_000), ("1%", 220_000), ("100%", BASE), (" 0.5 % ", 110_000), (".5%", 110_000),
    ("200k", 200_000), ("200K", 200_000), ("1.5M", 1_500_000), ("1.5m", 1_500_000),
    ("50000", 50_000), ("2b", 2_000_000_000), ("0.5k", 500),
    (50_000, 50_000), (1, 1),
])
def test_good_budgets(spec, expected):
    got = parse_budget(spec, base_params=BASE)
    assert got == expected and isinstance(got, int)


def test_percentage_is_of_the_given_base():
    assert parse_budget("0.1%", base_params=1_000_000) == 1000
    assert parse_budget("10%", base_params=1234) == 123  # rounded down, never over budget


@pytest.mark.parametrize("spec,fragment", [
    ("abc", "not understood"), ("", "not understood"), ("-1%", "not understood"),
    ("1.5G", "not understood"), ("10 params", "not understood"), ("1e5", "not understood"),
    ("0%", "(0, 100]"), ("150%", "(0, 100]"),
    ("0.0001", "allows no trainable parameter"), ("0", "allows no trainable parameter"),
    ("0.0000001%", "allows no trainable parameter"), (0, "allows no trainable parameter"),
    (-5, "allows no trainable parameter"), (True, "not understood"),
])
def test_bad_budgets_raise_user_error(spec, fragment):
    with pytest.raises(UserError) as e:
        parse_budget(spec, base_params=BASE)
    msg = str(e.value)
    assert fragment in msg
    assert repr(spec) in msg  # the message quotes what the user wrote


def test_not_understood_message_shows_valid_forms():
    with pytest.raises(UserError) as e:
        parse_budget("1.5G", base_params=BASE)
    msg = str(e.value)
    for example in ("'0.1%'", "'200k'", "'1.5M'", "'50000'"):
        assert example in msg


def test_percentage_needs_base_params():
    with pytest.raises(UserError, match="base model's parameter count"):
        parse_budget("0.1%")
    assert parse_budget("200k") == 200_000  # absolute budgets do not need it


def test_base_param_count_excludes_head_and_counts_tied_once():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)  # 40
            self.body = nn.Linear(4, 4)  # 20
            self.tied = nn.Linear(4, 10, bias=False)
            self.tied.weight = self.emb.weight  # tied: counted once
            self.classifier = nn.Linear(4, 2)  # task head: not counted

    assert base_param_count(M()) == 60
