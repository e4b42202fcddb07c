"""A python-socketio client driven over its standard streams, for the tests in
api/tests/socketio.rs: the same line protocol as driver.cjs (one JSON command per line in, one
JSON report per line out)."""

import json
import sys
import threading
from urllib.parse import urlencode

import socketio

lock = threading.Lock()


def report(line):
    with lock:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


client = socketio.Client(reconnection=False)


@client.event
def connect():
    report({"connected": client.transport()})


@client.event
def connect_error(data):
    message = data.get("message") if isinstance(data, dict) else data
    report({"connect_error": message})


@client.event
def disconnect(reason=None):
    report({"disconnected": str(reason)})


@client.on("*")
def any_event(event, *args):
    report({"event": event, "args": list(args)})


def connect_to(url, transports=None, auth=None, query=None, **_):
    if query:
        url = f"{url}?{urlencode(query)}"
    try:
        client.connect(url, auth=auth, transports=transports, wait_timeout=10)
    except socketio.exceptions.ConnectionError as error:
        # The connect_error handler has reported the server's refusal already.
        if not str(error).startswith("One or more namespaces failed to connect"):
            report({"connect_error": str(error)})


def emit(name, args, ack_id):
    def acknowledged(*reply):
        report({"ack": ack_id, "args": list(reply)})

    client.emit(name, tuple(args), callback=None if ack_id is None else acknowledged)


for line in sys.stdin:
    command = json.loads(line)
    if "connect" in command:
        threading.Thread(target=connect_to, kwargs=command["connect"], daemon=True).start()
    elif "emit" in command:
        emit(command["emit"], command.get("args", []), command.get("id"))
    elif command.get("disconnect"):
        client.disconnect()
