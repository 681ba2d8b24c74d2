"""The local ends of bench/events-out.sh, with Python's standard library.

    events-out.py receiver PORT   # answers 204 to every webhook batch; GET /count, /stats, /reset
    events-out.py hook PORT       # answers {"action": "allow"} to every publish hook call
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
state = {"events": 0, "batches": 0, "first": None, "last": None}


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The answer's head and body are two writes: without this, Nagle holds
    # the body until herald acknowledges the head (tens of milliseconds).
    disable_nagle_algorithm = True

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        events = len(json.loads(body)["events"])
        now = time.monotonic()
        with lock:
            state["events"] += events
            state["batches"] += 1
            state["first"] = state["first"] or now
            state["last"] = now
        self.reply(204, b"")

    def do_GET(self):  # noqa: N802
        with lock:
            if self.path == "/reset":
                state.update(events=0, batches=0, first=None, last=None)
                answer = "ok"
            elif self.path == "/count":
                answer = str(state["events"])
            else:
                span = (state["last"] or 0) - (state["first"] or 0)
                rate = state["events"] / span if span > 0 else 0
                answer = f"events={state['events']} batches={state['batches']} events/s={rate:.0f}"
        self.reply(200, answer.encode())

    def reply(self, status, body):
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


class Hook(Receiver):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["content-length"]))
        self.reply(200, b'{"action": "allow"}')


if __name__ == "__main__":
    handler = Receiver if sys.argv[1] == "receiver" else Hook
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), handler).serve_forever()
