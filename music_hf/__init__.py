"""music-hf: symbolic music the Hugging Face way (tokenizer, model, training, Hub, Space).

Importing the package registers MusicConfig, MusicTokenizer and the models with the Auto classes.
"""

from transformers import AutoConfig, AutoTokenizer

from .configuration_music import MusicConfig
from .tokenization_music import EmptyMusicError, MusicFileError, MusicTokenizer, load_score

AutoConfig.register(MusicConfig.model_type, MusicConfig, exist_ok=True)
AutoTokenizer.register(MusicConfig, slow_tokenizer_class=None, fast_tokenizer_class=None,
                       tokenizer_class=MusicTokenizer, exist_ok=True)
MusicConfig.register_for_auto_class()
MusicTokenizer.register_for_auto_class("AutoTokenizer")

__version__ = "0.1.0"
__all__ = ["MusicConfig", "MusicTokenizer", "MusicFileError", "EmptyMusicError", "load_score"]
