"""An HTTP/1.1 backend with the keep-alive edges real servers have.

    h1_backend.py PORT_FILE IDLE_SECONDS

Listens on 127.0.0.1 (a free port, written to PORT_FILE) and closes a
keep-alive connection that stays idle for IDLE_SECONDS, as nginx's
`keepalive_timeout` or gunicorn's `--keep-alive` do.

    GET /conn       the serial number of the connection the request came on
    POST /conn      the same, after reading the body
    GET /close/N    N letters (a-z repeated), no Content-Length, then the
                    server closes the connection (a close-delimited body)
    GET /closed     how many idle connections the server has closed so far
"""
import os
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

serial = 0
idle_closed = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        global serial
        with lock:
            serial += 1
            self.conn_id = serial
        super().setup()

    def log_message(self, *args):
        pass

    def log_error(self, format, *args):
        # BaseHTTPRequestHandler says so when an idle connection times out.
        global idle_closed
        if "timed out" in format % args:
            with lock:
                idle_closed += 1

    def do_GET(self):
        if self.path == "/conn":
            body = str(self.conn_id).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/closed":
            body = str(idle_closed).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/close/"):
            n = int(self.path.split("/")[2])
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            data = bytes(97 + i % 26 for i in range(n))
            for i in range(0, n, 16384):
                self.wfile.write(data[i:i + 16384])
                self.wfile.flush()
            self.close_connection = True
        else:
            self.send_error(404)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/conn":
            self.do_GET()
        else:
            self.send_error(404)


def main(port_file, idle):
    Handler.timeout = float(idle)  # an idle keep-alive socket times out and closes
    socketserver.TCPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
