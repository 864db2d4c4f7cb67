import pytest

from rgpl_adapt.generation import query_key
from rgpl_adapt.generators import prompt_example_keys, validate_prompt
from rgpl_adapt.query_style import example_queries_prompt, load_example_queries


def test_load_example_queries_lines_jsonl_and_dedup(tmp_path):
    f = tmp_path / "q.txt"
    f.write_text('Aspirin  lowers risk.\n\n{"text": "Vitamin D helps bones"}\n{"query": "aspirin lowers risk."}\n')
    assert load_example_queries(f) == ["Aspirin lowers risk.", "Vitamin D helps bones"]


def test_load_example_queries_errors(tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="no example query"):
        load_example_queries(empty)
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(ValueError, match="'text' or 'query'"):
        load_example_queries(bad)


def test_example_queries_prompt_is_valid_and_examples_recognised():
    claims = [f"claim number {i} holds" for i in range(10)]
    prompt = example_queries_prompt(claims, max_examples=8)
    assert validate_prompt(prompt) == prompt
    assert prompt.endswith("Passage: {passage}\nQuestion:")
    keys = prompt_example_keys(prompt)
    assert keys == {query_key(c) for c in claims[:8]}
    assert "claim number 9 holds" not in prompt
    with pytest.raises(ValueError):
        example_queries_prompt(["  "])


def test_cli_example_queries_go_into_the_config(tmp_path):
    from rgpl_adapt.cli import _build_config

    f = tmp_path / "claims.txt"
    f.write_text("Aspirin lowers stroke risk.\nVitamin D helps bones.\n")
    cfg = _build_config({"example_queries": str(f), "scale": "cpu"})
    assert cfg.generation.example_queries == ("Aspirin lowers stroke risk.", "Vitamin D helps bones.")
    assert cfg.generation.prompt is None  # the causal generator builds its prompt from them
    assert _build_config({"scale": "cpu"}).generation.example_queries == ()
