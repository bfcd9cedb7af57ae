"""MSPT model, heads, processor and knowledge-graph pipeline, registered with the transformers Auto classes and the
pipeline registry (task "multimodal-kg-construction") on import. Saved checkpoints carry this code for processes
without the package (`trust_remote_code=True`): every checkpoint the model code, an NER checkpoint also the pipeline."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoProcessor,
)

from .configuration_mspt import MSPTConfig
from .crf_mspt import MSPTCRF
from .modeling_mspt import (
    MSPTForRelationExtraction,
    MSPTForTokenClassification,
    MSPTInteractionAttentions,
    MSPTModel,
    MSPTModelOutput,
    MSPTPreTrainedModel,
    MSPTRelationExtractionOutput,
    MSPTTokenClassificationOutput,
)
from .pipeline_mspt import KG_TASK, MSPTKnowledgeGraphPipeline
from .processing_mspt import RE_MARKERS, MSPTProcessor

AutoConfig.register("mspt", MSPTConfig, exist_ok=True)
AutoModel.register(MSPTConfig, MSPTModel, exist_ok=True)
AutoModelForSequenceClassification.register(MSPTConfig, MSPTForRelationExtraction, exist_ok=True)
AutoModelForTokenClassification.register(MSPTConfig, MSPTForTokenClassification, exist_ok=True)
AutoProcessor.register(MSPTConfig, MSPTProcessor, exist_ok=True)

__all__ = [
    "MSPTConfig",
    "MSPTCRF",
    "MSPTModel",
    "MSPTPreTrainedModel",
    "MSPTForRelationExtraction",
    "MSPTForTokenClassification",
    "MSPTModelOutput",
    "MSPTInteractionAttentions",
    "MSPTRelationExtractionOutput",
    "MSPTTokenClassificationOutput",
    "MSPTProcessor",
    "MSPTKnowledgeGraphPipeline",
    "KG_TASK",
    "RE_MARKERS",
]
