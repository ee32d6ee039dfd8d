"""The router's admin API and status page (``admin_listen``), and its command-line client.

Modules: ``token`` (the bearer token: read, or made once in state_dir),
``http`` (a small HTTP/1.1 server on h11 for the admin listener), ``api``
(the routes, the JSON shapes and the audit log lines), ``local`` (what one
router without a registry does: its own tunnels, blocks in a state_dir file),
``cluster`` (with a registry: tunnels listed cluster-wide from the snapshots
each router writes there, kicks and block changes sent on a pub/sub channel,
blocks kept there), ``client`` (``hostmux-router tunnels|kick|block|unblock|
blocks|drain``), and the page's static files (``status.html``, ``status.js``,
``status.css``). See docs/operations.md for the API reference.
"""
