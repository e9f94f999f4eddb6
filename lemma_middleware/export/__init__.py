"""Where traces go: the destinations read from the environment or arguments, the Langfuse
client built for them, the tracer provider, and the export side's span processors.
"""
