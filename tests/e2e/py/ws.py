"""WebSocket helpers for the end-to-end tests (the `websockets` package).

    ws.py serve PORT_FILE       echo server on 127.0.0.1, a free port written to PORT_FILE
    ws.py echo URL N            sends N messages through URL, checks each echo, prints "ok N"
"""
import sys


def serve(port_file):
    from websockets.sync.server import serve as ws_serve

    def echo(ws):
        for message in ws:
            ws.send(message)

    with ws_serve(echo, "127.0.0.1", 0) as server:
        with open(port_file + ".tmp", "w") as f:
            f.write(str(server.socket.getsockname()[1]))
        import os
        os.rename(port_file + ".tmp", port_file)
        server.serve_forever()


def echo(url, n):
    from websockets.sync.client import connect

    with connect(url, open_timeout=10, close_timeout=5) as ws:
        for i in range(n):
            message = f"message {i} " + "x" * (i % 50)
            ws.send(message)
            answer = ws.recv(timeout=10)
            if answer != message:
                print(f"message {i}: sent {message!r}, got {answer!r}")
                sys.exit(1)
    print(f"ok {n}")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        echo(sys.argv[2], int(sys.argv[3]))
