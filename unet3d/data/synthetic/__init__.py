"""Synthetic BraTS-format data sets (see ``generate``)."""
