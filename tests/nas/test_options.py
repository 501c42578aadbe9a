"""nas/options.py: the comma-separated list types the CLIs and benchmarks parse flags with."""
from __future__ import annotations

import pytest

from nas.options import float_list, int_list


def test_number_lists_parse_and_skip_empty_items():
    assert float_list("5e-4, 1e-3,") == (5e-4, 1e-3)
    assert int_list("0,1, 2") == (0, 1, 2)


@pytest.mark.parametrize("parse, text, kind", [(float_list, "1e-3,fast", "floats"), (int_list, "0,1.5", "ints")])
def test_a_bad_item_names_the_text_and_an_example(parse, text, kind):
    with pytest.raises(ValueError, match=rf"'{text}' is not a comma-separated list of {kind}, e\.g\. "):
        parse(text)
