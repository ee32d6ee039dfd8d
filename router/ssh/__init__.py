"""The router's asyncssh adapter: the only part of the router that imports asyncssh."""
