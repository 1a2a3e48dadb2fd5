"""Rendering batches on ComfyUI servers.

Executing one batch end to end, the pool policy that hands batches to servers, the GPU
sampler, failure classification, run ids and the tally of a run.
"""
