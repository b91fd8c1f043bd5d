import json

from longvid.io import RowJournal, read_jsonl, write_jsonl


def test_journal_resumes_and_drops_torn_line(tmp_path):
    out = tmp_path / "table.jsonl"
    j = RowJournal(out, fingerprint="a")
    j.append({"id": "x", "v": 1})
    j.append({"id": "y", "v": 2})
    j.close()
    with open(j.path, "a") as f:
        f.write('{"id": "z", "v"')  # a kill in the middle of a write
    j2 = RowJournal(out, fingerprint="a")
    assert set(j2.rows) == {"x", "y"}
    j2.append({"id": "z", "v": 3})
    assert j2.publish(["z", "x", "y"]) == 3
    assert [r["id"] for r in read_jsonl(out)] == ["z", "x", "y"]
    assert not j2.path.exists()


def test_journal_from_other_settings_is_discarded(tmp_path):
    out = tmp_path / "table.jsonl"
    j = RowJournal(out, fingerprint="old")
    j.append({"id": "x"})
    j.close()
    assert RowJournal(out, fingerprint="new").rows == {}


def test_publish_refuses_missing_rows(tmp_path):
    j = RowJournal(tmp_path / "t.jsonl")
    j.append({"id": "a"})
    try:
        j.publish(["a", "b"])
    except RuntimeError as e:
        assert "1 rows were never produced" in str(e)
    else:
        raise AssertionError("publish must not drop rows silently")


def test_read_jsonl_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    write_jsonl(p, [{"a": 1}])
    with open(p, "a") as f:
        f.write("{oops\n")
    try:
        list(read_jsonl(p))
    except ValueError as e:
        assert f"{p}:2:" in str(e)
    else:
        raise AssertionError("malformed line must raise")
    assert json.loads(p.read_text().splitlines()[0]) == {"a": 1}
