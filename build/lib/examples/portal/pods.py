"""What a pod is started with: the original DIT4C environment of an instance.

In DIT4C the scheduler starts each instance's pod with these variables, taken
from what the portal returned when the instance was created (its id, key, key
id and URL-update endpoint); ``hostmux-listener`` and ``hostmux-authhelper``
read them as they are. The demo and the tests start pods the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def instance_environment(instance: Mapping[str, str], key_file: Path) -> dict[str, str]:
    """The DIT4C_INSTANCE_* variables for ``instance`` (as the portal's create call
    returned it), whose private key was written to ``key_file``."""
    return {
        "DIT4C_INSTANCE_ID": instance["id"],
        "DIT4C_INSTANCE_PRIVATE_KEY_PKCS1": str(key_file),
        "DIT4C_INSTANCE_JWT_ISS": instance["id"],
        "DIT4C_INSTANCE_JWT_KID": instance["kid"],
        "DIT4C_INSTANCE_URI_UPDATE_URL": instance["uri_update_url"],
    }
