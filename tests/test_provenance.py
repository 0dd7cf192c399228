"""The code digest recorded beside every erasure and evaluation, and the bench's line that reads it back."""

import json
import re

from darkminer.commands.bench import _code_line
from darkminer.provenance import code_digest, erasure_code, record_code


def test_the_code_digest_is_twelve_hex_digits_and_stable():
    assert re.fullmatch(r"[0-9a-f]{12}", code_digest())
    code_digest.cache_clear()
    assert code_digest() == code_digest()


def test_an_erasure_records_its_code_and_an_evaluation_reads_it_back(tmp_path):
    assert erasure_code(None) == [] and erasure_code(tmp_path) == []
    record_code(tmp_path)  # no erasure_config.json: nothing to add to
    assert not (tmp_path / "erasure_config.json").exists()
    (tmp_path / "erasure_config.json").write_text(json.dumps({"method": "esd", "config": {"steps": 3}}))
    assert erasure_code(tmp_path) == []  # an erasure from before the record
    record_code(tmp_path)
    record = json.loads((tmp_path / "erasure_config.json").read_text())
    assert record == {"method": "esd", "config": {"steps": 3}, "code": code_digest()}
    assert erasure_code(str(tmp_path)) == [code_digest()]


def test_the_bench_says_which_code_computed_its_cells():
    now = code_digest()
    assert _code_line([{"code": [now]}, {"code": [now]}]) == (
        f"Code: every cell was computed by this code (darkminer digest `{now}`)."
    )
    mixed = _code_line([{"code": [now]}, {"code": ["0123456789ab", now]}, {}])
    assert mixed == (
        f"Code: cells computed by darkminer digests `{now}` (1), `0123456789ab` + `{now}` (1), unrecorded (1); this "
        f"invocation ran `{now}`."
    )
