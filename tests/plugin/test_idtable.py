"""The memory-mapped id table: written by chunks, read by ord, refused when incomplete."""

from __future__ import annotations

import pytest
from rgpl_plugin.idtable import IDS_BLOB, IDS_OFFSETS, IdTable, write_id_table

IDS = ["doc-0", "ünïcode-ß", "", "x" * 300, "日本語", "last"]


def test_ids_come_back_by_ord_in_the_order_asked(tmp_path):
    write_id_table(tmp_path, [IDS[:2], IDS[2:5], IDS[5:]], len(IDS))
    table = IdTable.open(tmp_path, len(IDS))
    assert table is not None and len(table) == len(IDS)
    assert table(range(len(IDS))) == IDS
    assert table([5, 0, 5, 3]) == [IDS[5], IDS[0], IDS[5], IDS[3]]
    assert table([]) == []


def test_an_ord_outside_the_table_is_an_error(tmp_path):
    write_id_table(tmp_path, [IDS], len(IDS))
    table = IdTable(tmp_path)
    with pytest.raises(IndexError, match="ord 6 is outside"):
        table([0, 6])
    with pytest.raises(IndexError, match="ord -1"):
        table([-1])


def test_an_empty_table(tmp_path):
    write_id_table(tmp_path, [], 0)
    table = IdTable.open(tmp_path, 0)
    assert table is not None and len(table) == 0 and table([]) == []


def test_no_table_a_short_one_or_a_wrong_count_is_refused(tmp_path):
    assert IdTable.open(tmp_path, 3) is None  # none written
    write_id_table(tmp_path, [IDS], len(IDS))
    assert IdTable.open(tmp_path, len(IDS) + 1) is None  # another index's count
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="ids given for an id table of 7"):
        write_id_table(tmp_path / "x", [IDS], 7)
    assert not list((tmp_path / "x").iterdir())  # nothing left behind, not even the temporary files
    with pytest.raises(ValueError, match="more than 2 ids"):
        write_id_table(tmp_path / "x", [IDS], 2)


def test_a_truncated_blob_is_detected(tmp_path):
    write_id_table(tmp_path, [IDS], len(IDS))
    blob = tmp_path / IDS_BLOB
    blob.write_bytes(blob.read_bytes()[:-2])
    with pytest.raises(ValueError, match="its offsets say"):
        IdTable(tmp_path)
