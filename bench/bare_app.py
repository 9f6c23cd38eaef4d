"""The baseline: a bare Flask endpoint that signs one RS256 token per request, nothing else.

It is what a team would write as its own "fifty-line token route", and the gateway's miss path
is measured against it under the same gunicorn settings.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from flask import Flask, request

_key = serialization.load_pem_private_key(Path(os.environ["BENCH_KEY_FILE"]).read_bytes(), password=None)
app = Flask(__name__)


@app.post("/sign")
def sign() -> dict[str, str]:
    body = request.get_json()
    claims = {"sub": body["playback_id"], "aud": "v", "exp": int(time.time()) + 3600, "kid": "bench"}
    return {"token": jwt.encode(claims, _key, algorithm="RS256", headers={"kid": "bench"})}
