"""Public tests of models.py, part 'rnn' — the same checks as `python -m captioning check rnn`
(see public_checks.py for what they check and the relative-error measure)."""

import pytest
from public_checks import checks_of


@pytest.mark.parametrize("check", [pytest.param(fn, id=name) for name, fn in checks_of("rnn")])
def test_public_rnn(check):
    check()
