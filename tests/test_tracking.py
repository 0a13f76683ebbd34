"""A command's parent run in a real MLflow SQLite store: how it ends, whatever ends it."""

import pytest

from search.tracking import Tracker


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}", "lifecycle")


def _ended(tracker, run_id):
    run = tracker.client.get_run(run_id)
    return run.info.status, run.data.tags.get("end_reason")


def test_a_block_that_ends_finishes_the_run(tracker):
    run_id = tracker.start("finalize", "finalize · ok", key="ok")
    with tracker.ending(run_id) as same:
        assert same == run_id and tracker.status(run_id) == "RUNNING"
    assert _ended(tracker, run_id) == ("FINISHED", "finished")


def test_an_error_fails_the_run_with_its_first_line_and_is_raised_as_it_was(tracker):
    run_id = tracker.start("finalize", "finalize · bad", key="bad")
    with pytest.raises(ValueError, match="fold 3 has no images") as raised:
        with tracker.ending(run_id):
            raise ValueError("fold 3 has no images\nand a second line")
    assert raised.type is ValueError
    assert _ended(tracker, run_id) == ("FAILED", "ValueError: fold 3 has no images")


def test_ctrl_c_kills_the_run_and_a_rerun_continues_and_finishes_it(tracker):
    run_id = tracker.start("finalize", "finalize · interrupted", key="interrupted")
    with pytest.raises(KeyboardInterrupt):
        with tracker.ending(run_id):
            raise KeyboardInterrupt
    assert _ended(tracker, run_id) == ("KILLED", "interrupted")
    again = tracker.start("finalize", "finalize · interrupted", key="interrupted")
    assert again == run_id and tracker.status(run_id) == "RUNNING"
    with tracker.ending(again):
        pass
    assert _ended(tracker, run_id) == ("FINISHED", "finished")


def test_a_store_that_fails_too_does_not_hide_the_blocks_error(tracker, monkeypatch):
    run_id = tracker.start("finalize", "finalize · store down", key="store-down")

    def down(*a, **kw):
        raise ConnectionError("tracking store unreachable")

    monkeypatch.setattr(tracker, "finish", down)
    monkeypatch.setattr(tracker, "set_tags", down)
    with pytest.raises(RuntimeError, match="the real problem"):
        with tracker.ending(run_id):
            raise RuntimeError("the real problem")
