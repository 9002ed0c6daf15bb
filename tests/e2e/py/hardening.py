"""Clients for the hardening regression tests (tests/e2e/hardening/).

Each mode talks to a proxy on 127.0.0.1, does one scripted exchange, and
prints one JSON object on stdout with what it saw. Every mode bounds its own
run time (the WAIT arguments), so a proxy that never answers makes the mode
report "timed out" instead of hanging the test.

    hardening.py h2-idle PORT WAIT
        h2c (prior knowledge): one GET /, then idle, answering the proxy's
        PINGs, for up to WAIT seconds. {"status", "goaway", "closed",
        "idle_for"}: whether a GOAWAY came, whether the proxy closed the
        connection, and after how long of idling.

    hardening.py h2-request PORT SPEC_JSON
        h2c requests, one after the other on one connection. SPEC_JSON:
        {"requests": [{"headers": [[name, value], ...], "data": ["chunk", ...]}]}
        Header fields are sent exactly as listed (no validation, no
        normalisation: repeated fields stay repeated). A request without
        "data" ends with its HEADERS; with it, DATA frames follow, with no
        content-length unless the headers carry one. Prints {"responses":
        [{"status", "headers", "body", "reset"}], "error"}.

    hardening.py h2-zero-window PORT PATH WAIT
        h2c with SETTINGS_INITIAL_WINDOW_SIZE = 0, GET PATH, then waits up to
        WAIT seconds without ever opening the window. {"status", "reset",
        "ended", "goaway", "closed", "data"}: "ended" is a complete body.

    hardening.py h2-expect PORT WAIT
        POST /sha256 with `expect: 100-continue` and content-length 5,
        HEADERS without END_STREAM; waits up to WAIT seconds for an interim
        100 before sending "hello". {"interim_before_body", "interim",
        "status", "body"}.

    hardening.py h2-rapid-reset PORT PAIRS PER_WRITE MAX_CONNECTIONS same|split
        Sends PAIRS pairs of HEADERS (a complete GET /) + RST_STREAM(CANCEL),
        PER_WRITE pairs at a time, reconnecting whenever the proxy closes or
        sends GOAWAY, on at most MAX_CONNECTIONS connections. `same`: each
        batch is one write, every HEADERS followed by its RST_STREAM (both
        frames of a pair in the same packet); `split`: the batch's HEADERS
        in one write and its RST_STREAMs in the next, at once.
        {"pairs", "connections", "goaways"}.

    hardening.py ws-idle URL MESSAGES INTERVAL WAIT
        WebSocket through the proxy: MESSAGES echoes, INTERVAL seconds apart
        (traffic keeps the tunnel busy), then idle for up to WAIT seconds.
        {"echoed", "closed", "idle_for"}.

    hardening.py tls-alpn-h1 PORT WAIT
        TLS with ALPN offering only h2, then an HTTP/1.1 request on that
        connection. {"alpn", "received", "closed"}: what the proxy agreed
        on and the first bytes it sent back (latin-1).
"""
import json
import socket
import ssl
import sys
import time


def out(obj):
    print(json.dumps(obj), flush=True)


def h2_conn(initial_window=None):
    import h2.config
    import h2.connection
    import h2.settings

    cfg = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    if initial_window is not None:
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window})
    return conn


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def b(v):
    return v if isinstance(v, bytes) else str(v).encode("latin-1")


def get_headers(port, path="/", method="GET"):
    return [
        (b":method", b(method)),
        (b":scheme", b"http"),
        (b":authority", b(f"127.0.0.1:{port}")),
        (b":path", b(path)),
    ]


class Pump:
    """Reads frames until a condition or a deadline; collects events."""

    def __init__(self, sock, conn):
        self.sock, self.conn = sock, conn
        self.closed = False
        self.goaway = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def step(self, timeout):
        """One read (up to `timeout` seconds); returns the events."""
        import h2.events

        if self.closed:
            return []
        self.flush()
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return []
        except OSError:
            self.closed = True
            return []
        if not data:
            self.closed = True
            return []
        try:
            events = self.conn.receive_data(data)
        except Exception as e:  # a protocol error on the client's side
            self.closed = True
            return [("client-error", str(e))]
        for e in events:
            if isinstance(e, h2.events.ConnectionTerminated):
                self.goaway = True
        self.flush()
        return events


