"""The default validation split (classification: stratified by label), drawn over small
data sets: it is reproducible, and it never leaves a class out of the validation set when
the class can spare a row for it."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from app.jobs.spec import ValidationSplit
from tests.support.strategies import from_annotation
from worker.training.data import split_rows

EXAMPLES = settings(max_examples=400, derandomize=True, deadline=None)


@st.composite
def labelled_rows(draw: st.DrawFn) -> list[dict[str, str]]:
    """2 to 300 rows over 1 to 12 classes of very different sizes (a rare class included)."""
    sizes = draw(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=12))
    rows = [
        {"text": f"row {label}-{i}", "label": f"class-{label}"}
        for label, size in enumerate(sizes)
        for i in range(size)
    ]
    order = draw(st.permutations(range(len(rows))))
    shuffled = [rows[i] for i in order]
    if len(shuffled) < 2:
        shuffled.append({"text": "row extra", "label": "class-0"})
    return shuffled


@EXAMPLES
@given(
    rows=labelled_rows(),
    fraction=from_annotation(ValidationSplit),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_the_stratified_split_keeps_every_class_on_both_sides(
    rows: list[dict[str, str]], fraction: float, seed: int
) -> None:
    train, validation = split_rows(rows, fraction, seed, stratify_by="label")

    # reproducible: the same seed gives the same split
    assert split_rows(rows, fraction, seed, stratify_by="label") == (train, validation)
    # a partition of the rows (their texts are unique)
    assert sorted(r["text"] for r in train + validation) == sorted(r["text"] for r in rows)
    counts = Counter(row["label"] for row in rows)
    held_out = Counter(row["label"] for row in validation)
    kept = Counter(row["label"] for row in train)
    assert validation and train
    asked = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
    if all(n == 1 for n in counts.values()):
        # no class of two rows: nothing to stratify, a plain seeded split of the size asked
        assert len(validation) == asked
    else:
        # every class trains, and every class that can spare a row is validated on
        assert set(kept) == set(counts)
        assert set(held_out) == {label for label, n in counts.items() if n >= 2}
        # the size asked for (each class keeping one training row permitting), exceeded
        # only by the rows of classes whose proportional share rounds down to none
        room = sum(n - 1 for n in counts.values())
        rounded_away = sum(
            1 for n in counts.values() if n >= 2 and math.floor(asked * n / len(rows)) == 0
        )
        assert min(asked, room) <= len(validation) <= asked + rounded_away
        # and each class gives at least its share, rounded down
        for label, n in counts.items():
            assert held_out[label] >= min(math.floor(asked * n / len(rows)), n - 1)


def test_a_rare_class_is_not_rounded_out_of_the_validation_set() -> None:
    # 10 validation rows: shares 6, 3.5 and 0.5; largest remainders used to give the spare
    # row to "b" (by name), leaving "c" out of the validation set entirely
    rows = [
        {"text": f"{label}{i}", "label": label}
        for label, n in (("a", 60), ("b", 35), ("c", 5))
        for i in range(n)
    ]
    train, validation = split_rows(rows, 0.1, seed=42, stratify_by="label")
    assert Counter(row["label"] for row in validation) == {"a": 6, "b": 3, "c": 1}
    assert len(train) == 90
