"""The code digest recorded with every run and evaluation, and the bench's line that reads it back."""

import json
import re

from darkminer.commands.bench import _code_line, _finished_line
from darkminer.provenance import code_digest, utc_now
from darkminer.training.checkpoint import CODE_NAME, RunDirectory


def test_the_code_digest_is_twelve_hex_digits_and_stable():
    assert re.fullmatch(r"[0-9a-f]{12}", code_digest())
    code_digest.cache_clear()
    assert code_digest() == code_digest()


def test_a_run_directory_lists_the_code_of_every_process_that_opened_it(tmp_path):
    RunDirectory(tmp_path / "new", {"steps": 1}).close()
    assert json.loads((tmp_path / "new" / CODE_NAME).read_text()) == [code_digest()]
    run = RunDirectory(tmp_path / "new", {"steps": 1})  # a resume by the same code adds nothing
    assert run.code == [code_digest()]
    run.close()
    # a run started before the record existed, or by other code, keeps what it says
    RunDirectory(tmp_path / "old", {"steps": 1}).close()
    (tmp_path / "old" / CODE_NAME).unlink()
    run = RunDirectory(tmp_path / "old", {"steps": 1})
    assert run.code == ["unrecorded", code_digest()]
    run.close()
    (tmp_path / "old" / CODE_NAME).write_text(json.dumps(["0123456789ab"]))
    run = RunDirectory(tmp_path / "old", {"steps": 1})
    assert run.code == ["0123456789ab", code_digest()]
    run.close()


def test_the_bench_says_which_code_computed_its_cells():
    now = code_digest()
    cell = {"code": {"erasure": [now], "evaluation": [now]}}
    original = {"code": {"evaluation": [now]}}
    assert _code_line([cell, original]) == f"Code: every cell was computed by this code (darkminer digest `{now}`)."
    resumed = {"code": {"erasure": ["unrecorded", now], "evaluation": [now]}}
    assert _code_line([cell, resumed, {}]) == (
        f"Code: cells computed by darkminer digests `{now}` (1), unrecorded + `{now}` (1), unrecorded (1); this "
        f"invocation ran `{now}`."
    )


def test_the_bench_says_when_its_cells_were_computed():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now())
    early, late = {"finished": "2026-12-07T09:20:00Z"}, {"finished": "2026-12-07T12:56:03Z"}
    assert _finished_line([late, early]) == "Finished: 2026-12-07T09:20:00Z to 2026-12-07T12:56:03Z."
    assert _finished_line([early, early]) == "Finished: 2026-12-07T09:20:00Z."
    assert _finished_line([early, {}]) == "Finished: 2026-12-07T09:20:00Z (cells that record no time: 1)."
    assert _finished_line([{}]) == "Finished: no cell records when it was computed."
