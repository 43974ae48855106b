"""Python clients of two manager servers, in the same run: the multiproc manager server
(address and authkey given) and CPython's own SyncManager server (started here), both over
TCP on 127.0.0.1, each used by a stock SyncManager client in this process.

Figures (one per repetition r, the median of its operations, alternating servers so both
see the same machine noise):
  py.interop.ours.set.<r>     us, d['k'] = i through a DictProxy, multiproc server
  py.interop.ours.get.<r>     us, d['k'], multiproc server
  py.interop.cpython.set.<r>  us, same, CPython's server
  py.interop.cpython.get.<r>  us, same, CPython's server
  py.interop.<server>.raw.<r>  us, the same set as pre-pickled bytes on a connection of its
                              own (send_bytes + recv_bytes): the client's transport floor
Usage: python3 mp_manager_interop.py HOST:PORT AUTHKEY [CLIENT_CPU SERVER_CPU]
With CPUs ('-' for none), this process runs on CLIENT_CPU and CPython's server on SERVER_CPU
(the multiproc server was placed by the caller)."""
import os
import pickle
import statistics
import sys
import time
from multiprocessing.connection import Client
from multiprocessing.managers import SyncManager, dispatch

from _common import fmt, reps


def median_us(fn, n):
    clk = time.perf_counter_ns
    for i in range(min(200, n)):
        fn(i)
    out = []
    for i in range(n):
        t0 = clk()
        fn(i)
        out.append((clk() - t0) / 1e3)
    return statistics.median(out)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    key = sys.argv[2].encode()
    cpu = lambda i: int(sys.argv[i]) if len(sys.argv) > i and sys.argv[i] != "-" else None
    client_cpu, server_cpu = cpu(3), cpu(4)
    ours = SyncManager(address=(host, int(port)), authkey=key)
    ours.connect()
    theirs = SyncManager(address=("127.0.0.1", 0), authkey=key)
    # The server process (and every thread it starts) inherits the CPU set at its start.
    if server_cpu is not None:
        os.sched_setaffinity(0, {server_cpu})
    theirs.start()
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    try:
        dicts = {"ours": ours.dict(), "cpython": theirs.dict()}
        raw = {}
        for name, mgr in (("ours", ours), ("cpython", theirs)):
            c = Client(mgr.address, authkey=key)
            dispatch(c, None, "accept_connection", ("raw",))
            req = pickle.dumps((dicts[name]._id, "__setitem__", ("k", 1), {}), protocol=4)
            raw[name] = (c, req)
        n = reps(5000, 500)
        for r in range(reps(5, 3)):
            for name, d in dicts.items():
                c, req = raw[name]

                def rt(i, c=c, req=req):
                    c.send_bytes(req)
                    c.recv_bytes()

                print(f"py.interop.{name}.raw.{r} {fmt(median_us(rt, n))} us", flush=True)
                def dset(i, d=d):
                    d["k"] = i

                def dget(i, d=d):
                    return d["k"]

                print(f"py.interop.{name}.set.{r} {fmt(median_us(dset, n))} us", flush=True)
                print(f"py.interop.{name}.get.{r} {fmt(median_us(dget, n))} us", flush=True)
    finally:
        theirs.shutdown()


if __name__ == "__main__":
    main()
