"""The latent index: stored questions' sampled codes, searched by the any-of-K x K pairs rule.

Knows nothing of SQL or HTTP: it maps integer ids to codes. `reference.brute_force_search` is the
definition of the rule; every index kind is tested against it.

    from app.search import SimilarityIndex, IndexFileError, Match
"""

from app.search.approximate import APPROXIMATE_KINDS, KINDS
from app.search.index import SimilarityIndex
from app.search.reference import METRICS, Match
from app.search.storage import IndexFileError

__all__ = ["APPROXIMATE_KINDS", "KINDS", "METRICS", "IndexFileError", "Match", "SimilarityIndex"]
