"""Flax models: generators, the annotator and the segmenters."""
