"""ACME in a cluster: the order lock, pending challenge answers and the certificate in Redis.

Keys, under the registry's prefix (``hostmux:`` by default)::

    PREFIX acme:lock        the token of the router ordering now (SET NX PX; renewed
                            while it orders, released by a compare-and-delete)
    PREFIX acme:http        hash "HOST TOKEN" -> key authorization (HTTP-01), with a TTL
    PREFIX acme:alpn        hash HOST -> key authorization (TLS-ALPN-01), with a TTL
    PREFIX acme:cert        hash chain, key: the certificate every router serves (PEM)

A router that loses its lock (its TTL ran out while it was cut off) finds out
when renewing it; the order it runs is then not the only one, which costs the
CA one more order and nothing else: the certificate stored last wins. Like
``redis_store``, this module alone imports redis; its errors come out as
``RegistryError``.
"""

from __future__ import annotations

import secrets

import redis.asyncio

from router.registry.redis_store import DEFAULT_TIMEOUT_S, _text, _translated

# Compare-and-delete / compare-and-extend: only the holder's token releases or renews.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
CHALLENGE_KINDS = ("http", "alpn")


class AcmeShare:
    """One router's handle on the cluster's ACME keys (its own lock token)."""

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._lock_key = f"{prefix}acme:lock"
        self._cert_key = f"{prefix}acme:cert"
        self._token = secrets.token_hex(16)
        self._unlock = client.register_script(UNLOCK)
        self._renew = client.register_script(RENEW)

    @classmethod
    def from_url(cls, url: str, *, prefix: str) -> AcmeShare:
        client = redis.asyncio.from_url(
            url,
            decode_responses=True,
            socket_timeout=DEFAULT_TIMEOUT_S,
            socket_connect_timeout=DEFAULT_TIMEOUT_S,
        )
        return cls(client, prefix=prefix)

    def __repr__(self) -> str:
        return f"<AcmeShare {self._prefix}acme:*>"

    async def lock(self, ttl_s: float) -> bool:
        """Take the order lock for ``ttl_s``; False while another router holds it."""
        with _translated("acme lock"):
            taken = await self._client.set(
                self._lock_key, self._token, nx=True, px=round(ttl_s * 1000)
            )
        return bool(taken)

    async def renew(self, ttl_s: float) -> bool:
        """Extend the lock; False when it is no longer ours."""
        with _translated("acme lock renewal"):
            kept = await self._renew(keys=[self._lock_key], args=[self._token, round(ttl_s * 1000)])
        return bool(kept)

    async def unlock(self) -> None:
        with _translated("acme unlock"):
            await self._unlock(keys=[self._lock_key], args=[self._token])

    async def put_challenge(self, kind: str, field: str, value: str, ttl_s: float) -> None:
        key = self._challenge_key(kind)
        with _translated("acme challenge"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, field, value)
                pipe.pexpire(key, round(ttl_s * 1000))
                await pipe.execute()

    async def drop_challenge(self, kind: str, field: str) -> None:
        with _translated("acme challenge removal"):
            await self._client.hdel(self._challenge_key(kind), field)

    async def challenges(self, kind: str) -> dict[str, str]:
        with _translated("acme challenges"):
            found = await self._client.hgetall(self._challenge_key(kind))
        return {_text(k): _text(v) for k, v in found.items()}

    async def put_certificate(self, chain_pem: bytes, key_pem: bytes) -> None:
        with _translated("acme certificate"):
            await self._client.hset(
                self._cert_key, mapping={"chain": chain_pem.decode(), "key": key_pem.decode()}
            )

    async def certificate(self) -> tuple[bytes, bytes] | None:
        """The cluster's certificate chain and key (PEM), else None."""
        with _translated("acme certificate"):
            found = await self._client.hgetall(self._cert_key)
        if "chain" not in found or "key" not in found:
            return None
        return _text(found["chain"]).encode(), _text(found["key"]).encode()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _challenge_key(self, kind: str) -> str:
        assert kind in CHALLENGE_KINDS
        return f"{self._prefix}acme:{kind}"
