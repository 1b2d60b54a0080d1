"""Datasets (tfds builders that need no TensorFlow) and the input pipeline."""
