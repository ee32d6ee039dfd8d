"""HTTP-01: the answers the HTTP front door gives while an order is pending.

The CA asks ``http://HOST/.well-known/acme-challenge/TOKEN`` and expects the
key authorization. Only the names being ordered are answered here (any other
host's request is routed as usual, so an app behind a tunnel keeps its own
``/.well-known``); an unknown token is a 404. At most the tokens of one order
are held at a time (one per name), so this table stays small.
"""

from __future__ import annotations

from hostmux.http1 import Page, status_page

ACME_CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"


class HttpChallenges:
    """Pending HTTP-01 answers by (host, token), and the hosts they are for."""

    def __init__(self, hosts: frozenset[str]) -> None:
        self.hosts = hosts
        self._answers: dict[tuple[str, str], bytes] = {}

    def __repr__(self) -> str:
        return f"<HttpChallenges pending={len(self._answers)}>"

    def add(self, host: str, token: str, key_authorization: str) -> None:
        self._answers[(host, token)] = key_authorization.encode("ascii")

    def remove(self, host: str, token: str) -> None:
        self._answers.pop((host, token), None)

    def page(self, host: str, target: bytes) -> Page | None:
        """The answer for a request to ``host`` for ``target``; None: not ACME's to answer."""
        if host not in self.hosts or not target.startswith(ACME_CHALLENGE_PREFIX):
            return None
        token = target[len(ACME_CHALLENGE_PREFIX) :].split(b"?")[0]
        body = self._answers.get((host, token.decode("ascii", "replace")))
        if body is None:
            return status_page(404, "no such ACME challenge", close=False)
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        return Page(status=200, headers=headers, body=body)
