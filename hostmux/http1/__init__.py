"""The sans-IO HTTP/1.1 core on llhttp (httptools): no sockets, no awaits."""
