"""transformers' own common tests, run against music-hf as a model inside transformers is tested.

`ModelTesterMixin` (for MusicModel, MusicForCausalLM and MusicForSequenceClassification), `ConfigTester` and
`TokenizerTesterMixin` come from the source distribution of the installed transformers version, unpacked by
`scripts/fetch_transformers_tests.py` (CI runs it first; nothing of it is committed). Tests that cannot apply to a
music model are skipped below, each with its reason.
"""

from __future__ import annotations

import unittest

import pytest
import torch
from transformers.models.auto import modeling_auto

pytest.importorskip("transformers_tests.test_modeling_common",
                    reason="transformers' common tests are not unpacked (run scripts/fetch_transformers_tests.py)")

from transformers_tests.test_configuration_common import ConfigTester
from transformers_tests.test_modeling_common import ModelTesterMixin, ids_tensor, random_attention_mask

import music_hf  # noqa: F401  (registers the Auto classes)
from music_hf import MusicConfig, MusicForCausalLM, MusicForSequenceClassification, MusicModel, MusicTokenizer


# Inside transformers, a model's class names sit in the Auto mapping tables the mixins read to know what each class
# is (a base model without a loss, a causal LM taking token labels, a classifier taking one label per sequence).
_MAPPINGS = {"MODEL_MAPPING_NAMES": "MusicModel", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "MusicForCausalLM",
             "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "MusicForSequenceClassification"}


@pytest.fixture(autouse=True, scope="module")
def music_in_auto_mapping_names():
    for table, name in _MAPPINGS.items():
        getattr(modeling_auto, table)[MusicConfig.model_type] = name
    yield
    for table in _MAPPINGS:
        getattr(modeling_auto, table).pop(MusicConfig.model_type, None)


class MusicModelTester:
    """Small configs over the real default vocabulary (its attribute tables included) and random ids."""

    def __init__(self, parent, batch_size: int = 2, seq_length: int = 9, is_training: bool = True,
                 hidden_size: int = 32, num_hidden_layers: int = 2, num_attention_heads: int = 4,
                 intermediate_size: int = 37, num_labels: int = 3, **config_overrides):
        self.parent = parent
        self.batch_size, self.seq_length, self.is_training = batch_size, seq_length, is_training
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size = num_attention_heads, intermediate_size
        self.num_labels = num_labels
        self.config_overrides = config_overrides
        self.tokenizer = MusicTokenizer()
        self.vocab_size = len(self.tokenizer)

    def get_config(self) -> MusicConfig:
        return MusicConfig.from_tokenizer(
            self.tokenizer, genres=["chorale", "folk"], hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size, max_position_embeddings=64, num_labels=self.num_labels,
            max_bars=16, **self.config_overrides)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "attention_mask": attention_mask}


class _MusicModelTestBase(ModelTesterMixin):
    all_model_classes = (MusicModel, MusicForCausalLM, MusicForSequenceClassification)
    config_overrides: dict = {}

    def setUp(self):
        self.model_tester = MusicModelTester(self, **self.config_overrides)
        self.config_tester = ConfigTester(self, config_class=MusicConfig, hidden_size=48, num_attention_heads=6)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip("transformers' GenerationTesterMixin is not in its source distribution (the stand-in is empty); "
                   "generate() is tested in tests/test_model.py")
    def test_generation_tester_mixin_inheritance(self):
        pass

    @unittest.skip("the music embeddings need the ids behind inputs_embeds: test_inputs_embeds checks the match with "
                   "attribute_ids given")
    def test_inputs_embeds_matches_input_ids(self):
        pass

    def test_inputs_embeds(self):
        """The music embeddings need the ids behind `inputs_embeds`: given as `attribute_ids`, the output equals
        the `input_ids` path; without them the error says what to pass."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            ids = inputs["input_ids"]
            embeds = model.get_input_embeddings()(ids)
            with torch.no_grad():
                expected = model(**inputs)[0]
                got = model(inputs_embeds=embeds, attribute_ids=ids, attention_mask=inputs["attention_mask"])[0]
                torch.testing.assert_close(got, expected)
                with self.assertRaisesRegex(ValueError, "attribute_ids"):
                    model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])


class MusicModelTest(_MusicModelTestBase, unittest.TestCase):
    """The default architecture: layernorm, learned positions, no conv."""


class MusicModelConvRotaryTest(_MusicModelTestBase, unittest.TestCase):
    """The other options: RMS norm, rotary positions, a causal conv in every block."""

    config_overrides = {"norm_type": "rmsnorm", "position_embedding_type": "rotary", "conv_kernel_size": 3}
