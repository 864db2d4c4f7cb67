"""Shared fixtures: a small synthetic corpus and tiny models with random weights.

The models are real transformers architectures (BERT bi-encoder, BERT cross-encoder, T5,
a Llama-style causal LM) with 2 layers and hidden size 32 and a WordPiece tokenizer trained
here, so every stage runs its real loading, training and export code in seconds and nothing
is downloaded. Each is built once per session into a temp folder; tests get the path.

``RGPL_TEST_DEVICE`` (default ``cpu``): the torch device of the tests where a GPU run means something
(training, encoding, the pipeline under torchrun); ``RGPL_TEST_DEVICE=cuda`` runs them on the GPU
(bench/gpu_check.sh). The models are still built on the CPU.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from rgpl_plugin.base import Document

TOPICS = {
    "vitamin": "vitamin d calcium bone fracture elderly supplement dose deficiency",
    "cancer": "tumor cancer cell growth chemotherapy metastasis oncology survival",
    "heart": "cardiac heart artery blood pressure hypertension stroke cholesterol",
    "brain": "neuron brain memory cognitive alzheimer dementia synapse cortex",
    "virus": "virus infection immune vaccine antibody influenza replication host",
    "gene": "gene expression mutation dna transcription protein chromosome genome",
}
TEST_DEVICE = os.environ.get("RGPL_TEST_DEVICE", "cpu")
"""Where the device-aware tests run their models (see the module docstring)."""
FILLER = "study results patients analysis effect trial data reported increased reduced".split()


def make_documents(n: int = 60, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    names = sorted(TOPICS)
    for i in range(n):
        topic = names[i % len(names)]
        words = TOPICS[topic].split()
        body = " ".join(rng.choice(words + FILLER) for _ in range(rng.randint(12, 30)))
        docs.append(Document(id=f"d{i}", title=f"{topic} study {i}", text=body))
    return docs


@pytest.fixture(scope="session")
def documents() -> list[Document]:
    return make_documents()


@pytest.fixture(scope="session")
def beir_dir(tmp_path_factory, documents) -> Path:
    """A BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv (one query per topic)."""
    root = tmp_path_factory.mktemp("beir")
    with open(root / "corpus.jsonl", "w") as fh:
        for d in documents:
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    (root / "qrels").mkdir()
    with open(root / "queries.jsonl", "w") as q, open(root / "qrels" / "test.tsv", "w") as r:
        r.write("query-id\tcorpus-id\tscore\n")
        for i, (topic, words) in enumerate(sorted(TOPICS.items())):
            q.write(json.dumps({"_id": f"q{i}", "text": " ".join(words.split()[:3])}) + "\n")
            for d in documents:
                if d.title.startswith(topic):
                    r.write(f"q{i}\t{d.id}\t1\n")
    return root


def _train_tokenizer(out: Path, documents, *, kind: str):
    """A WordPiece (BERT-style) or causal/seq2seq tokenizer trained on the corpus, saved to ``out``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    text = [d.full_text() for d in documents] + [" ".join(FILLER)]
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        tok.decoder = decoders.WordPiece()
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=512,
        )
    else:
        specials = ["<pad>", "</s>", "<unk>", "<s>"]
        tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        extra = ["passage", "question", ":", "?"]
        tok.train_from_iterator(text + [" ".join(extra)], trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
        tok.decoder = decoders.WordPiece()
        if kind == "seq2seq":
            eos = tok.token_to_id("</s>")
            tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="<unk>",
            pad_token="<pad>",
            eos_token="</s>",
            bos_token="<s>",
            model_max_length=512,
        )
    fast.save_pretrained(out)
    return fast


def build_tiny_student(out: Path, documents, *, pooling: str = "mean", normalize: bool = False) -> Path:
    """A 2-layer BERT sentence-transformers model (random weights) saved at ``out``."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    hf_dir = out.parent / (out.name + "-hf")
    tok = _train_tokenizer(hf_dir, documents, kind="bert")
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(hf_dir)
    word = models.Transformer(str(hf_dir), max_seq_length=64)
    modules = [word, models.Pooling(word.get_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory, documents) -> Path:
    return build_tiny_student(tmp_path_factory.mktemp("models") / "student", documents)


def build_tiny_cross_encoder(out: Path, documents) -> Path:
    """A 2-layer BERT cross-encoder (sequence classification, 1 label), random weights, saved at ``out``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(1)
    tok = _train_tokenizer(out, documents, kind="bert")
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        num_labels=1,
    )
    BertForSequenceClassification(cfg).save_pretrained(out)
    return out


def build_tiny_t5(out: Path, documents) -> Path:
    """A 2-layer T5 (doc2query architecture), random weights, saved at ``out``."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(2)
    tok = _train_tokenizer(out, documents, kind="seq2seq")
    cfg = T5Config(
        vocab_size=len(tok),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    T5ForConditionalGeneration(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory, documents) -> Path:
    """A 2-layer BERT cross-encoder (sequence classification, 1 label), random weights."""
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("models") / "cross-encoder", documents)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory, documents) -> Path:
    """A 2-layer T5 (doc2query architecture), random weights."""
    return build_tiny_t5(tmp_path_factory.mktemp("models") / "t5", documents)


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory, documents) -> Path:
    """A 2-layer Llama-style causal LM, random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("models") / "causal"
    tok = _train_tokenizer(out, documents, kind="causal")
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out
