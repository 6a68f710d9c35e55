"""A batch-inference window cut into row partitions and the scored partitions put back."""

from __future__ import annotations

import pandas as pd
import pytest

from mlre.errors import InferenceError
from mlre.inference import (
    KEY_COLUMNS,
    ROWS_DROPPED,
    ROWS_IN,
    ROWS_SCORED,
    concat_scored,
    row_partitions,
)

pytestmark = pytest.mark.unit


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": range(n), "score": [i / 10 for i in range(n)]})


@pytest.mark.parametrize(("rows", "partitions", "sizes"), [
    (10, 3, [3, 4, 3]),
    (10, 1, [10]),
    (2, 5, [1, 1]),  # never an empty partition
    (0, 4, [0]),  # an empty window is one empty partition (scored as "no traffic")
])  # fmt: skip
def test_partitions_are_contiguous_and_cover_every_row_once(
    rows: int, partitions: int, sizes: list[int]
) -> None:
    frame = _frame(rows)

    parts = row_partitions(frame, partitions)

    assert [len(p) for p in parts] == sizes
    pd.testing.assert_frame_equal(pd.concat(parts), frame)


def test_zero_partitions_is_refused() -> None:
    with pytest.raises(InferenceError, match="partitions must be at least 1"):
        row_partitions(_frame(3), 0)


def _scored(frame: pd.DataFrame, rows_in: int) -> pd.DataFrame:
    frame = frame.copy()
    frame.attrs.update({
        ROWS_IN: rows_in, ROWS_SCORED: len(frame), ROWS_DROPPED: rows_in - len(frame),
        KEY_COLUMNS: ["customer_id"],
    })  # fmt: skip
    return frame


def test_scored_partitions_concatenate_in_order_with_summed_counts() -> None:
    whole = _frame(6)
    parts = [_scored(whole.iloc[:3], 4), _scored(whole.iloc[3:3], 2), _scored(whole.iloc[3:], 3)]

    out = concat_scored(parts, "fraud_model_v1")

    pd.testing.assert_frame_equal(out, whole)
    assert out["score"].dtype == "float64"  # the empty partition does not turn it into objects
    assert out.attrs == {
        ROWS_IN: 9, ROWS_SCORED: 6, ROWS_DROPPED: 3, KEY_COLUMNS: ["customer_id"]
    }  # fmt: skip


def test_a_partition_without_features_is_fine_a_window_without_any_is_not() -> None:
    empty = _frame(0)

    assert len(concat_scored([_scored(empty, 5), _scored(_frame(2), 2)], "svc")) == 2
    with pytest.raises(InferenceError, match=r"service 'svc' for any of the 7 rows"):
        concat_scored([_scored(empty, 5), _scored(empty, 2)], "svc")
