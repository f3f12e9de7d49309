"""Byte-level LM training and the perplexity evaluator (bmojo.eval.lm)."""

import json
import math

import pytest
import torch

import bmojo
from bmojo.eval import lm


def _folder(tmp_path):
    (tmp_path / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 20)
    with open(tmp_path / "b.jsonl", "w") as f:
        for i in range(10):
            f.write(json.dumps({"text": f"document {i}: naïve café {i * i}"}) + "\n")
    (tmp_path / "ignored.csv").write_text("x,y")
    return tmp_path


def _model(name):
    torch.manual_seed(0)
    return bmojo.BMojoForCausalLM(bmojo.preset_config(name, vocab_size=lm.VOCAB_SIZE))


def test_bytes_round_trip_and_folder(tmp_path):
    text = "naïve café ✓"
    assert lm.decode(lm.encode(text)) == text
    assert min(lm.encode(text)) >= lm.SPECIAL
    docs = lm.read_folder(_folder(tmp_path))
    assert len(docs) == 11 and docs[1].startswith("document 0")
    stream = lm.token_stream(docs)
    assert int((stream == lm.EOS).sum()) == 11
    with pytest.raises(ValueError, match="no .txt"):
        lm.read_folder(_empty(tmp_path))


def _empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


@pytest.mark.parametrize("name", ["transformer-tiny", "tiny"])
def test_perplexity_matches_direct_loss(tmp_path, name):
    stream = lm.token_stream(lm.read_folder(_folder(tmp_path)))
    model = _model(name).eval()
    got = lm.perplexity(model, stream, length=64, batch_size=3)
    blocks = stream[: len(stream) // 64 * 64].view(-1, 64)
    with torch.no_grad():
        losses = []
        for block in blocks:
            out = model(input_ids=block[None], labels=block[None], use_cache=False)
            # B'MOJO's loss adds the innovation loss; the LM part is the rest.
            losses.append(float(out.loss - (out.innovation_loss if out.innovation_loss is not None else 0)))
    direct = sum(losses) / len(losses)  # equal-length blocks: the mean of means is the token mean
    assert got["tokens"] == blocks.shape[0] * 63
    assert got["nll"] == pytest.approx(direct, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(direct), rel=1e-5)


def test_length_generalization_rows(tmp_path):
    stream = lm.token_stream(lm.read_folder(_folder(tmp_path)))
    rows = lm.length_generalization(_model("tiny"), stream, train_len=32, factors=(1, 2, 4, 64))
    assert [r["factor"] for r in rows] == [1, 2, 4]  # 64 * 32 tokens exceed the stream: stops there
    assert all(r["ppl"] > 1 for r in rows)


def test_train_lm_with_trainer(tmp_path):
    stream = lm.token_stream(lm.read_folder(_folder(tmp_path)))
    model = _model("tiny")
    before = lm.perplexity(model, stream, 32)["ppl"]
    lm.train_lm(model, stream, 32, str(tmp_path / "run"), max_steps=20, learning_rate=3e-3, use_cpu=True)
    assert lm.perplexity(model, stream, 32)["ppl"] < before


# --- the offline corpus (bmojo.eval.corpus) --------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html><head><title>Page title</title><style>body { color: red }</style>
<script>var tracking = "SCRIPT-TEXT";</script></head>
<body>
<nav class="menu" role="navigation"><a href="/">NAV-TEXT</a></nav>
<div class="related" role="navigation"><ul><li>RELATED-TEXT</li></ul></div>
<div class="document"><div class="body" role="main">
<section id="s"><h1>The   Title<a class="headerlink" href="#s">\u00b6</a></h1>
<p>First   paragraph,
  across lines &amp; with an entity.</p>
<p>Unclosed paragraph
<p>Next one with <code>inline code</code> and <em>emphasis</em>.</p>
<div class="toctree-wrapper"><ul><li>TOC-TEXT</li></ul></div>
<pre>def f(x):
    return x + 1
</pre>
</section></div></div>
<div class="sphinxsidebar" role="navigation"><h3>SIDEBAR-TEXT</h3></div>
<div class="footer">FOOTER-TEXT <script>document.write("X")</script></div>
</body></html>
"""


def test_html_to_text_keeps_prose_drops_chrome():
    from bmojo.eval.corpus import html_to_text

    text = html_to_text(PAGE)
    assert text == ("The Title\n\n"
                    "First paragraph, across lines & with an entity.\n\n"
                    "Unclosed paragraph\n\n"
                    "Next one with inline code and emphasis.\n\n"
                    "def f(x):\n    return x + 1")
    for junk in ("SCRIPT", "NAV", "RELATED", "TOC", "SIDEBAR", "FOOTER", "color", "Page title", "\u00b6"):
        assert junk not in text
    assert html_to_text(PAGE) == text


def _html_tree(root):
    (root / "library").mkdir(parents=True)
    (root / "_static").mkdir()
    long = "<p>" + "Python is a programming language that lets you work quickly. " * 5 + "</p>"
    for i in range(6):
        (root / "library" / f"mod{i}.html").write_text(f"<html><body><h1>Module {i}</h1>{long}</body></html>")
    (root / "index.html").write_text(f"<html><body><h1>Index</h1>{long}</body></html>")
    (root / "short.html").write_text("<html><body><p>too short</p></body></html>")
    (root / "genindex-A.html").write_text(f"<html><body>{long}</body></html>")
    (root / "_static" / "x.html").write_text(f"<html><body>{long}</body></html>")
    return root


def test_build_corpus_reads_back_and_is_deterministic(tmp_path):
    from bmojo.eval import corpus

    html = _html_tree(tmp_path / "html")
    assert corpus.html_pages(str(html)) == ["index.html"] + [f"library/mod{i}.html" for i in range(6)] + \
        ["short.html"]
    info = corpus.build_corpus(str(html), str(tmp_path / "a"))
    assert (info["documents"], info["skipped_short"], info["left_out"]) == (7, 1, 0)
    docs = lm.read_folder(tmp_path / "a")
    assert len(docs) == 7 and info["bytes"] == sum(len(d.encode()) for d in docs)
    assert all(d.startswith(("Module", "Index")) and "<" not in d for d in docs)
    corpus.build_corpus(str(html), str(tmp_path / "b"))

    def files(folder):
        return [(p.name, p.read_text()) for p in sorted(folder.iterdir())]

    assert files(tmp_path / "a") == files(tmp_path / "b")  # same names, same order, same text
    info = corpus.build_corpus(str(html), str(tmp_path / "j"), fmt="jsonl", max_bytes=1)
    assert (info["documents"], info["left_out"]) == (1, 7)
    assert len(lm.read_folder(tmp_path / "j")) == 1
    with pytest.raises(FileExistsError, match="empty folder"):
        corpus.build_corpus(str(html), str(tmp_path / "a"))


def test_corpus_of_several_sources_mixes_them_and_drops_kernel_translations(tmp_path):
    from bmojo.eval import corpus

    python = _html_tree(tmp_path / "python")
    linux = _html_tree(tmp_path / "linux")
    (linux / "translations" / "ko_KR").mkdir(parents=True)
    (linux / "translations" / "ko_KR" / "index.html").write_text((linux / "index.html").read_text())
    info = corpus.build_corpus({"python": str(python), "linux": str(linux)}, str(tmp_path / "out"))
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert info["documents"] == 14 and len(names) == 14  # 7 pages each; the translation left out
    assert not any("translations" in n for n in names)
    assert {n.split("_")[1] for n in names} == {"python", "linux"}
    assert names != sorted(names, key=lambda n: n.split("_")[1])  # the sources are interleaved
    with pytest.raises(ValueError, match="--sources must be"):
        corpus.parse_sources("python,gnu")
    assert corpus.parse_sources("all") == corpus.SOURCES


def test_corpus_cli_names_the_package_when_docs_are_missing(tmp_path, monkeypatch, capsys):
    from bmojo.eval import corpus

    monkeypatch.setattr(corpus, "DOC_GLOBS", (str(tmp_path / "nowhere" / "python3.*" / "html"),))
    assert corpus.find_doc_dir() is None
    assert corpus.main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "not installed" in err and "apt-get install python3-doc" in err and "python3.11-doc" in err
    assert corpus.main(["--out", str(tmp_path / "out"), "--html-dir", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    html = _html_tree(tmp_path / "html")
    assert corpus.main(["--out", str(tmp_path / "out"), "--html-dir", str(html)]) == 0
    assert "corpus: 7 documents" in capsys.readouterr().out


def test_real_python_docs_corpus(tmp_path):
    from bmojo.eval import corpus

    doc_dir = corpus.find_doc_dir()
    if doc_dir is None:
        pytest.skip("the Python HTML documentation is not installed here (apt-get install python3-doc)")
    # The tutorial alone (about 16 pages) keeps this fast; the whole tree is about 9 MiB of text.
    info = corpus.build_corpus(f"{doc_dir}/tutorial", str(tmp_path / "c"))
    docs = lm.read_folder(tmp_path / "c")
    assert info["documents"] >= 10 and info["bytes"] > 100_000 and len(docs) == info["documents"]
    text = "\n".join(docs)
    assert "Python" in text and " the " in text
    for chrome in ("Previous topic", "Show Source", "Quick search", "DOCUMENTATION_OPTIONS", "Copyright"):
        assert chrome not in text  # sidebars, search box, scripts, footer


# --- tokenizers, data sources, the CLI --------------------------------------------------------------

def _prose(n=40):
    words = "the model reads a stream of tokens and keeps a fading memory plus an eidetic store".split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(60)) + f" doc{i}." for i in range(n)]


def test_split_documents_is_contiguous():
    docs = ["a" * 50, "b" * 30, "c" * 20]
    train, test = lm.split_documents(docs, 0.1)  # 103 characters with the EOS: the cut is at 92
    assert "".join(train) + "".join(test) == "".join(docs)
    assert train == ["a" * 50, "b" * 30, "c" * 10] and test == ["c" * 10]
    assert lm.split_documents(docs, 0.2) == (docs[:2], docs[2:])  # a cut at a document boundary
    assert lm.split_documents(["abc"], 0.0) == (["abc"], [])


def test_bpe_tokenizer_round_trips(tmp_path):
    tok = lm.BPETokenizer.train(_prose(), vocab_size=300)
    assert tok.vocab_size == 300
    assert [tok.tokenizer.token_to_id(t) for t in lm.BPE_SPECIALS] == [0, 1, 2]
    for text in ["the model reads", "naïve café ✓ 日本語\n\ttabs  and  spaces ", ""]:
        assert tok.decode(tok.encode(text)) == text
        assert min(tok.encode(text), default=lm.SPECIAL) >= lm.SPECIAL
    assert len(tok.encode("the model reads a stream")) < len("the model reads a stream".encode())
    tok.save(str(tmp_path / "tokenizer.json"))
    again = lm.BPETokenizer.load(str(tmp_path / "tokenizer.json"))
    assert again.encode("keeps a fading memory") == tok.encode("keeps a fading memory")
    stream = lm.token_stream(["ab", "cd"], tok)
    assert int((stream == lm.EOS).sum()) == 2 and tok.decode(stream.tolist()) == "abcd"
    with pytest.raises(ValueError, match="vocab_size >= 259"):
        lm.BPETokenizer.train(_prose(), vocab_size=100)


def test_main_with_bpe_trains_on_the_training_split_only(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    docs = _prose(60) + ["qqqq zzzz " * 150]  # the held-out tail (< 10%): words the training split lacks
    with open(data / "d.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    out = tmp_path / "out"
    assert lm.main([str(data), "--tokenizer", "bpe", "--bpe-vocab-size", "320", "--presets", "tiny",
                    "--steps", "3", "--seq-len", "32", "--factors", "1,2", "--max-eval-tokens", "256",
                    "--device", "cpu", "--out", str(out)]) == 0
    saved = json.loads((out / "tokenizer.json").read_text())
    vocab = saved["model"]["vocab"]
    assert len(vocab) == 320 and not any("qq" in t or "zz" in t for t in vocab)
    result = json.loads((out / "results.json").read_text())
    assert result["data"]["tokenizer"] == "bpe" and result["data"]["vocab_size"] == 320
    rows = result["results"]["tiny"]
    assert [r["length"] for r in rows] == [32, 64] and all(math.isfinite(r["ppl"]) for r in rows)


def test_model_overrides_and_device():
    ns = lm.build_parser().parse_args(["data", "--hidden-size", "64", "--layers", "3", "--heads", "4"])
    over = lm.model_overrides(ns)
    assert over == dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4)
    cfg = bmojo.preset_config("transformer-tiny", vocab_size=300, **over)
    assert (cfg.hidden_size, cfg.num_hidden_layers, len(cfg.mixer_types), cfg.vocab_size) == (64, 3, 3, 300)
    assert lm.resolve_device("cpu").type == "cpu"
    assert lm.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            lm.resolve_device("cuda")


def test_hf_dataset_documents_and_offline_message():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["first doc", "", "  ", "second doc"], "id": [1, 2, 3, 4]})
    assert lm.documents_from_dataset(ds) == ["first doc", "second doc"]
    with pytest.raises(ValueError, match="no column 'body'.*--text-field"):
        lm.documents_from_dataset(ds, "body")
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return ds

    assert lm.load_hf_documents("wikitext:wikitext-2-raw-v1", "test", load_dataset=fake_load) == \
        ["first doc", "second doc"]
    assert lm.load_hf_documents("some/name", load_dataset=fake_load)
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test"), ("some/name", None, "train")]

    def offline(name, config, split):
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub (OfflineModeIsEnabled)")

    with pytest.raises(RuntimeError, match="(?s)could not load.*'wikitext'.*OfflineModeIsEnabled.*"
                                           "bmojo.eval.corpus"):
        lm.load_hf_documents("wikitext:wikitext-2-raw-v1", load_dataset=offline)
