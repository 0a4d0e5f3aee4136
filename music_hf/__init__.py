"""music-hf: symbolic music the Hugging Face way (tokenizer, model, training, Hub, Space).

Importing the package registers MusicConfig, MusicTokenizer and the models with the Auto classes, and the
`music-generation` pipeline with transformers' pipeline registry.
"""

from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoTokenizer)

from .configuration_music import MusicConfig
from .composition import accompany, infill_music
from .generation import generate_midi, generate_music
from .modeling_music import MusicForCausalLM, MusicForSequenceClassification, MusicModel, MusicPreTrainedModel
from .pipelines import MusicGenerationPipeline, register_pipeline
from .tokenization_music import EmptyMusicError, MusicFileError, MusicTokenizer, load_score

AutoConfig.register(MusicConfig.model_type, MusicConfig, exist_ok=True)
AutoTokenizer.register(MusicConfig, slow_tokenizer_class=None, fast_tokenizer_class=None,
                       tokenizer_class=MusicTokenizer, exist_ok=True)
AutoModel.register(MusicConfig, MusicModel, exist_ok=True)
AutoModelForCausalLM.register(MusicConfig, MusicForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(MusicConfig, MusicForSequenceClassification, exist_ok=True)
MusicConfig.register_for_auto_class()
MusicModel.register_for_auto_class("AutoModel")
MusicForCausalLM.register_for_auto_class("AutoModelForCausalLM")
MusicForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
MusicTokenizer.register_for_auto_class("AutoTokenizer")
register_pipeline()  # pipeline("music-generation", model=...)

__version__ = "0.1.0"
__all__ = ["MusicConfig", "MusicTokenizer", "MusicModel", "MusicPreTrainedModel", "MusicForCausalLM",
           "MusicForSequenceClassification", "MusicGenerationPipeline", "MusicFileError", "EmptyMusicError",
           "load_score", "generate_music", "generate_midi", "infill_music", "accompany"]
