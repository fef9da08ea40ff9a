"""``sdrt serve``: an HTTP service on Ray Serve with in-flight batching (``batcher``, ``app``)."""

POLICIES = ("inflight", "static", "single")  # see batcher
