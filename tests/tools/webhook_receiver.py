"""A webhook receiver for tests/http.rs: answers 503 to its first N requests, then 200, and
appends every request it got to a JSON-lines log (status it answered, Idempotency-Key,
X-Darkroom-Signature, the raw body and the parsed body).

usage: webhook_receiver.py PORT FAILURES LOG
"""
import http.server
import json
import sys

port, failures, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
seen = 0


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length).decode("utf-8")
        seen += 1
        status = 503 if seen <= failures else 200
        record = {
            "status": status,
            "key": self.headers.get("Idempotency-Key"),
            "event": self.headers.get("X-Darkroom-Event"),
            "signature": self.headers.get("X-Darkroom-Signature"),
            "raw": raw,
            "body": json.loads(raw),
        }
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
