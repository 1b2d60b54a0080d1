"""Readers for foreign checkpoints (torch zip checkpoints, StyleGAN2-ADA pickles), without torch."""
