"""Synthetic federations: agencies' advert exports with known ground truth."""
