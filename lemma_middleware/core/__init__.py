"""The framework- and SDK-neutral core: what to extract from a request (options, identity),
what to record (capture, redaction, recording) and how the trace is shaped (attributes).
Nothing here imports another layer of the package.
"""
