"""A Flask app that says which instance answered: the classic backend of
the "nginx in front of two Flask apps" tutorial.

    python3 app.py NAME PORT
"""
import sys

from flask import Flask, request

name = sys.argv[1] if len(sys.argv) > 1 else "app"
port = int(sys.argv[2]) if len(sys.argv) > 2 else 5001

app = Flask(name)


@app.route("/", defaults={"path": ""})
@app.route("/<path:path>")
def hello(path):
    return f"Hello from {name}! (you asked for /{path}, via {request.headers.get('X-Forwarded-For', 'nobody')})\n"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=port)
