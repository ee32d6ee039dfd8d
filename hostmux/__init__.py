"""hostmux's shared core: what the router, the listener and the auth helper stand on.

* ``hostmux.http1``  — the sans-IO HTTP/1.1 core on llhttp (events, connection,
  framing, headers, checks, pages, WebSocket frame edges);
* ``hostmux.relay``  — the asyncio shell that relays one browser connection to
  any byte stream (the router's SSH channels, the auth helper's app);
* ``hostmux.tunnel`` — the SSH byte transports both ends use (coalescing TCP,
  SSH over WebSocket, the one asyncssh patch);
* ``hostmux.config`` — one typed config object from TOML, ``HOSTMUX_*`` and
  flags, with each option's range declared where it is declared;
* small modules: ``names``, ``log``, ``process``, ``limits``, ``http_client``,
  ``dit4c``.

The components import this package and ``keys``, never each other.
"""
