"""Data: UltraFeedback loading and normalizing, the offline corpus, filters."""

from core.data.corpus import generate_rows, generate_table, write_corpus
from core.data.filters import non_dominated_mask, pairs_from_scores
from core.data.table import ASPECTS, PreferenceTable, join_prompt_response
from core.data.ultrafeedback import DataError, HubUnavailableError, load_binarized, load_ultrafeedback

__all__ = [
    "ASPECTS", "DataError", "HubUnavailableError", "PreferenceTable", "generate_rows", "generate_table",
    "join_prompt_response", "load_binarized", "load_ultrafeedback", "non_dominated_mask",
    "pairs_from_scores", "write_corpus",
]
