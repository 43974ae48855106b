"""CPython's own SyncManager server, for Rust clients to measure against: serves on
127.0.0.1 (a free port), prints HOST:PORT, and exits when its stdin closes (or after
10 minutes at most).
Usage: python3 mp_manager_server.py AUTHKEY"""
import os
import sys
import threading
from multiprocessing.managers import SyncManager


def main():
    server = SyncManager(address=("127.0.0.1", 0), authkey=sys.argv[1].encode()).get_server()
    print("%s:%d" % server.address, flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    threading.Timer(600, lambda: os._exit(1)).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
