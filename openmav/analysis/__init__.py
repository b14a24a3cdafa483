"""Extraction API, statistics, head scores, plots and prompt comparisons.

Import the heavy parts from their modules (``openmav.analysis.extractor``,
``openmav.analysis.visualizer``); this package itself imports nothing heavy.
"""
