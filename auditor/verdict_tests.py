"""The verdict tests this version knows: one table, keyed by the method a report records.

A new test is one row here (an object of the `auditor.verdict_test.VerdictTest` protocol);
the report, `verify`, the views, figures and studies find it through `verdict_test`.
`DEFAULT` is the test a new audit's verdict is made with; an older method stays in the table
for as long as reports it made must verify.
"""

from __future__ import annotations

from auditor.binomial_rule import BINOMIAL_RULE
from auditor.calibration import MODEL_TEST
from auditor.key_null_test import KEY_NULL_TEST
from auditor.verdict_test import ModelTest, VerdictTest
from auditor.window_test import WINDOW_TEST

VERDICT_TESTS: dict[str, VerdictTest] = {
    test.method: test for test in (KEY_NULL_TEST, WINDOW_TEST, MODEL_TEST, BINOMIAL_RULE)
}
DEFAULT: VerdictTest = KEY_NULL_TEST  # v3, confirmed on the holdout world (docs/reproduction.md)


def verdict_test(method: str) -> VerdictTest:
    """The registered test of that method; KeyError naming the known ones otherwise."""
    try:
        return VERDICT_TESTS[method]
    except KeyError:
        known = ", ".join(sorted(VERDICT_TESTS))
        raise KeyError(f"no verdict test {method!r} in this version (known: {known})") from None


def shown(record: ModelTest) -> tuple[tuple[str, ...], str]:
    """The record's statistics in the order its test shows them, and how its p-value combines
    theirs; a record of a method this version does not know (a hostile or newer report, which
    `verify` refuses) is still shown, in its own order."""
    test = VERDICT_TESTS.get(record.method)
    complete = [n for n in record.statistics if n in record.p_values and record.reference_statistics.get(n)]
    if test is None or set(test.statistics) != set(complete):
        return tuple(complete), f"combined as {record.method!r} states"
    return tuple(test.statistics), test.combination
