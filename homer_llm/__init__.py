"""homer-llm: HOMER hierarchical context merging on Hugging Face transformers.

Put a document far longer than a model's window straight into its context: the document is
chunked, the lower layers run per chunk, tokens are pruned by calibrated attention significance,
and siblings merge layer by layer up a binary tree into one compact standard KV cache.
"""

from .compat import UnsupportedModelError
from .config import GenerationConfig, HomerConfig
from .doc_cache import DocumentCache, EntrySpec
from .engine import CompressedContext, CompressionStats
from .generation import Generation, TextStream
from .model import Answer, CostEstimate, HomerModel, SizeLimits, check_document
from .prompt import DOCUMENT_PLACEHOLDER, PromptParts, anchor_prefix, split_chat, split_text
from .schedule import Plan, make_plan

__all__ = [
    "DOCUMENT_PLACEHOLDER",
    "Answer",
    "CompressedContext",
    "CompressionStats",
    "CostEstimate",
    "DocumentCache",
    "EntrySpec",
    "Generation",
    "GenerationConfig",
    "HomerConfig",
    "HomerModel",
    "Plan",
    "PromptParts",
    "SizeLimits",
    "TextStream",
    "UnsupportedModelError",
    "anchor_prefix",
    "check_document",
    "make_plan",
    "split_chat",
    "split_text",
]
__version__ = "0.1.0"
