"""Serving: a paged KV cache, continuous batching, prefix caching (the engine, no web code), and the
OpenAI-compatible HTTP app over it (app.py, needs the `serve` extra). docs/serving.md tells the story.
"""
from .blocks import BlockManager, OutOfBlocks, chain_hashes
from .engine import Engine, EngineConfig
from .paged_cache import PagedKVCache, StepLayout
from .request import Request, SamplingParams, TokenOut
from .scheduler import Scheduler

__all__ = ["BlockManager", "OutOfBlocks", "chain_hashes", "Engine", "EngineConfig", "PagedKVCache", "StepLayout",
           "Request", "SamplingParams", "TokenOut", "Scheduler"]
