"""transformers' own common model tests (`ModelTesterMixin`) run against `BMojoModel` and
`BMojoForCausalLM`, the way a contributor to transformers runs them for a new model: a model tester
that builds a small config and inputs, and a TestCase that mixes in the suite.

The suite is not copied here: it is imported from the `tests/` folder of transformers' source
distribution for the installed version, unpacked at `$BMOJO_TRANSFORMERS_SRC` (`.ci/hf-common.sh`
downloads it from PyPI and runs this file). Without that variable the module is skipped.

The sdist ships `tests/test_modeling_common.py` but not two modules it imports:
`tests/generation/test_utils.py` (`GenerationTesterMixin`) and `tests/exporters/test_export.py`
(`ExportTesterMixin`, a base class of `ModelTesterMixin`). Where they are absent they are stood in for by
empty mixins, so neither the generate() tests nor the torch.export tests run here; generate() is covered
by tests/test_generation.py (and its transformers-5.13 run in CI).

Every skip below is a design limitation of B'MOJO, with its reason (listed in tests/README.md).
"""

import importlib
import os
import sys
import types
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers

import bmojo

SOURCE_VAR = "BMOJO_TRANSFORMERS_SRC"
_src = os.environ.get(SOURCE_VAR)
if not _src:
    pytest.skip(f"transformers' common model tests need ${SOURCE_VAR}: the unpacked transformers sdist of "
                "the installed version (run .ci/hf-common.sh)", allow_module_level=True)

_PACKAGE = "transformers_sdist_tests"  # a name of its own: our tests/ folder is also called tests
_STAND_INS = {  # module (relative to tests/) -> the mixin it must define, for modules the sdist lacks
    "generation.test_utils": "GenerationTesterMixin",
    "exporters.test_export": "ExportTesterMixin",
}


def _import_common_tests(root):
    tests_dir = Path(root) / "tests"
    if not (tests_dir / "test_modeling_common.py").is_file():
        raise RuntimeError(f"${SOURCE_VAR}={root} has no tests/test_modeling_common.py; point it at an "
                           "unpacked transformers sdist (.ci/hf-common.sh)")
    version = (Path(root) / "PKG-INFO").read_text().split("\nVersion: ", 1)[1].split("\n", 1)[0]
    if version != transformers.__version__:
        raise RuntimeError(f"${SOURCE_VAR} holds transformers {version}'s tests, but "
                           f"{transformers.__version__} is installed: their results would not describe it")
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [str(tests_dir)]
    sys.modules[_PACKAGE] = package
    stood_in = []
    for name, mixin in _STAND_INS.items():
        if not (tests_dir / (name.replace(".", "/") + ".py")).is_file():
            for depth in range(1, name.count(".") + 1):  # the parent packages first
                parent = f"{_PACKAGE}.{name.rsplit('.', depth)[0]}"
                sys.modules.setdefault(parent, types.ModuleType(parent))
            module = types.ModuleType(f"{_PACKAGE}.{name}")
            setattr(module, mixin, type(mixin, (), {"__doc__": "stand-in: not in the transformers sdist"}))
            sys.modules[module.__name__] = module
            stood_in.append(mixin)
    return importlib.import_module(f"{_PACKAGE}.test_modeling_common"), stood_in


common, STOOD_IN = _import_common_tests(_src)
ids_tensor = common.ids_tensor


class BMojoModelTester:
    """A small model of two layers (the suite's limit) with the given mixers, inputs long enough to slide the
    window past the first tokens (window 8, 14 tokens) and one left-padded row."""

    def __init__(self, parent, mixer_types, batch_size=3, seq_length=14, is_training=True, use_labels=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.use_labels = use_labels
        self.mixer_types = list(mixer_types)
        self.num_hidden_layers = len(self.mixer_types)
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_attention_heads = 2

    def get_config(self):
        return bmojo.preset_config(
            "tiny", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers, mixer_types=self.mixer_types,
            num_attention_heads=self.num_attention_heads, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, :3] = 0  # left padding, the only padding generate() makes
        labels = ids_tensor([self.batch_size, self.seq_length], self.vocab_size) if self.use_labels else None
        return self.get_config(), input_ids, attention_mask, labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class BMojoModelTest(common.ModelTesterMixin, unittest.TestCase):
    """The suite over a B'MOJO layer (sliding window + eidetic memory + fading SSM) and a Mamba-2 layer."""

    mixer_types = ("bmojo", "mamba2")
    all_model_classes = (bmojo.BMojoModel, bmojo.BMojoForCausalLM)
    has_attentions = False  # no layer forms attention weights (output_attentions=True raises), like Mamba2
    # Run transformers' check that `_init_weights` covers every parameter (state_dict={} on the meta device);
    # the suite skips it for models whose source has no copyright year of 2023 or later.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = BMojoModelTester(self, self.mixer_types)
        # What a contributor adds to transformers' auto mappings for a new model (models/auto/
        # modeling_auto.py); the suite reads these name tables to know a base model from a causal LM
        # (labels, base-model checks).
        auto = transformers.models.auto.modeling_auto
        for table, name in ((auto.MODEL_MAPPING_NAMES, "BMojoModel"),
                            (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "BMojoForCausalLM")):
            patcher = mock.patch.dict(table, {"bmojo": name})
            patcher.start()
            self.addCleanup(patcher.stop)

    def test_generation_tester_mixin_inheritance(self):
        if "GenerationTesterMixin" in STOOD_IN:
            self.skipTest("GenerationTesterMixin (tests/generation/test_utils.py) is not in transformers' "
                          "sdist; generate() is covered by tests/test_generation.py")
        super().test_generation_tester_mixin_inheritance()


class BMojoAttentionLayersModelTest(BMojoModelTest):
    """The same suite over the two plain attention mixers (sliding window, full)."""

    mixer_types = ("sliding_attention", "full_attention")
