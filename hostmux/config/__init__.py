"""One typed config object from three layers: TOML file, ``HOSTMUX_*`` env, flags."""
