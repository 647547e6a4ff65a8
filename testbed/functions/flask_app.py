#!/usr/bin/env python3
"""An http-executor function on Flask (a real framework, Debian's python3-flask), served on
$PORT by Werkzeug: what a user's Flask function answers must reach its caller as it is.

POST /        -> 200, the body back, two Set-Cookie headers and an X-Seen header
POST /go      -> 302 to /elsewhere (a redirect is the function's answer, not followed)
GET  /elsewhere -> 200 "followed" (reached only if someone follows the redirect)
POST /headers -> 200, JSON of the proxy headers the function got (X-Forwarded-*, X-Call-Id)
POST /invalid -> 422, a JSON error document with its own header (as FastAPI's validation
                 errors): an error answer reaches the caller as it is
"""
import os

from flask import Flask, Response, jsonify, redirect, request

app = Flask(__name__)


@app.post("/")
def echo():
    r = Response(request.get_data(), status=200, content_type="text/plain")
    r.set_cookie("a", "1")
    r.set_cookie("b", "2")
    r.headers["X-Seen"] = request.headers.get("X-Test", "")
    return r


@app.post("/go")
def go():
    return redirect("/elsewhere", code=302)


@app.route("/elsewhere", methods=["GET", "POST"])
def elsewhere():
    return "followed"


@app.post("/headers")
def headers():
    names = ["X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Call-Id"]
    return jsonify({n: request.headers.get(n) for n in names})


@app.post("/invalid")
def invalid():
    r = jsonify({"detail": [{"loc": ["body", "n"], "msg": "field required"}]})
    r.status_code = 422
    r.headers["X-Validation"] = "failed"
    return r


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
