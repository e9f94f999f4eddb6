"""Delivery of span batches to one OTLP/HTTP destination: OTLP encoding, gzip, the POST, the
bounded retry backlog with backoff, the counters, the bounded flush and exit.
"""
