"""transformers' own `TokenizerTesterMixin`, run against MusicTokenizer as a tokenizer inside transformers is tested.

The mixin comes from the source distribution of the installed transformers version, unpacked by
`scripts/fetch_transformers_tests.py` (see tests/test_transformers_common.py). MusicTokenizer's "text" is music; the
strings it encodes are token names ("Bar_None Position_0 Pitch_60 ..."), so that is what the tests get where they ask
for text, and the tokenizer has an UNK token so that the mixin's English sentences encode too (see TOKENIZER_KWARGS).
No test is skipped here; the mixin skips its own few that need a tokenizers-library backend (`tokenizer.json`,
`sequence_ids`), a seq2seq tokenizer (`test_seq2seq = False`: prepare_seq2seq_batch is for translation models) or
chat-template input files.
"""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path

import pytest

pytest.importorskip("transformers_tests.test_tokenization_common",
                    reason="transformers' common tests are not unpacked (run scripts/fetch_transformers_tests.py)")

from transformers import AutoTokenizer  # noqa: E402
from transformers_tests.test_tokenization_common import TokenizerTesterMixin  # noqa: E402

import music_hf  # noqa: E402,F401  (registers the Auto classes)
from music_hf import MusicTokenizer  # noqa: E402

# Two bars of REMI+ token names: what MusicTokenizer encodes as text (one token per space-separated name).
MUSIC_TEXT = ("Bar_None TimeSig_4/4 Position_0 Program_0 Pitch_60 Velocity_63 Duration_1.0.8 "
              "Position_8 Program_0 Pitch_64 Velocity_79 Duration_0.4.8 Bar_None Position_0 Tempo_121.29 "
              "Program_-1 PitchDrum_36 Velocity_95 Duration_0.1.8")

# The default REMI+ tokenizer plus an UNK token: the mixin's many English sentences ("This is a test") then encode,
# a word an UNK, so its padding, truncation, special-token and save/load checks run on MusicTokenizer's own code.
# (Without unk_token, the default, an unknown name raises.)
TOKENIZER_KWARGS = {"miditok_config": {"special_tokens": ["PAD", "BOS", "EOS", "MASK", "UNK"]},
                    "unk_token": "UNK_None"}


class MusicTokenizerCommonTest(TokenizerTesterMixin, unittest.TestCase):
    tokenizer_class = MusicTokenizer
    test_seq2seq = False
    test_tokenizer_from_extractor = False  # needs a tokenizers-library tokenizer.json
    integration_test_input_string = MUSIC_TEXT
    integration_expected_tokens = MUSIC_TEXT.split()
    # ids in the default REMI+ vocabulary with UNK (a change of the default miditok settings shows here)
    integration_expected_token_ids = [5, 503, 175, 365, 45, 102, 118, 183, 365, 49, 104, 114, 5, 175, 345, 493, 280,
                                      106, 111]
    integration_expected_decoded_text = MUSIC_TEXT

    @classmethod
    def make_tokenizer(cls) -> MusicTokenizer:
        """The "pretrained" tokenizer the tests load."""
        return MusicTokenizer(**TOKENIZER_KWARGS)

    @classmethod
    def setUpClass(cls) -> None:
        # The pretrained tokenizer is saved to a folder (from_pretrained_id), which the mixin's convention then loads
        # with AutoTokenizer and saves again to tmpdirname for get_tokenizer(). The mixin's own setUpClass also reads
        # tests/fixtures/sample_text.txt, which the sdist's top-level test files do not include and no test here
        # uses, so its steps are done here without it.
        cls.work_dir = Path(tempfile.mkdtemp())
        cls.pretrained_dir = str(cls.work_dir / "pretrained")
        cls.make_tokenizer().save_pretrained(cls.pretrained_dir)
        cls.from_pretrained_id = [cls.pretrained_dir]
        cls.tokenizers_list = [(cls.tokenizer_class, cls.pretrained_dir, {})]
        cls._data = MUSIC_TEXT
        cls.tmpdirname = tempfile.mkdtemp()
        AutoTokenizer.from_pretrained(cls.pretrained_dir).save_pretrained(cls.tmpdirname)

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        shutil.rmtree(cls.work_dir, ignore_errors=True)

    def get_input_output_texts(self, tokenizer):
        return MUSIC_TEXT, MUSIC_TEXT

    def get_clean_sequence(self, tokenizer, with_prefix_space=False, max_length=20, min_length=5):
        # the mixin picks vocabulary entries that are plain words ("^[ a-zA-Z]+$"); token names never are
        names = MUSIC_TEXT.split()
        names = (names * (min_length // len(names) + 1) if min_length else names)[:max_length]
        # a trailing space: the mixin repeats the text by string multiplication (seq * 100)
        text = (" " if with_prefix_space else "") + " ".join(names) + " "
        return text, tokenizer.encode(text, add_special_tokens=False)

    def test_conversion_reversible(self):
        # the mixin's test, which it marks slow (for text vocabularies of 50k+); ours have 500 to 800 ids
        tokenizer = self.get_tokenizer()
        for word, ind in tokenizer.get_vocab().items():
            if word != tokenizer.unk_token:
                self.assertEqual(tokenizer.convert_tokens_to_ids(word), ind)
                self.assertEqual(tokenizer.convert_ids_to_tokens(ind), word)


class MusicTokenizerBPECommonTest(MusicTokenizerCommonTest):
    """The same with BPE learned over real pieces (conftest's music21 corpus MIDI files): a learned id's token string
    joins its base tokens with "|" (with a "▁" in front for a word start); base token names keep their ids."""

    @classmethod
    def make_tokenizer(cls) -> MusicTokenizer:
        from conftest import _write_real_midi

        (cls.work_dir / "midi").mkdir()
        cls.midi_paths = _write_real_midi(cls.work_dir / "midi")
        tokenizer = MusicTokenizer(**TOKENIZER_KWARGS)
        tokenizer.train_bpe(vocab_size=800, files=cls.midi_paths)
        return tokenizer

    def get_input_output_texts(self, tokenizer):
        # a real piece as token strings, learned ones included: they must encode back to the same ids
        text = tokenizer.decode(tokenizer.encode_score(self.midi_paths[0]))
        assert "|" in text and len(text.split()) > 20
        return text, text
