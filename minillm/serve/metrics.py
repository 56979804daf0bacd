"""The server's Prometheus metrics (prometheus_client), in a registry of its own per app.

Counted by the app as requests end: requests (by model, endpoint and outcome), prompt and generated
tokens, time to first token and request latency (histograms). Read from each engine at scrape time:
queue length, batch size, KV blocks in use and in all, prefix-cache hits, preemptions.
"""
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EngineCollector:
    """Gauges and counters read from the engines when /metrics is scraped."""

    def __init__(self, served):
        self.served = served            # {name: ServedModel}, filled once the models are loaded

    def collect(self):
        gauges = {
            "queue_length": ("requests waiting for a place in the batch", lambda e: e.num_waiting),
            "batch_size": ("requests in the last step's batch", lambda e: e.stats["last_batch"]),
            "running_requests": ("requests in the running batch", lambda e: e.num_running),
            "kv_blocks_in_use": ("KV-cache blocks held by requests", lambda e: e.blocks.num_used),
            "kv_blocks_total": ("KV-cache blocks in the pool", lambda e: e.blocks.num_blocks),
        }
        counters = {
            "prefix_cache_hits": ("KV blocks taken from the prefix cache", lambda e: e.blocks.prefix_hits),
            "preemptions": ("requests preempted when KV blocks ran out", lambda e: e.scheduler.preemptions),
            "engine_steps": ("batched model steps", lambda e: e.stats["steps"]),
        }
        engines = {name: s.engine for name, s in self.served.items() if s.engine is not None}
        for key, (doc, read) in gauges.items():
            family = GaugeMetricFamily(f"minillm_{key}", doc, labels=["model"])
            for name, engine in engines.items():
                family.add_metric([name], read(engine))
            yield family
        for key, (doc, read) in counters.items():
            family = CounterMetricFamily(f"minillm_{key}", doc, labels=["model"])
            for name, engine in engines.items():
                family.add_metric([name], read(engine))
            yield family


class Metrics:
    def __init__(self, served):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("minillm_requests", "requests answered", ["model", "endpoint", "outcome"], registry=r)
        self.prompt_tokens = Counter("minillm_prompt_tokens", "prompt tokens of answered requests", ["model"],
                                     registry=r)
        self.generation_tokens = Counter("minillm_generation_tokens", "tokens generated", ["model"], registry=r)
        self.ttft = Histogram("minillm_time_to_first_token_seconds", "from arrival to the first token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("minillm_request_latency_seconds", "from arrival to the last token", ["model"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        r.register(EngineCollector(served))

    def observe(self, model, endpoint, request):
        """One engine request ended: count it, its tokens and its latencies."""
        self.requests.labels(model, endpoint, request.finish_reason or "unknown").inc()
        self.prompt_tokens.labels(model).inc(len(request.prompt_ids))
        self.generation_tokens.labels(model).inc(len(request.outputs))
        if request.first_token_time is not None:
            self.ttft.labels(model).observe(request.first_token_time - request.arrival)
        if request.end_time is not None:
            self.latency.labels(model).observe(request.end_time - request.arrival)

    def refused(self, model, endpoint, outcome):
        self.requests.labels(model, endpoint, outcome).inc()

    def render(self):
        return generate_latest(self.registry)
