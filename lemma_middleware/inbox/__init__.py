"""The local Lemma: an OTLP receiver storing spans in SQLite, its web view and the
``lemma-middleware`` command. Nothing on the request path imports it.
"""
