"""Statistics over head attributions: similarity, null baselines, per-sample structure, cross-seed,
cross-method, per-category and per-mask-ratio comparisons. Pure numpy/scipy/pandas functions.

Layer 1: imports nothing else of headattr."""

from headattr.stats.categories import category_differences, category_means
from headattr.stats.mask_ratio import mask_ratio_agreement
from headattr.stats.methods import method_comparison, method_specificity
from headattr.stats.nulls import (
    BootstrapInterval,
    PermutationResult,
    bca_interval,
    bootstrap_ci,
    nan_percentile_interval,
    permutation_null,
    random_topk_overlap_distribution,
    random_topk_overlap_expected,
)
from headattr.stats.samples import (
    as_per_sample,
    head_variance,
    offdiag_summary,
    sample_correlation_matrix,
    sample_count_agreement,
    sample_specificity,
)
from headattr.stats.seeds import cross_seed_bootstrap, cross_seed_consistency, depth_bins_ranges, split_ks
from headattr.stats.similarity import (
    RANK_BY,
    agreement,
    cosine,
    pearson,
    ranking_key,
    rowwise_pearson,
    rowwise_spearman,
    spearman,
    topk_indices,
    topk_overlap,
)
from headattr.stats.split_half import spearman_brown, split_half_reliability

__all__ = [
    "spearman_brown",
    "split_half_reliability",
    "RANK_BY",
    "BootstrapInterval",
    "PermutationResult",
    "agreement",
    "as_per_sample",
    "bca_interval",
    "bootstrap_ci",
    "category_differences",
    "category_means",
    "cosine",
    "cross_seed_bootstrap",
    "cross_seed_consistency",
    "depth_bins_ranges",
    "head_variance",
    "mask_ratio_agreement",
    "method_comparison",
    "method_specificity",
    "nan_percentile_interval",
    "offdiag_summary",
    "pearson",
    "permutation_null",
    "random_topk_overlap_distribution",
    "random_topk_overlap_expected",
    "ranking_key",
    "rowwise_pearson",
    "rowwise_spearman",
    "sample_correlation_matrix",
    "sample_count_agreement",
    "sample_specificity",
    "spearman",
    "split_ks",
    "topk_indices",
    "topk_overlap",
]
