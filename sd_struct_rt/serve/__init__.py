"""``sdrt serve``: an HTTP service on Ray Serve with in-flight batching (``policy``, ``batcher``, ``app``)."""
