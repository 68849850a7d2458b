"""The Python side of the benchmark: a server thread and a client in one CPython process, every
request on a connection of its own, opened a few calls deep (as an application's code would
be). `python3 python-churn.py CONNECTIONS`: waits for a line on stdin, makes the connections,
prints `rate CONN_PER_S`."""
import socket
import sys
import threading
import time


def serve(listener):
    while True:
        connection, _ = listener.accept()
        connection.close()


def open_connection(address):
    return socket.create_connection(address)


def do_request(address):
    connection = open_connection(address)
    connection.close()


def main():
    connections = int(sys.argv[1])
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    address = listener.getsockname()
    sys.stdin.readline()
    start = time.monotonic()
    for _ in range(connections):
        do_request(address)
    print(f"rate {connections / (time.monotonic() - start):.1f}", flush=True)


main()
