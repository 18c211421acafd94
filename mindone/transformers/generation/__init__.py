from .configuration_utils import GenerationConfig
from .logits_process import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from .stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteria, StoppingCriteriaList
from .utils import GenerationMixin
