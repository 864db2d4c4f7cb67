from rgpl_adapt.manifest import Manifest, invalidate, is_complete, read_manifest, write_manifest


def test_complete_only_after_write_and_with_same_inputs(tmp_path):
    m = Manifest.for_inputs("queries", model="t5", n=3)
    assert not is_complete(tmp_path, m)
    write_manifest(tmp_path, m, {"queries": 10})
    assert is_complete(tmp_path, Manifest.for_inputs("queries", model="t5", n=3))
    assert not is_complete(tmp_path, Manifest.for_inputs("queries", model="t5", n=4))
    assert read_manifest(tmp_path).outputs == {"queries": 10}


def test_invalidate(tmp_path):
    m = Manifest.for_inputs("x", a=1)
    write_manifest(tmp_path, m, {})
    invalidate(tmp_path)
    assert read_manifest(tmp_path) is None and not is_complete(tmp_path, m)
