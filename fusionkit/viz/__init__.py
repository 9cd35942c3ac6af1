"""Visualisation: flow colour coding and the notebooks' plots."""
