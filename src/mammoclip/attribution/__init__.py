"""Mammo-FActOR: attribute embeddings, the stacked-heads mapper, heatmaps, regions and weak-localization metrics.

See docs/attribution.md. Training the mapper lives in :mod:`mammoclip.train.factor` (the library never
imports the trainer); everything here runs on a trained mapper.
"""

from mammoclip.attribution import baselines as _baselines  # noqa: F401  (registers the baseline methods)
from mammoclip.attribution.attributes import (
    AttributeSpec,
    attribute_embeddings,
    builtin_attribute,
    read_sentence_file,
    resolve_attributes,
)
from mammoclip.attribution.baselines import breast_prior_map, fit_probe_heads
from mammoclip.attribution.heatmap import (
    Explainer,
    HeatmapContext,
    channel_weights,
    heat_regions,
    heatmap_to_original,
    list_heatmap_methods,
    register_heatmap_method,
    upsample_normalise,
    weighted_maps,
)
from mammoclip.attribution.localization import box_iou, localization_table, localize_one, summarize
from mammoclip.attribution.mapper import FactorMapper, factor_loss, list_loss_forms, load_mapper, save_mapper
from mammoclip.attribution.outputs import explain_bundle

__all__ = [
    "AttributeSpec", "Explainer", "FactorMapper", "HeatmapContext", "attribute_embeddings", "box_iou",
    "breast_prior_map", "builtin_attribute", "channel_weights", "explain_bundle", "factor_loss", "fit_probe_heads",
    "heat_regions", "heatmap_to_original", "list_heatmap_methods", "list_loss_forms", "load_mapper",
    "localization_table", "localize_one", "read_sentence_file", "register_heatmap_method", "resolve_attributes",
    "save_mapper", "summarize", "upsample_normalise", "weighted_maps",
]
