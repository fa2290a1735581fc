"""A hello-world Flask app, served by the API's own gunicorn configuration as a baseline:

gunicorn -c backend/gunicorn_conf.py "bench.hello_app:app"
"""

from __future__ import annotations

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/hello")
def hello():
    return jsonify({"hello": "world"})