def hdict(headers):
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]


def h2_idle(port, wait):
    import h2.events

    s = connect(port)
    conn = h2_conn()
    p = Pump(s, conn)
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, get_headers(port), end_stream=True)
    status, done = None, False
    deadline = time.monotonic() + 10
    while not done and not p.closed and time.monotonic() < deadline:
        for e in p.step(deadline - time.monotonic()):
            if isinstance(e, h2.events.ResponseReceived):
                status = dict(e.headers).get(b":status", b"").decode()
            if isinstance(e, h2.events.DataReceived):
                conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
    idle_from = time.monotonic()
    deadline = idle_from + wait
    while not p.closed and time.monotonic() < deadline:
        p.step(min(0.2, max(deadline - time.monotonic(), 0.001)))
    idle_for = time.monotonic() - idle_from
    out({"status": status, "goaway": p.goaway, "closed": p.closed, "idle_for": round(idle_for, 3)})


def h2_request(port, spec):
    import h2.events

    spec = json.loads(spec)
    s = connect(port)
    conn = h2_conn()
    p = Pump(s, conn)
    responses = []
    error = None
    for r in spec["requests"]:
        sid = conn.get_next_available_stream_id()
        headers = [(b(k), b(v)) for k, v in r["headers"]]
        data = r.get("data")
        conn.send_headers(sid, headers, end_stream=not data)
        for i, chunk in enumerate(data or []):
            conn.send_data(sid, b(chunk), end_stream=i == len(data) - 1)
        resp = {"status": None, "headers": [], "body": "", "reset": None}
        body = b""
        deadline = time.monotonic() + 10
        done = False
        while not done and not p.closed and time.monotonic() < deadline:
            for e in p.step(deadline - time.monotonic()):
                sid_e = getattr(e, "stream_id", None)
                if isinstance(e, h2.events.ResponseReceived) and sid_e == sid:
                    resp["headers"] = hdict(e.headers)
                    resp["status"] = int(dict(e.headers).get(b":status", b"0"))
                elif isinstance(e, h2.events.DataReceived) and sid_e == sid:
                    body += e.data
                    conn.acknowledge_received_data(e.flow_controlled_length, sid)
                elif isinstance(e, h2.events.StreamEnded) and sid_e == sid:
                    done = True
                elif isinstance(e, h2.events.StreamReset) and sid_e == sid:
                    resp["reset"] = int(e.error_code)
                    done = True
        resp["body"] = body.decode("latin-1")
        responses.append(resp)
        if not done:
            error = "closed" if p.closed else "timed out"
            break
    out({"responses": responses, "error": error, "goaway": p.goaway})


def h2_zero_window(port, path, wait):
    import h2.events

    s = connect(port)
    conn = h2_conn(initial_window=0)
    p = Pump(s, conn)
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, get_headers(port, path), end_stream=True)
    status, reset, ended, data = None, False, False, 0
    deadline = time.monotonic() + wait
    while not reset and not ended and not p.closed and time.monotonic() < deadline:
        for e in p.step(min(0.2, max(deadline - time.monotonic(), 0.001))):
            if isinstance(e, h2.events.ResponseReceived):
                status = int(dict(e.headers).get(b":status", b"0"))
            elif isinstance(e, h2.events.DataReceived):
                data += len(e.data)  # never acknowledged: the window stays shut
            elif isinstance(e, h2.events.StreamReset):
                reset = True
            elif isinstance(e, h2.events.StreamEnded):
                ended = True  # a whole body through a zero window: impossible
    out({"status": status, "reset": reset, "ended": ended, "goaway": p.goaway,
         "closed": p.closed, "data": data})


