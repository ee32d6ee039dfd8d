"""``workers = N``: one machine's cores as N routers of one cluster (issue 17, point 3).

- ``plan``: the pure rules (how many, their ids and flags, the restart back-off);
- ``sockets``: listening sockets bound once by the supervisor, adopted by workers;
- ``cluster_files``: the workers' own cluster CA when the operator gave none;
- ``supervisor``: the process that starts, restarts and stops the workers;
- ``worker``: a worker's watch on its supervisor.

Importing this package loads neither asyncssh nor the router's server: the
supervisor stays a small process.
"""
