"""A webhook receiver for herald: verifies every batch with the Standard
Webhooks library (independent of herald's own code) and prints each event.

    .venv/bin/python receiver.py            # prints "listening PORT", then reads the secret on stdin
    curl -H "Authorization: Bearer $KEY" -d '{"url": "https://you.example/hook"}' \\
        http://127.0.0.1:8080/api/admin/webhooks   # the answer holds the secret, once

Each event is printed as "ID KIND" on stdout; a batch whose signature does
not verify is answered 401 (herald retries it) and said on stderr. With
--count N it exits after N events.
"""

import argparse
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# An event has its id, the one of these that it is, and maybe more fields
# (offlineRecipients), in no promised order.
KINDS = {"message", "edited", "deleted", "reaction", "read", "membership"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=0, help="stop after this many events")
    args = parser.parse_args()
    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_port}", flush=True)
    server.verifier = Webhook(sys.stdin.readline().strip())
    server.seen = 0
    server.count = args.count
    while not server.count or server.seen < server.count:
        server.handle_request()
    return 0


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the standard library's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        try:
            headers = {name.lower(): value for name, value in self.headers.items()}
            batch = self.server.verifier.verify(body, headers)
        except WebhookVerificationError as error:
            print(f"refused a batch: {error}", file=sys.stderr, flush=True)
            self.send_response(401)
            self.end_headers()
            return
        for event in batch["events"]:
            kind = next(key for key in event if key in KINDS)
            print(f"{event['id']} {kind}", flush=True)
            self.server.seen += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_):
        pass


if __name__ == "__main__":
    sys.exit(main())
