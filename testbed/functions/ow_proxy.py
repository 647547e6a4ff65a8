#!/usr/bin/env python3
"""A small OpenWhisk action proxy (what OpenWhisk's Python runtime image runs), for the
openwhisk executor: listens on $PORT; POST /init {"value": {"code", "main", ...}} loads the
action's code once; POST /run {"value": ..., "activation_id", "deadline", ...} sets the
__OW_* variables and calls main(value). A dictionary comes back as JSON. This proxy passes any
other result through as text, unlike OpenWhisk's, so that the executor's check of what an
action returns can be tested.
"""
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

action = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without this, Nagle holds the body back until the
    # client's delayed ACK (40 ms on Linux).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self, status, body, ctype="application/json"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        msg = json.loads(self.rfile.read(n) or b"{}")
        if self.path == "/init":
            if "main" in action:
                return self.answer(403, json.dumps({"error": "Cannot initialize the action more than once."}))
            value = msg.get("value", {})
            scope = {}
            try:
                exec(value.get("code", ""), scope)
                action["main"] = scope[value.get("main") or "main"]
            except Exception as e:  # noqa: BLE001
                return self.answer(502, json.dumps({"error": f"Initialization has failed: {e}"}))
            return self.answer(200, json.dumps({"ok": True}))
        if self.path == "/run":
            if "main" not in action:
                return self.answer(500, json.dumps({"error": "The action was not initialized."}))
            for k, v in msg.items():
                if k != "value":
                    os.environ["__OW_" + k.upper()] = str(v)
            try:
                result = action["main"](msg.get("value", {}))
            except Exception as e:  # noqa: BLE001
                return self.answer(502, json.dumps({"error": f"An error has occurred: {e}"}))
            if isinstance(result, dict):
                return self.answer(200, json.dumps(result))
            return self.answer(200, str(result), "text/plain")
        self.answer(404, json.dumps({"error": "no such route"}))


HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
