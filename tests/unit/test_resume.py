"""The pure parts of resumable steps (flows/resume.py): keys and scopes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.materialize import MaterializeParams
from flows.resume import result_storage, resume_tag, scope_of, step_key
from mlre.features.materialize import Window

pytestmark = pytest.mark.unit

WINDOW = Window(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))


def test_a_step_key_is_a_path_under_its_scope_and_task() -> None:
    key = step_key("run-1", "materialize-partition", {"window": WINDOW, "partition": 3})
    scope, name = key.split("/")
    assert scope == "run-1"
    assert name.startswith("materialize-partition-")


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"partition": 1}, {"partition": 2}),
        ({"window": WINDOW}, {"window": Window(WINDOW.start, datetime(2026, 3, 3, tzinfo=UTC))}),
        ({"params": MaterializeParams(partitions=4)}, {"params": MaterializeParams(partitions=8)}),
    ],
)
def test_different_inputs_give_different_keys(left: dict, right: dict) -> None:
    assert step_key("run", "task", left) != step_key("run", "task", right)


def test_keys_do_not_depend_on_input_order_or_the_process() -> None:
    params = MaterializeParams(feature_views=["a"], partitions=4)
    one = step_key("run", "t", {"params": params, "window": WINDOW})
    two = step_key("run", "t", {"window": WINDOW, "params": params.model_copy()})
    assert one == two == step_key("run", "t", {"params": params, "window": WINDOW})


def test_the_same_step_in_another_scope_has_another_key() -> None:
    assert step_key("run-1", "t", {"partition": 1}) != step_key("run-2", "t", {"partition": 1})


def test_an_input_that_cannot_be_keyed_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="cannot key a resumable step by a object"):
        step_key("run", "t", {"lock": object()})


def test_a_run_resumes_the_scope_its_tag_names_else_its_own() -> None:
    assert scope_of("new-run", ["weekly", resume_tag("crashed-run")]) == "crashed-run"
    assert scope_of("new-run", ["weekly", "mlre-rerun"]) == "new-run"


def test_local_results_are_a_folder() -> None:
    assert result_storage("/tmp/results") == Path("/tmp/results")
