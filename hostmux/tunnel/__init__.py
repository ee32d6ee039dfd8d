"""SSH byte transports both ends use: coalescing TCP, SSH over WebSocket, the asyncssh patch."""
