"""The shared tiny models load through the same libraries the pipeline uses."""

import numpy as np


def test_tiny_student_encodes(tiny_student):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_student), device="cpu")
    emb = model.encode(["vitamin d bone", "tumor cell growth"])
    assert emb.shape == (2, 32)
    assert np.isfinite(emb).all()


def test_tiny_generators_generate(tiny_t5, tiny_causal_lm):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    for path, cls in ((tiny_t5, AutoModelForSeq2SeqLM), (tiny_causal_lm, AutoModelForCausalLM)):
        tok = AutoTokenizer.from_pretrained(path)
        model = cls.from_pretrained(path)
        batch = tok(["vitamin d bone fracture"], return_tensors="pt")
        out = model.generate(**batch, max_new_tokens=5, do_sample=True, top_k=25)
        assert out.shape[0] == 1 and out.shape[1] > 1


def test_tiny_cross_encoder_scores(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    scores = ce.predict([("vitamin", "vitamin d bone"), ("vitamin", "tumor cell")])
    assert scores.shape == (2,)
