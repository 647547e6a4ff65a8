#!/usr/bin/env python3
"""An equivalent of OpenWhisk's Python action runtime (`actionproxy.py` with its Python runner,
from apache/openwhisk-runtime-docker and openwhisk-runtime-python), which no registry reachable
here offers: the same Flask routes served by gevent's WSGIServer on 0.0.0.0:$FLASK_PROXY_PORT
(it does not read $PORT), the same answers and status codes, and the same log sentinels. The
executor must cope with what that server does: it listens on every interface, and it answers
on kept-alive connections the way gevent does.

POST /init {"value": {"code", "main", "env", ...}}: 200 "OK" once; 403 on a second init; 502
  when the code does not load.
POST /run {"value": {...}, "activation_id", "deadline", ...}: sets __OW_* from the other keys,
  calls main(value); a dictionary comes back as JSON with 200; anything else is 502 "The action
  did not return a dictionary."; an exception is 502 with its text.
"""
import json
import os
import sys

import flask
from gevent.pywsgi import WSGIServer

LOG_SENTINEL = "XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX"

proxy = flask.Flask(__name__)
proxy.debug = False
proxy.initialized = False
action = {}


def complete(response):
    sys.stdout.write("%s\n" % LOG_SENTINEL)
    sys.stdout.flush()
    sys.stderr.write("%s\n" % LOG_SENTINEL)
    sys.stderr.flush()
    return response


def error(msg, code):
    response = flask.jsonify({"error": msg})
    response.status_code = code
    return complete(response)


@proxy.route("/init", methods=["POST"])
def init():
    if proxy.initialized:
        return error("Cannot initialize the action more than once.", 403)
    message = flask.request.get_json(force=True, silent=True)
    value = message.get("value", {}) if isinstance(message, dict) else {}
    if not isinstance(value, dict):
        flask.abort(404)
    try:
        for k, v in (value.get("env") or {}).items():
            os.environ[k] = str(v)
        scope = {"__name__": "__main__"}
        exec(compile(value.get("code", ""), "__main__", "exec"), scope)
        action["main"] = scope[value.get("main") or "main"]
    except Exception as e:  # noqa: BLE001
        sys.stderr.write("%s\n" % e)
        return error("The action failed to generate or locate a binary. See logs for details.", 502)
    proxy.initialized = True
    return ("OK", 200)


@proxy.route("/run", methods=["POST"])
def run():
    message = flask.request.get_json(force=True, silent=True)
    args = message.get("value", {}) if isinstance(message, dict) else {}
    if not isinstance(args, dict):
        return error("The action did not receive a dictionary as an argument.", 404)
    if "main" not in action:
        return error("The action failed to locate a binary. See logs for details.", 502)
    for k, v in (message or {}).items():
        if k != "value":
            os.environ["__OW_" + k.upper()] = v if isinstance(v, str) else json.dumps(v)
    try:
        result = action["main"](args)
    except Exception as e:  # noqa: BLE001
        return error("An error has occurred: %s" % e, 502)
    if not isinstance(result, dict):
        return error("The action did not return a dictionary.", 502)
    response = flask.jsonify(result)
    response.status_code = 200
    return complete(response)


if __name__ == "__main__":
    port = int(os.getenv("FLASK_PROXY_PORT", "8080"))
    WSGIServer(("0.0.0.0", port), proxy, log=None).serve_forever()
