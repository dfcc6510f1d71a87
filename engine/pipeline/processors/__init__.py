"""Processors: one effect per module, each a processor of a stage (engine/pipeline/stages.py).

context.py          what a processor is built with, and what it offers
feedback.py         the previous output frame zoomed, panned and rotated, mixed in (image stages)
latent_feedback.py  the previous output latent blended in (latent stages)
"""
