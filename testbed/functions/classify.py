#!/usr/bin/env python3
"""An OpenFaaS classic-watchdog function (exec executor): the body on stdin, the output on
stdout, the call's details in Http_* variables.

Input {"text": "..."}; output the text, its word count, and "kind": "long" (more than three
words) or "short", for the pipeline's rules to branch on. Test hooks in the text: "crash"
exits 3, "hang" sleeps past any timeout, "garbage" writes bytes that are not JSON.
"""
import json
import os
import sys
import time

body = sys.stdin.buffer.read()
try:
    text = json.loads(body).get("text", "")
except (ValueError, AttributeError):
    text = body.decode("utf-8", "replace")
if text == "crash":
    sys.stderr.write("classify: asked to crash\n")
    sys.exit(3)
if text == "hang":
    time.sleep(600)
if text == "garbage":
    sys.stdout.buffer.write(b"\xff\xfe not json \x00")
    sys.exit(0)
words = len(text.split())
json.dump(
    {
        "text": text,
        "words": words,
        "kind": "long" if words > 3 else "short",
        "method": os.environ.get("Http_Method", ""),
        "path": os.environ.get("Http_Path", ""),
        "query": os.environ.get("Http_Query", ""),
        "content_type": os.environ.get("Http_Content_Type", ""),
        "pid": os.getpid(),
    },
    sys.stdout,
)
