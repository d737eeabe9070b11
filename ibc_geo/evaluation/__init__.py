"""Evaluation: exact retrieval metrics (Recall@K, MAP@R, R-precision, precision@1), NMI, k-means, embeddings.

Pure functions over embeddings and labels: no writers, no config reads (METHOD.md §2, §3).
"""
from ibc_geo.evaluation.extract import extract_embeddings
from ibc_geo.evaluation.knn import iter_knn, knn_search, l2_normalize
from ibc_geo.evaluation.metrics import (
    FRACTION_METRICS,
    average_precision_at_r,
    evaluate_embeddings,
    first_match_rank,
    KMEANS_MAX_PAIRS,
    KMeansResult,
    format_table,
    is_fraction_metric,
    iter_kmeans,
    kmeans,
    kmeans_assign,
    kmeans_plusplus,
    kmeans_restarts,
    map_at_r,
    metric_names,
    nmi_score,
    r_precision,
    recall_at_k,
    recall_k_of,
)

__all__ = [
    "FRACTION_METRICS",
    "KMEANS_MAX_PAIRS",
    "KMeansResult",
    "average_precision_at_r",
    "evaluate_embeddings",
    "extract_embeddings",
    "first_match_rank",
    "format_table",
    "is_fraction_metric",
    "iter_kmeans",
    "iter_knn",
    "kmeans",
    "kmeans_assign",
    "kmeans_plusplus",
    "kmeans_restarts",
    "knn_search",
    "l2_normalize",
    "map_at_r",
    "metric_names",
    "nmi_score",
    "r_precision",
    "recall_at_k",
    "recall_k_of",
]