def h2_expect(port, wait):
    import h2.events

    s = connect(port)
    conn = h2_conn()
    p = Pump(s, conn)
    sid = conn.get_next_available_stream_id()
    headers = get_headers(port, "/sha256", "POST") + [
        (b"expect", b"100-continue"),
        (b"content-length", b"5"),
    ]
    conn.send_headers(sid, headers, end_stream=False)
    interim, status, body = [], None, b""
    deadline = time.monotonic() + wait
    while not interim and status is None and not p.closed and time.monotonic() < deadline:
        for e in p.step(min(0.2, max(deadline - time.monotonic(), 0.001))):
            if isinstance(e, h2.events.InformationalResponseReceived):
                interim.append(int(dict(e.headers).get(b":status", b"0")))
            elif isinstance(e, h2.events.ResponseReceived):
                status = int(dict(e.headers).get(b":status", b"0"))
    interim_before_body = bool(interim)
    if status is None and not p.closed:
        conn.send_data(sid, b"hello", end_stream=True)
        deadline = time.monotonic() + 10
        done = False
        while not done and not p.closed and time.monotonic() < deadline:
            for e in p.step(deadline - time.monotonic()):
                if isinstance(e, h2.events.InformationalResponseReceived):
                    interim.append(int(dict(e.headers).get(b":status", b"0")))
                elif isinstance(e, h2.events.ResponseReceived):
                    status = int(dict(e.headers).get(b":status", b"0"))
                elif isinstance(e, h2.events.DataReceived):
                    body += e.data
                    conn.acknowledge_received_data(e.flow_controlled_length, sid)
                elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
    out({
        "interim_before_body": interim_before_body,
        "interim": interim,
        "status": status,
        "body": body.decode("latin-1"),
    })


def h2_rapid_reset(port, pairs, per_write, max_connections, split):
    import h2.errors

    sent, connections, goaways = 0, 0, 0
    while sent < pairs and connections < max_connections:
        try:
            s = connect(port)
        except OSError:
            time.sleep(0.05)
            continue
        connections += 1
        conn = h2_conn()
        p = Pump(s, conn)
        p.step(1.0)  # the proxy's SETTINGS
        while sent < pairs and not p.closed and not p.goaway:
            batch = min(per_write, pairs - sent)
            try:
                ids = []
                for _ in range(batch):
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, get_headers(port, "/"), end_stream=True)
                    if split:
                        ids.append(sid)
                    else:
                        conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
                if split:
                    p.flush()
                    for sid in ids:
                        conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.CANCEL)
            except Exception:
                break  # the library refuses more streams on this connection
            p.flush()
            if p.closed:
                break
            sent += batch
            # Take what the proxy sent (SETTINGS acks, GOAWAY, responses).
            p.step(0.005)
        if p.goaway:
            goaways += 1
        try:
            s.close()
        except OSError:
            pass
    out({"pairs": sent, "connections": connections, "goaways": goaways})


def ws_idle(url, messages, interval, wait):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    echoed = 0
    with ws_connect(url, open_timeout=10, close_timeout=2, ping_interval=None) as ws:
        for i in range(messages):
            m = f"message {i}"
            ws.send(m)
            if ws.recv(timeout=5) != m:
                break
            echoed += 1
            if i + 1 < messages:
                time.sleep(interval)
        idle_from = time.monotonic()
        closed = False
        try:
            ws.recv(timeout=wait)
        except TimeoutError:
            pass
        except ConnectionClosed:
            closed = True
        idle_for = time.monotonic() - idle_from
    out({"echoed": echoed, "closed": closed, "idle_for": round(idle_for, 3)})


def tls_alpn_h1(port, wait):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(connect(port), server_hostname="localhost")
    alpn = s.selected_alpn_protocol()
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    received, closed = b"", False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and len(received) < 4096:
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = s.recv(4096)
        except socket.timeout:
            break
        except (OSError, ssl.SSLError):
            closed = True
            break
        if not data:
            closed = True
            break
        received += data
    out({"alpn": alpn, "received": received.decode("latin-1"), "closed": closed})


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "h2-idle":
        h2_idle(int(args[0]), float(args[1]))
    elif mode == "h2-request":
        h2_request(int(args[0]), args[1])
    elif mode == "h2-zero-window":
        h2_zero_window(int(args[0]), args[1], float(args[2]))
    elif mode == "h2-expect":
        h2_expect(int(args[0]), float(args[1]))
    elif mode == "h2-rapid-reset":
        h2_rapid_reset(int(args[0]), int(args[1]), int(args[2]), int(args[3]), args[4] == "split")
    elif mode == "ws-idle":
        ws_idle(args[0], int(args[1]), float(args[2]), float(args[3]))
    elif mode == "tls-alpn-h1":
        tls_alpn_h1(int(args[0]), float(args[1]))
    else:
        sys.exit(f"unknown mode {mode}")
