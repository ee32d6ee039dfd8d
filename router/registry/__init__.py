"""The route registry: which owner holds each name, and which tunnels (on which routers) serve it.

``model`` has the vocabulary and the ``RouteRegistry`` protocol; ``memory`` is the
one-process implementation (no Redis); ``redis_store`` is the cluster one, whose
atomic rules live as Lua in ``scripts``; ``renewal`` keeps a router's leases alive.
"""
