"""Router-to-router forwarding: any router of a cluster serves any name (issue 17, step 3).

Built only when ``cluster_listen`` is set (with a ``registry``); the embedded
default never imports this package. Modules inside:

- ``routes``: ``RouteCache``, name -> the registry's ``Route`` (or "unknown"),
  bounded, dropped on the registry's invalidations (pure);
- ``identity``: which router ids a cluster certificate speaks for (pure), and
  the link's TLS contexts;
- ``wire``: the link's vocabulary: the request a sender makes, the holder's
  answers and their ``X-Hostmux-Error`` codes (pure);
- ``link``: the sender's side: a pool of persistent mutual-TLS connections
  per peer, each forwarded stream one full-duplex HTTP/1.1 exchange
  (``LinkStream``, a ``ByteStream``);
- ``peer_server``: the holder's side: checks each stream against its own
  tunnels and pipes it to an SSH channel;
- ``forwarding``: ``Forwarder``, the gateway's answer for a name this router
  holds no tunnel for, and the task that keeps the route cache honest.

Only this package imports the link's TLS code (``keys.cluster_tls_contexts``).
"""
