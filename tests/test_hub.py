"""Hub export: the exported folder must load and generate without the bmojo package installed."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import uuid
from types import SimpleNamespace

import pytest
import torch
import transformers.utils.hub
from huggingface_hub import ModelCard
from huggingface_hub.errors import EntryNotFoundError
from transformers.dynamic_module_utils import get_imports, get_relative_imports

import bmojo
from bmojo.eval.lm_eval import ascii_char_tokenizer
from bmojo.hub import export, push, remote_code_sources
from bmojo.hub.export import AUTO_MAP
from bmojo.hub.flatten import FlattenError, flatten

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Run in a fresh interpreter where every `bmojo` import fails, as on a machine without the package.
# With a fourth argument, the loaded (remote-code) model is also saved there and loaded back from it.
BLOCKED_LOAD = textwrap.dedent("""
    import sys
    class BlockBmojo:
        def find_spec(self, name, path=None, target=None):
            if name == "bmojo" or name.startswith("bmojo."):
                raise ImportError("bmojo is blocked in this test")
    sys.meta_path.insert(0, BlockBmojo())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        import bmojo
        raise SystemExit("bmojo should not be importable here")
    except ImportError:
        pass
    folder, ids_path, out_path = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = torch.load(ids_path)
    with torch.no_grad():
        logits = model(ids).logits
    greedy = model.generate(ids[:1], max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    out = {"logits": logits, "greedy": greedy, "module": type(model).__module__,
           "text": tokenizer.decode(tokenizer("Hi B'MOJO").input_ids)}
    if len(sys.argv) > 4:
        import os
        model.save_pretrained(sys.argv[4])
        out["resaved_files"] = sorted(os.listdir(sys.argv[4]))
        again = AutoModelForCausalLM.from_pretrained(sys.argv[4], trust_remote_code=True).eval()
        with torch.no_grad():
            out["resaved_logits"] = again(ids).logits
    torch.save(out, out_path)
""")


def load_without_package(folder, ids, tmp_path, resave=None):
    """BLOCKED_LOAD's results for `folder` (loaded offline with trust_remote_code) and `ids`."""
    torch.save(ids, tmp_path / "ids.pt")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    argv = [str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")]
    argv += [str(resave)] if resave else []
    run = subprocess.run([sys.executable, "-c", BLOCKED_LOAD, *argv], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    remote = torch.load(tmp_path / "out.pt")
    assert remote["module"].startswith("transformers_modules.")
    assert remote["text"] == "Hi B'MOJO"
    return remote


def assert_same_outputs(remote, model, ids):
    with torch.no_grad():
        logits = model(ids).logits
        greedy = model.generate(ids[:1], max_new_tokens=10, do_sample=False, eos_token_id=None,
                                pad_token_id=0)
    assert logits.std() > 1.0  # not a near-uniform model: the comparison below means something
    torch.testing.assert_close(remote["logits"], logits, atol=1e-6, rtol=0)
    assert torch.equal(remote["greedy"], greedy)


def random_tiny_model():
    """A tiny model whose weights are scaled up so that its logits are far from uniform."""
    torch.manual_seed(0)
    model = bmojo.BMojoForCausalLM(bmojo.preset_config("tiny")).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.mul_(15.0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = random_tiny_model()
    folder = tmp_path_factory.mktemp("export")
    info = {"model_name": "bmojo-tiny-test", "training_data": ["nothing (random weights)"],
            "eval_results": {"bmojo_offline_mc": {"acc,none": 0.25, "acc_stderr,none": 0.1}}}
    export(model, folder, tokenizer=ascii_char_tokenizer(), model_card_info=info)
    return model, folder


def test_export_writes_uploadable_folder(exported):
    model, folder = exported
    names = {p.name for p in folder.iterdir()}
    for name in ("model.safetensors", "config.json", "generation_config.json", "configuration_bmojo.py",
                 "modeling_bmojo.py", "README.md", "tokenizer.json", "tokenizer_config.json"):
        assert name in names
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_bmojo.BMojoConfig",
                                  "AutoModel": "modeling_bmojo.BMojoModel",
                                  "AutoModelForCausalLM": "modeling_bmojo.BMojoForCausalLM"}
    assert config["model_type"] == "bmojo"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    for text in ("- custom_code", "pipeline_tag: text-generation", "license: apache-2.0", "bmojo x2",
                 "| sliding window (eidetic, recent) | 8 |", "nothing (random weights)",
                 "| acc,none | 0.2500 |"):
        assert text in card
    assert f"({sum(p.numel() for p in model.parameters()):,})" in card


def test_remote_code_passes_transformers_import_checks(exported):
    _, folder = exported
    assert get_relative_imports(folder / "configuration_bmojo.py") == []
    assert get_relative_imports(folder / "modeling_bmojo.py") == ["configuration_bmojo"]
    for name in ("configuration_bmojo.py", "modeling_bmojo.py"):
        required = set(get_imports(folder / name))  # what check_imports will demand be installed
        assert "bmojo" not in required and "triton" not in required, required
        assert all(importlib.util.find_spec(module) is not None for module in required), required
        compile((folder / name).read_text(), name, "exec")


def test_exported_folder_loads_and_generates_without_package(exported, tmp_path):
    model, folder = exported
    torch.manual_seed(1)
    ids = torch.randint(3, 128, (2, 21))
    assert_same_outputs(load_without_package(folder, ids, tmp_path), model, ids)


# The model card's usage snippet, run as written in a fresh interpreter without bmojo: BLOCK_BMOJO, then
# each snippet file named on the command line.
BLOCK_BMOJO = BLOCKED_LOAD.split("import torch")[0] + textwrap.dedent("""
    for path in sys.argv[1:]:
        exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__"})
""")


def card_snippet(folder):
    card = (folder / "README.md").read_text()
    blocks = card.split("```python\n")[1:]
    assert len(blocks) == 1, card
    return card, blocks[0].split("```")[0]


def test_model_card_usage_runs_as_written(tmp_path):
    """With a tokenizer the card loads it with AutoTokenizer; without one it says none ships (and does not
    call AutoTokenizer); both snippets run verbatim against the folder as their repo id."""
    model, snippets = random_tiny_model(), []
    for name, tokenizer in (("with", "ascii-chars"), ("without", None)):
        folder = tmp_path / f"export-{name}-tokenizer"
        export(model, folder, tokenizer=tokenizer, model_card_info={"repo_id": str(folder)})
        card, snippet = card_snippet(folder)
        assert f'from_pretrained("{folder}", trust_remote_code=True)' in snippet
        assert ("AutoTokenizer" in snippet) == (tokenizer is not None)
        assert ("No tokenizer was uploaded" in card) == (tokenizer is None)
        assert (folder / "tokenizer.json").is_file() == (tokenizer is not None)
        snippets.append(tmp_path / f"snippet-{name}.py")
        snippets[-1].write_text(snippet)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), PYTHONPATH="")
    run = subprocess.run([sys.executable, "-c", BLOCK_BMOJO, *map(str, snippets)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("The capital of France is"), run.stdout  # decoded by the ASCII tokenizer


def test_export_refuses_a_tokenizer_larger_than_the_vocabulary(tmp_path):
    model = bmojo.BMojoForCausalLM(bmojo.preset_config("tiny", vocab_size=64))
    with pytest.raises(ValueError, match="tokenizer has 100 tokens but the model's vocab_size is 64"):
        export(model, tmp_path, tokenizer="ascii-chars")


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records calls and what the uploaded folder held."""

    calls = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, repo_id, folder_path, **kwargs):
        files = {p.name: p.read_bytes() for p in __import__("pathlib").Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, dict(kwargs, files=files)))
        return "commit-info"


def test_push_exports_then_uploads(monkeypatch):
    monkeypatch.setattr("bmojo.hub.upload.HfApi", FakeHfApi)
    FakeHfApi.calls = []
    result = push(random_tiny_model(), "me/bmojo-tiny", token="hf_test", private=True,
                  commit_message="first", tokenizer=ascii_char_tokenizer())
    assert result == "commit-info"
    (create, repo, create_kwargs), (upload, repo2, upload_kwargs) = FakeHfApi.calls
    assert (create, repo, repo2, upload) == ("create_repo", "me/bmojo-tiny", "me/bmojo-tiny", "upload_folder")
    assert create_kwargs["private"] is True and create_kwargs["exist_ok"] is True
    assert upload_kwargs["commit_message"] == "first"
    files = upload_kwargs["files"]
    assert {"model.safetensors", "config.json", "modeling_bmojo.py", "configuration_bmojo.py",
            "README.md", "tokenizer.json"} <= set(files)
    assert b'"auto_map"' in files["config.json"]
    assert b'from_pretrained("me/bmojo-tiny", trust_remote_code=True)' in files["README.md"]


# -- save_pretrained / push_to_hub after register_for_auto_class ---------------------------------------

@pytest.fixture
def registered(monkeypatch):
    """BMojoConfig and BMojoForCausalLM registered for their Auto classes as a user would; undone after."""
    for cls in (bmojo.BMojoConfig, bmojo.BMojoModel, bmojo.BMojoForCausalLM):
        monkeypatch.setattr(cls, "_auto_class", None)
    bmojo.BMojoConfig.register_for_auto_class()
    bmojo.BMojoForCausalLM.register_for_auto_class("AutoModelForCausalLM")


def assert_remote_code_folder(files, architecture="BMojoForCausalLM"):
    """`files`: {name: bytes} of a saved or uploaded folder."""
    assert {"model.safetensors", "config.json", "configuration_bmojo.py", "modeling_bmojo.py"} <= set(files)
    config = json.loads(files["config.json"])
    assert config["auto_map"] == AUTO_MAP and config["architectures"] == [architecture]
    for name, source in remote_code_sources().items():
        assert files[name].decode("utf-8") == source  # the flat files, not copies of the package modules


def test_registered_save_pretrained_loads_without_package(registered, tmp_path):
    model = random_tiny_model()
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    assert bmojo.BMojoForCausalLM._auto_class == "AutoModelForCausalLM"  # registrations back in place
    assert bmojo.BMojoConfig._auto_class == "AutoConfig"
    assert_remote_code_folder({p.name: p.read_bytes() for p in folder.iterdir()})
    ascii_char_tokenizer().save_pretrained(folder)  # BLOCKED_LOAD decodes some text too
    torch.manual_seed(2)
    ids = torch.randint(3, 128, (2, 17))
    remote = load_without_package(folder, ids, tmp_path, resave=tmp_path / "resaved")
    assert_same_outputs(remote, model, ids)
    # The remote-code model saves itself as transformers does for any remote code: it copies the flat files.
    resaved = set(remote["resaved_files"])
    assert {"configuration_bmojo.py", "modeling_bmojo.py", "model.safetensors"} <= resaved
    torch.testing.assert_close(remote["resaved_logits"], remote["logits"], atol=0, rtol=0)


@pytest.mark.parametrize("which", ["config only", "none"])
def test_save_pretrained_registrations(which, monkeypatch, tmp_path):
    for cls in (bmojo.BMojoConfig, bmojo.BMojoModel, bmojo.BMojoForCausalLM):
        monkeypatch.setattr(cls, "_auto_class", None)
    if which == "config only":
        bmojo.BMojoConfig.register_for_auto_class()
    model = bmojo.BMojoModel(bmojo.preset_config("tiny"))
    model.save_pretrained(tmp_path)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if which == "none":  # unregistered: transformers' save_pretrained, untouched
        assert "auto_map" not in json.loads(files["config.json"])
        assert not any(name.endswith(".py") for name in files)
    else:
        assert_remote_code_folder(files, architecture="BMojoModel")
        assert bmojo.BMojoConfig._auto_class == "AutoConfig" and bmojo.BMojoModel._auto_class is None


class FakeTransformersHub:
    """Stands in for transformers' shared HfApi (`transformers.utils.hub.hf_api()`), through which
    `push_to_hub` creates the repo and commits: records the calls and the committed files' contents."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id)

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            with op.as_file() as f:
                files[op.path_in_repo] = f.read()
        self.calls.append(("create_commit", repo_id, dict(kwargs, files=files)))
        return "commit-info"


class RepoWithoutCard(ModelCard):
    @classmethod
    def load(cls, repo_id, **kwargs):  # what the Hub answers for a new repo: no README.md yet
        raise EntryNotFoundError(f"{repo_id} has no README.md")


@pytest.mark.parametrize("how", ["push_to_hub", "save_pretrained(push_to_hub=True)"])
def test_registered_push_to_hub_uploads_remote_code(how, registered, monkeypatch, tmp_path):
    hub = FakeTransformersHub()
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", hub)
    monkeypatch.setattr(transformers.utils.hub, "ModelCard", RepoWithoutCard)
    model = random_tiny_model()
    if how == "push_to_hub":
        result = model.push_to_hub("user/repo", commit_message="first", private=True, token="hf_test")
    else:
        result = model.save_pretrained(tmp_path / "repo", push_to_hub=True, repo_id="user/repo",
                                       commit_message="first", private=True, token="hf_test")
        assert_remote_code_folder({p.name: p.read_bytes() for p in (tmp_path / "repo").iterdir()})
    assert result == "commit-info"
    (create, repo, create_kwargs), (commit, repo2, commit_kwargs) = hub.calls
    assert (create, repo, commit, repo2) == ("create_repo", "user/repo", "create_commit", "user/repo")
    assert create_kwargs["private"] is True and create_kwargs["token"] == "hf_test"
    assert commit_kwargs["commit_message"] == "first" and commit_kwargs["token"] == "hf_test"
    files = commit_kwargs["files"]
    assert_remote_code_folder(files)
    assert {"README.md", "generation_config.json"} <= set(files)  # README.md: transformers' own card
    assert bmojo.BMojoForCausalLM._auto_class == "AutoModelForCausalLM"


# -- the flattener on small synthetic packages ------------------------------------------------------

def make_package(tmp_path, monkeypatch, files):
    name = f"flatpkg_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def run_flat(source, folder=None):
    """Import the flat source from a real file (Triton's @jit reads its function's source file)."""
    if folder is None:
        namespace = {"__name__": "flat"}
        exec(compile(source, "flat.py", "exec"), namespace)
        return namespace
    path = folder / f"flat_{uuid.uuid4().hex[:8]}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def test_flatten_renames_shadowed_names_and_follows_aliases(tmp_path, monkeypatch):
    pkg = make_package(tmp_path, monkeypatch, {
        "ops/__init__.py": "from .naive import step\n",
        "ops/naive.py": """
            import math

            def step(x):
                return math.floor(x) + _helper()

            def _helper():
                return 100
        """,
        "dispatch.py": """
            from .ops.naive import step as _reference

            def step(x):
                return _reference(x) + 1

            def lazy(x):
                from .ops import step as naive_step
                return naive_step(x)
        """,
        "model.py": """
            import math
            from .dispatch import step

            def _helper():
                return 7

            def run(x):
                return step(x) + _helper()
        """,
    })
    source = flatten([f"{pkg}.model"], "# flat")
    assert "from ." not in source and source.count("import math") == 1
    ns = run_flat(source)
    assert ns["run"](2.5) == (2 + 100 + 1) + 7  # dispatch.step -> naive.step with naive's own _helper
    assert ns["lazy"](2.5) == 102  # the nested import still means naive.step


def test_flatten_refuses_a_nested_import_shadowing_a_module_name(tmp_path, monkeypatch):
    pkg = make_package(tmp_path, monkeypatch, {
        "a.py": "def step(x):\n    return x\n",
        "b.py": "def step(x):\n    return 1\n\n\ndef lazy(x):\n    from .a import step\n    return step(x)\n",
    })
    with pytest.raises(FlattenError, match="both defined and imported"):
        flatten([f"{pkg}.b"], "# flat")


def test_flatten_omits_modules_behind_nested_imports(tmp_path, monkeypatch):
    pkg = make_package(tmp_path, monkeypatch, {
        "tools/__init__.py": "from .io import save\n",
        "tools/io.py": "def save(x):\n    return 'package ' + x\n",
        "model.py": """
            def save(x):
                try:
                    from .tools import save as tool_save
                except ImportError:
                    return 'fallback ' + x
                return tool_save(x)
        """,
    })
    assert run_flat(flatten([f"{pkg}.model"], "# flat"))["save"]("a") == "package a"
    source = flatten([f"{pkg}.model"], "# flat", omit=[f"{pkg}.tools"])
    assert "def save(x):\n    return 'package'" not in source and "raise ImportError(" in source
    assert run_flat(source)["save"]("a") == "fallback a"
    pkg = make_package(tmp_path, monkeypatch, {"tools.py": "x = 1\n", "model.py": "from .tools import x\n"})
    with pytest.raises(FlattenError, match="left out of the flat file"):
        flatten([f"{pkg}.model"], "# flat", omit=[f"{pkg}.tools"])


def test_flatten_fails_loudly_on_unresolvable_import(tmp_path, monkeypatch):
    pkg = make_package(tmp_path, monkeypatch, {"a.py": "from .missing import thing\n"})
    with pytest.raises(FlattenError, match="missing"):
        flatten([f"{pkg}.a"], "# flat")
    pkg = make_package(tmp_path, monkeypatch, {"b.py": "from .c import nope\n", "c.py": "x = 1\n"})
    with pytest.raises(FlattenError, match="does not define 'nope'"):
        flatten([f"{pkg}.b"], "# flat")


def test_flatten_guards_triton_modules(tmp_path, monkeypatch):
    pkg = make_package(tmp_path, monkeypatch, {
        "kernel.py": '''
            """Triton kernel."""
            import triton


            @triton.jit
            def _k(x):
                pass


            def fast(x):
                return 2 * x
        ''',
        "dispatch.py": """
            def run(x):
                try:
                    from .kernel import fast
                except ImportError:
                    return x
                return fast(x)
        """,
    })
    source = flatten([f"{pkg}.dispatch"], "# flat")
    assert "try:  # optional" in source and "if _HAS_TRITON:" in source
    assert "triton" not in get_imports_of(source, tmp_path)
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    without = run_flat(source, tmp_path)
    assert without["_HAS_TRITON"] is False and without["run"](3) == 3
    monkeypatch.delitem(sys.modules, "triton")
    if importlib.util.find_spec("triton") is not None:
        with_triton = run_flat(source, tmp_path)
        assert with_triton["_HAS_TRITON"] is True and with_triton["run"](3) == 6


def get_imports_of(source, tmp_path):
    path = tmp_path / "flat_check.py"
    path.write_text(source)
    return get_imports(path)
