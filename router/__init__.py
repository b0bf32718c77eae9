"""Least-cost router: priority queue, routing, dispatch to carrier binds, message store."""
