#!/usr/bin/env python3
"""An of-watchdog http-mode function (http executor): a warm HTTP server on $PORT.

POST a JSON {"text": ...}: answers {"text": TEXT IN CAPITALS, "served_by": pid, "calls": n}
as application/json. Test hooks in the text: "crash" exits the server, "hang" never answers,
"garbage" answers with bytes that are not HTTP, "teapot" answers 418.
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

calls = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without this, Nagle holds the body back until the
    # client's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_POST(self):
        global calls
        calls += 1
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        try:
            doc = json.loads(body)
            text = doc.get("text", "") if isinstance(doc, dict) else str(doc)
        except ValueError:
            text = body.decode("utf-8", "replace")
        if text == "crash":
            os._exit(1)
        if text == "hang":
            time.sleep(600)
        if text == "garbage":
            self.wfile.write(b"\x00\x01 this is not HTTP\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        status = 418 if text == "teapot" else 200
        out = json.dumps(
            {
                "text": text.upper(),
                "served_by": os.getpid(),
                "calls": calls,
                "path": self.path,
            }
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Shouted", "yes")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST


port = int(os.environ.get("PORT", "5000"))
server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
sys.stderr.write(f"shout: listening on {port}\n")
server.serve_forever()
