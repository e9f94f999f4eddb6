"""One traced request: its lifecycle (:mod:`.trace`), the handler-side API (:mod:`.context`)
and the span processors that keep what the request's code starts in its tree (:mod:`.scope`).
"""
