"""DIT4C compatibility in one place: the original pods' environment variables.

A DIT4C pod names its instance, key, portal and auth helper in ``DIT4C_*``
variables. The listener and the auth helper read them as if they were the
``HOSTMUX_*`` variables below; a ``HOSTMUX_*`` variable (or a flag) wins.

=================================  ==========================  ======================
DIT4C variable                     listener                    auth helper
=================================  ==========================  ======================
DIT4C_INSTANCE_ID                  name and user               instance_id
DIT4C_INSTANCE_PRIVATE_KEY_PKCS1   identity_file               instance_key_file
DIT4C_INSTANCE_JWT_ISS             jwt_iss                     jwt_iss
DIT4C_INSTANCE_JWT_KID             jwt_kid                     jwt_kid
DIT4C_INSTANCE_URI_UPDATE_URL      uri_update_url; its origin  its origin is the
                                   is the portal unless given  portal unless given
DIT4C_INSTANCE_HELPER_AUTH_HOST    target host
DIT4C_INSTANCE_HELPER_AUTH_PORT    target port                 listen (127.0.0.1:PORT)
DIT4C_PORTAL_URL                   portal_url                  portal_url
=================================  ==========================  ======================
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from hostmux.config.layered import with_defaults


def portal_url_from_update_url(update_url: str) -> str:
    """DIT4C derives the portal from the URI update URL: its scheme and host."""
    parts = urlsplit(update_url)
    return f"{parts.scheme}://{parts.netloc}"


def portal_url_from_dit4c(environ: Mapping[str, str]) -> str | None:
    """The portal a DIT4C pod names: DIT4C_PORTAL_URL, else its URI update URL's origin."""
    if portal := environ.get("DIT4C_PORTAL_URL"):
        return portal
    if update := environ.get("DIT4C_INSTANCE_URI_UPDATE_URL"):
        return portal_url_from_update_url(update)
    return None


def listener_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with the original listener's variables as ``HOSTMUX_*`` ones (not overriding)."""
    mapped: dict[str, str] = {}
    if instance := environ.get("DIT4C_INSTANCE_ID"):
        mapped["NAME"] = mapped["USER"] = instance
    for dit4c, ours in (
        ("DIT4C_INSTANCE_PRIVATE_KEY_PKCS1", "IDENTITY_FILE"),
        ("DIT4C_INSTANCE_JWT_ISS", "JWT_ISS"),
        ("DIT4C_INSTANCE_JWT_KID", "JWT_KID"),
        ("DIT4C_INSTANCE_URI_UPDATE_URL", "URI_UPDATE_URL"),
    ):
        if value := environ.get(dit4c):
            mapped[ours] = value
    if portal := portal_url_from_dit4c(environ):
        mapped["PORTAL_URL"] = portal
    host = environ.get("DIT4C_INSTANCE_HELPER_AUTH_HOST")
    port = environ.get("DIT4C_INSTANCE_HELPER_AUTH_PORT")
    if host and port:
        mapped["TARGET"] = f"{host}:{port}"
    return with_defaults(environ, mapped)


def authhelper_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with a DIT4C pod's variables as the auth helper's ``HOSTMUX_*`` ones."""
    mapped: dict[str, str] = {}
    if instance := environ.get("DIT4C_INSTANCE_ID"):
        mapped["INSTANCE_ID"] = instance
    for dit4c, ours in (
        ("DIT4C_INSTANCE_PRIVATE_KEY_PKCS1", "INSTANCE_KEY_FILE"),
        ("DIT4C_INSTANCE_JWT_ISS", "JWT_ISS"),
        ("DIT4C_INSTANCE_JWT_KID", "JWT_KID"),
    ):
        if value := environ.get(dit4c):
            mapped[ours] = value
    if port := environ.get("DIT4C_INSTANCE_HELPER_AUTH_PORT"):
        mapped["LISTEN"] = f"127.0.0.1:{port}"
    if portal := portal_url_from_dit4c(environ):
        mapped["PORTAL_URL"] = portal
    return with_defaults(environ, mapped)
