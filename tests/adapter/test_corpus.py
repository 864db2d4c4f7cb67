import json

import pytest

from rgpl_adapt.config import CorpusConfig
from rgpl_adapt.corpus import CorpusError, corpus_file, fingerprint, read_corpus


def write_lines(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    return path


def test_reads_beir_folder(beir_dir, documents):
    docs, stats = read_corpus(CorpusConfig(path=str(beir_dir)))
    assert [d.id for d in docs] == [d.id for d in documents]
    assert docs[0].title == documents[0].title and docs[0].text == documents[0].text
    assert stats.kept == len(documents) and stats.skipped == {}


def test_bad_records_are_counted_and_skipped(tmp_path):
    path = write_lines(
        tmp_path / "c.jsonl",
        [
            json.dumps({"_id": "1", "text": "good one"}),
            b"\xff\xfe not utf8",
            "{not json",
            json.dumps([1, 2]),
            json.dumps({"text": "no id"}),
            json.dumps({"_id": "2"}),
            json.dumps({"_id": "3", "text": "   "}),
            json.dumps({"_id": "4", "text": 42}),
            json.dumps({"_id": "5", "text": "x" * 200}),
            json.dumps({"_id": "1", "text": "duplicate"}),
            "",
            json.dumps({"_id": 6, "text": "int id ok", "title": None}),
            json.dumps({"_id": "7", "title": "Title only, no text"}),
            json.dumps({"_id": "8", "text": "  ", "title": "Title with empty text"}),
        ],
    )
    docs, stats = read_corpus(CorpusConfig(path=str(path), max_chars=100))
    assert [d.id for d in docs] == ["1", "6", "7", "8"]  # title-only documents are kept, as BEIR does
    assert docs[2].text == "" and docs[2].full_text().strip() == "Title only, no text"
    assert stats.read == 13
    assert stats.skipped == {
        "undecodable": 2,
        "not_an_object": 1,
        "missing_id": 1,
        "missing_text": 1,
        "empty_text": 1,
        "non_string_text": 1,
        "huge": 1,
        "duplicate_id": 1,
    }
    assert "9 skipped" in stats.summary()


def test_custom_text_field_and_limit(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"id": str(i), "body": f"doc {i}"}) for i in range(5)])
    docs, _ = read_corpus(CorpusConfig(path=str(path), text_field="body", id_field="id", limit=3))
    assert [d.text for d in docs] == ["doc 0", "doc 1", "doc 2"]


def test_no_usable_document_says_which_field(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"_id": "1", "body": "x"})])
    with pytest.raises(CorpusError, match="--text-field"):
        read_corpus(CorpusConfig(path=str(path)))


def test_missing_paths(tmp_path):
    with pytest.raises(CorpusError, match="without corpus.jsonl"):
        corpus_file(tmp_path)
    with pytest.raises(CorpusError, match="not found"):
        corpus_file(tmp_path / "nope.jsonl")


def test_fingerprint_changes_with_content_and_fields(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"_id": "1", "text": "a"})])
    a = fingerprint(path, CorpusConfig(path=str(path)))
    assert a == fingerprint(path, CorpusConfig(path=str(path)))
    assert a != fingerprint(path, CorpusConfig(path=str(path), text_field="body"))
    write_lines(path, [json.dumps({"_id": "1", "text": "a changed document"})])
    assert a != fingerprint(path, CorpusConfig(path=str(path)))
