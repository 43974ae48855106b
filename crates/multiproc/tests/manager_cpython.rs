//! CPython's manager protocol, driven by the machine's `python3` with stock
//! `multiprocessing.managers` code: its `SyncManager` clients against our server (every
//! type id and method, blocking calls with time-outs, locks of killed clients, hostile
//! pickles), and sharing objects with Rust clients. Without `python3` these tests skip
//! with a message, except under `CI=true`.
#![cfg(target_os = "linux")]

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multiproc::manager::{Manager, PyValue};

/// The helpers every script starts with: `connect()` to the manager named by argv.
const PRELUDE: &str = r#"
import sys, time, queue, threading, os, multiprocessing
from multiprocessing.managers import SyncManager, BaseManager
# A proxy received inside a value authenticates with the process's key (as with CPython's
# own server).
multiprocessing.current_process().authkey = sys.argv[2].encode()
def connect(cls=SyncManager):
    host, port = sys.argv[1].rsplit(':', 1)
    m = cls(address=(host, int(port)), authkey=sys.argv[2].encode())
    m.connect()
    return m
"#;

/// Runs `script` (after the prelude) against `address` with `key`.
fn spawn_py(py: &str, script: &str, address: &str, key: &str) -> Child {
    Command::new(py)
        .arg("-c")
        .arg(format!("{PRELUDE}\n{script}"))
        .args([address, key])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3")
}

/// Waits (at most 60 s) for `child`: whether it succeeded, its stdout and stderr.
fn finish(mut child: Child) -> (bool, String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for python3") {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(o) = child.stdout.as_mut() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(e) = child.stderr.as_mut() {
        let _ = e.read_to_string(&mut err);
    }
    (status.is_some_and(|s| s.success()), out, err)
}

/// Runs `script` to its end and asserts it succeeded; its stdout.
fn run_ok(py: &str, script: &str, address: &str, key: &str) -> String {
    let (ok, out, err) = finish(spawn_py(py, script, address, key));
    assert!(ok, "python failed:\n{out}\n{err}");
    out
}

fn serve(key: &str) -> (multiproc::manager::Server, String) {
    let server = Manager::serve("127.0.0.1:0", key.as_bytes()).unwrap();
    let address = server.address().to_string();
    (server, address)
}

#[test]
fn the_issue_example_runs_against_our_server() {
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (server, address) = serve("secret");
    let out = run_ok(
        py,
        r#"
m = connect()
d = m.dict(); d["jobs"] = 3; q = m.Queue(); q.put({"id": 1, "path": "/tmp/a"})
lock = m.Lock()
with lock: d["jobs"] += 1
print(d["jobs"], q.get(timeout=5), d.copy(), len(d), "jobs" in d, str(d))
"#,
        &address,
        "secret",
    );
    assert_eq!(
        out.trim(),
        "4 {'id': 1, 'path': '/tmp/a'} {'jobs': 4} 1 True {'jobs': 4}"
    );
    server.shutdown();
}

/// Every SyncManager type id and the methods its proxy exposes, as everyday Python uses
/// them, with the exceptions Python code catches.
const EVERY_TYPE: &str = r#"
m = connect()
# dict
d = m.dict({'a': 1}, b=2)
d['c'] = [1, (2, 3), {4, 5}, frozenset([6]), b'x', bytearray(b'y'), 1.5, None, True, -2**100]
assert d['c'] == [1, (2, 3), {4, 5}, frozenset([6]), b'x', bytearray(b'y'), 1.5, None, True, -2**100], d['c']
assert len(d) == 3 and 'a' in d and 'z' not in d
assert d.get('z') is None and d.get('z', 7) == 7 and d.get('a') == 1
assert d.keys() == ['a', 'b', 'c'] and d.values()[:2] == [1, 2] and d.items()[0] == ('a', 1)
assert sorted(iter(d)) == ['a', 'b', 'c'] and [k for k in d] == ['a', 'b', 'c']
assert d.setdefault('a', 9) == 1 and d.setdefault('n', 9) == 9
assert d.pop('n') == 9 and d.pop('n', 'gone') == 'gone'
d.update({'e': 5}, f=6); d.update([('g', 7)])
assert d.popitem() == ('g', 7)
del d['f']
try: d['missing']; raise SystemExit('no KeyError')
except KeyError as e: assert e.args == ('missing',)
try: del d['missing']; raise SystemExit('no KeyError')
except KeyError: pass
c = d.copy(); assert isinstance(c, dict) and c['e'] == 5
assert str(d).startswith("{'a': 1") and repr(d).startswith('<DictProxy')
d.clear(); assert len(d) == 0 and d.copy() == {}
try: d.popitem(); raise SystemExit('no KeyError')
except KeyError: pass
# list
l = m.list([3, 1, 2])
l.append(4); l.extend([5, 6]); l += [7]
assert len(l) == 7 and l[0] == 3 and l[-1] == 7 and 5 in l
l[0] = 0; assert l[0] == 0
l.insert(1, 'x'); assert l[1] == 'x'; l.remove('x')
assert l.index(2) == 2 and l.count(2) == 1
assert l.pop() == 7 and l.pop(0) == 0
del l[0]; assert l._getvalue() == [2, 4, 5, 6]
l.reverse(); assert l._getvalue() == [6, 5, 4, 2]
l.sort(); assert l._getvalue() == [2, 4, 5, 6]
l.sort(reverse=True); assert l._getvalue() == [6, 5, 4, 2]
assert l + [1] == [6, 5, 4, 2, 1] and l * 2 == [6, 5, 4, 2] * 2 and list(reversed(l)) == [2, 4, 5, 6]
assert l[:] == [6, 5, 4, 2] and l[1:3] == [5, 4] and l[-2:] == [4, 2] and l[::-1] == [2, 4, 5, 6] and l[::2] == [6, 4] and l[5:1:-2] == [2]
l *= 2; assert len(l) == 8
try: l[100]; raise SystemExit('no IndexError')
except IndexError: pass
try: l.index('nope'); raise SystemExit('no ValueError')
except ValueError: pass
assert str(l) == '[6, 5, 4, 2, 6, 5, 4, 2]'
# a proxy inside a value names an object of the same server
d2 = m.dict(); d2['inner'] = l; d2['inner'].append(99); assert l[-1] == 99
# Array, Value, Namespace
a = m.Array('i', [1, 2, 3]); assert len(a) == 3 and a[1] == 2; a[1] = 5; assert a[1] == 5
try: a.append(1); raise SystemExit('array grew')
except AttributeError: pass
v = m.Value('i', 5); assert v.value == 5; v.value = 6; assert v.get() == 6; v.set('x'); assert v.value == 'x'
ns = m.Namespace(x=1); ns.y = 'two'; assert ns.x == 1 and ns.y == 'two'; del ns.x
try: ns.x; raise SystemExit('no AttributeError')
except AttributeError: pass
# Queue, JoinableQueue
q = m.Queue(); q.put(1); q.put_nowait(2); assert q.qsize() == 2 and not q.empty() and not q.full()
assert q.get() == 1 and q.get_nowait() == 2 and q.empty()
try: q.get_nowait(); raise SystemExit('no Empty')
except queue.Empty: pass
bq = m.Queue(1); bq.put('a')
assert bq.full()
try: bq.put('b', block=False); raise SystemExit('no Full')
except queue.Full: pass
jq = m.JoinableQueue(); jq.put('t'); jq.get(); jq.task_done(); jq.join()
try: jq.task_done(); raise SystemExit('no ValueError')
except ValueError: pass
# Lock, RLock, Semaphore, BoundedSemaphore
lk = m.Lock(); assert lk.acquire() and not lk.acquire(False); lk.release()
with lk: pass
try: lk.release(); raise SystemExit('released an unlocked lock')
except RuntimeError: pass
rl = m.RLock(); assert rl.acquire() and rl.acquire(); rl.release(); rl.release()
s = m.Semaphore(2); assert s.acquire() and s.acquire() and not s.acquire(False); s.release(); s.release()
bs = m.BoundedSemaphore(1); bs.acquire(); bs.release()
try: bs.release(); raise SystemExit('over-released')
except ValueError: pass
# Condition, Event, Barrier
cv = m.Condition()
with cv:
    cv.notify(); cv.notify_all()
    assert cv.wait(0.01) is False
    assert cv.wait_for(lambda: True)
try: cv.notify(); raise SystemExit('notify without the lock')
except RuntimeError: pass
ev = m.Event(); assert not ev.is_set(); ev.set(); assert ev.is_set() and ev.wait(1); ev.clear(); assert not ev.is_set()
b = m.Barrier(1); assert b.parties == 1 and b.n_waiting == 0 and not b.broken and b.wait() == 0
b.abort(); assert b.broken
try: b.wait(); raise SystemExit('no BrokenBarrierError')
except threading.BrokenBarrierError: pass
b.reset(); assert not b.broken
print('all ok', m._number_of_objects() > 0 if hasattr(m, '_number_of_objects') else True)
"#;

#[test]
fn every_sync_manager_type_and_method_works_from_python() {
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (server, address) = serve("k1");
    let out = run_ok(py, EVERY_TYPE, &address, "k1");
    assert!(out.starts_with("all ok"), "{out}");
    server.shutdown();
}

/// Blocking calls give up after their time-outs, with Python's results and exceptions,
/// and wake up when another client acts.
#[test]
fn blocking_calls_time_out_and_wake_up() {
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (server, address) = serve("k2");
    let out = run_ok(
        py,
        r#"
m = connect()
def took(f, *a, **k):
    t = time.monotonic()
    try: r = f(*a, **k)
    except Exception as e: r = type(e).__name__
    t = time.monotonic() - t
    # Waited its time (or until woken at 0.2 s), and not much longer even on a busy machine.
    return r, 'waited' if 0.19 <= t < 5 else t
q = m.Queue(1)
print('get', *took(q.get, timeout=0.3))
q.put(1)
print('put', *took(q.put, 2, timeout=0.3))
lk = m.Lock(); lk.acquire()
other = threading.Thread(target=lambda: print('acquire', *took(lk.acquire, True, 0.3)))
other.start(); other.join()
print('wait', *took(m.Event().wait, 0.3))
cv = m.Condition(); cv.acquire(); print('cwait', *took(cv.wait, 0.3)); cv.release()
print('sem', *took(m.Semaphore(0).acquire, True, 0.3))
print('barrier', *took(m.Barrier(2).wait, 0.3))
# Woken by another thread (its own connection).
q2 = m.Queue(); threading.Timer(0.2, q2.put, ('late',)).start()
print('woken', *took(q2.get, timeout=10))
ev = m.Event(); threading.Timer(0.2, ev.set).start()
print('set', *took(ev.wait, 10))
"#,
        &address,
        "k2",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "get Empty waited",
            "put Full waited",
            "acquire False waited",
            "wait False waited",
            "cwait False waited",
            "sem False waited",
            "barrier BrokenBarrierError waited",
            "woken late waited",
            "set True waited",
        ],
        "{out}"
    );
    server.shutdown();
}

/// Two Python processes and this Rust process increment one counter under one manager
/// lock: no increment is lost.
#[test]
fn python_and_rust_clients_share_one_lock_and_counter() {
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (server, address) = serve("k3");
    let mgr = Manager::connect(&address, b"k3").unwrap();
    let lock = mgr.lock().unwrap();
    let counter = mgr.dict::<PyValue, PyValue>().unwrap();
    counter.set(&"n".into(), &PyValue::Int(0)).unwrap();
    mgr.publish("counter_lock", &lock).unwrap();
    mgr.publish("counter", &counter).unwrap();
    let script = r#"
from multiprocessing.managers import AcquirerProxy, DictProxy
SyncManager.register('counter_lock', proxytype=AcquirerProxy)
SyncManager.register('counter', proxytype=DictProxy)
m = connect()
lock, counter = m.counter_lock(), m.counter()
for _ in range(200):
    with lock:
        counter['n'] = counter['n'] + 1
print('done')
"#;
    let a = spawn_py(py, script, &address, "k3");
    let b = spawn_py(py, script, &address, "k3");
    for _ in 0..200 {
        let _g = lock.lock().unwrap();
        let n = counter.get(&"n".into()).unwrap();
        let Some(PyValue::Int(n)) = n else {
            panic!("{n:?}")
        };
        counter.set(&"n".into(), &PyValue::Int(n + 1)).unwrap();
    }
    for child in [a, b] {
        let (ok, out, err) = finish(child);
        assert!(ok && out.trim() == "done", "{out}\n{err}");
    }
    assert_eq!(counter.get(&"n".into()).unwrap(), Some(PyValue::Int(600)));
    drop((lock, counter));
    mgr.shutdown().unwrap();
    drop(server);
}

/// Names published by Rust are type ids for Python (`register(name)`), items travel as
/// `PyValue` both ways, and a proxy Python sends names its object for Rust too.
#[test]
fn rust_published_objects_are_python_typeids() {
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (server, address) = serve("k4");
    let mgr = Manager::connect(&address, b"k4").unwrap();
    let jobs = mgr.queue::<PyValue>().unwrap();
    mgr.publish("get_queue", &jobs).unwrap();
    let rust_dict = mgr.dict::<String, u64>().unwrap();
    rust_dict.set(&"k".into(), &1).unwrap();
    mgr.publish("rust_dict", &rust_dict).unwrap();
    jobs.put(&PyValue::Tuple(vec![
        PyValue::Str("from rust".into()),
        PyValue::Int(7),
    ]))
    .unwrap();
    let out = run_ok(
        py,
        r#"
BaseManager.register('get_queue')
BaseManager.register('rust_dict')
BaseManager.register('nothing')
m = connect(BaseManager)
q = m.get_queue()
print(q.get(timeout=5))
q.put({'id': 1, 'path': '/tmp/a'})
SyncManager.register('get_queue')
sm = connect()
mine = sm.dict({'from': 'python'})
sm.get_queue().put(mine)
sm.get_queue().put(sm.list())
# A stored proxy keeps its object alive (until shutdown, as CPython's server does), so the
# script may end before Rust looks.
try: m.rust_dict().values(); print('decoded')
except TypeError as e: print('TypeError', 'PyValue' in str(e))
try: m.nothing(); print('created?')
except Exception as e: print(type(e).__name__, 'published name' in str(e))
"#,
        &address,
        "k4",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["('from rust', 7)", "TypeError True", "RemoteError True"],
        "{out}"
    );
    let item = jobs.get_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        item,
        PyValue::Dict(vec![
            ("id".into(), PyValue::Int(1)),
            ("path".into(), "/tmp/a".into())
        ])
    );
    // A proxy Python sent names its object for a Rust proxy of the same kind.
    let PyValue::Proxy(sent) = jobs.get_timeout(Duration::from_secs(5)).unwrap() else {
        panic!("not a proxy")
    };
    let theirs: multiproc::manager::DictProxy<PyValue, PyValue> = mgr.adopt(&sent).unwrap();
    assert_eq!(
        theirs.get(&"from".into()).unwrap(),
        Some(PyValue::Str("python".into()))
    );
    let PyValue::Proxy(list) = jobs.get_timeout(Duration::from_secs(5)).unwrap() else {
        panic!("not a proxy")
    };
    assert!(matches!(
        mgr.adopt::<multiproc::manager::DictProxy<PyValue, PyValue>>(&list),
        Err(multiproc::ManagerError::WrongKind { .. })
    ));
    drop((jobs, rust_dict, theirs));
    mgr.shutdown().unwrap();
    drop(server);
}

#[test]
fn a_wrong_key_is_refused_and_the_server_goes_on() {
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (server, address) = serve("right");
    let (ok, out, err) = finish(spawn_py(
        py,
        "import multiprocessing\ntry:\n    connect()\nexcept multiprocessing.AuthenticationError:\n    print('refused')",
        &address,
        "wrong",
    ));
    assert!(ok && out.trim() == "refused", "{out}\n{err}");
    let out = run_ok(
        py,
        "m = connect(); d = m.dict(); d[1] = 2; print(d[1])",
        &address,
        "right",
    );
    assert_eq!(out.trim(), "2");
    server.shutdown();
}

/// A Python client killed while it holds a lock releases it, as a Rust client does.
#[test]
fn a_killed_python_client_releases_its_lock() {
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (server, address) = serve("k5");
    let mgr = Manager::connect(&address, b"k5").unwrap();
    let lock = mgr.lock().unwrap();
    mgr.publish("the_lock", &lock).unwrap();
    let mut holder = spawn_py(
        py,
        r#"
from multiprocessing.managers import AcquirerProxy
SyncManager.register('the_lock', proxytype=AcquirerProxy)
m = connect(); l = m.the_lock(); l.acquire(); print('held', flush=True); time.sleep(60)
"#,
        &address,
        "k5",
    );
    let mut first = [0u8; 5];
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = holder.stdout.take().unwrap();
    std::thread::spawn(move || {
        let r = reader.read_exact(&mut first).map(|_| first);
        let _ = tx.send(r.is_ok() && &first == b"held\n");
    });
    assert!(rx.recv_timeout(Duration::from_secs(30)).unwrap_or(false));
    assert!(!lock.try_acquire().unwrap(), "the Python client holds it");
    holder.kill().unwrap();
    holder.wait().unwrap();
    lock.acquire_timeout(Duration::from_secs(10)).unwrap();
    lock.release().unwrap();
    drop(lock);
    mgr.shutdown().unwrap();
    drop(server);
}

/// Hostile pickles: refused with a `#TRACEBACK` naming what was refused, nothing run,
/// and the server serves the next request.
#[test]
fn hostile_pickles_are_refused_and_nothing_runs() {
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (server, address) = serve("k6");
    let dir = std::env::temp_dir().join(format!("mp-pickle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("marker");
    let script = r#"
from multiprocessing.connection import Client
import pickle
marker = sys.argv[3]
host, port = sys.argv[1].rsplit(':', 1)
def ask(raw, first=True):
    c = Client((host, int(port)), authkey=sys.argv[2].encode())
    c.send_bytes(raw)
    try: kind, body = pickle.loads(c.recv_bytes())
    except EOFError as e: kind, body = 'closed', repr(e)
    c.close()
    return kind, str(body)
class Evil:
    def __reduce__(self): return (os.system, ('touch ' + marker,))
print(*ask(pickle.dumps((None, 'create', ('dict', Evil()), {}))))
print(*ask(b'cos\nsystem\n(S"touch ' + marker.encode() + b'"\ntR.'))
print(*ask(pickle.dumps((None, 'create', ('dict',), {}))[:-5]))
print(*ask(b'\x80\x04' + b']' * 1000000 + b'a' * 999999 + b'.'))
print(*ask(b'\x80\x04\x8e' + (2**62).to_bytes(8, 'little') + b'.'))
print(*ask(pickle.dumps((None, 'create', ('dict', 1 << 200), {}))))
print(*ask(pickle.dumps((None, 'eval', ('1',), {}))))
print(*ask(pickle.dumps((None, 'create', ('list', [bytearray(b'ab'), {1}]), {}), protocol=5)))
m = connect(); d = m.dict(); d['still'] = 'serving'; print(d['still'])
"#;
    let (ok, out, err) = finish(
        Command::new(py)
            .arg("-c")
            .arg(format!("{PRELUDE}\n{script}"))
            .args([address.as_str(), "k6", marker.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(ok, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 9, "{out}");
    assert!(
        lines[0].starts_with("#TRACEBACK")
            && lines[0].contains("global posix.system is not allowed"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("global os.system is not allowed"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("truncated"), "{}", lines[2]);
    assert!(lines[3].contains("nested deeper"), "{}", lines[3]);
    assert!(lines[4].contains("truncated"), "{}", lines[4]);
    assert!(
        lines[5].contains("does not fit in 128 bits"),
        "{}",
        lines[5]
    );
    assert!(lines[6].contains("'eval' unrecognized"), "{}", lines[6]);
    assert!(
        lines[7].starts_with("#RETURN ("),
        "protocol 5: {}",
        lines[7]
    );
    assert_eq!(lines[8], "serving");
    assert!(!marker.exists(), "the payload ran");
    let _ = std::fs::remove_dir_all(&dir);
    server.shutdown();
}

/// Serves a CPython `SyncManager` in a python3 process of its own (until its stdin
/// closes): the child and the address it serves on.
fn cpython_server(py: &str, key: &str) -> (Child, String) {
    let mut child = Command::new(py)
        .arg("-c")
        .arg(
            r#"
import sys, os, threading, datetime
from multiprocessing.managers import SyncManager, DictProxy
SyncManager.register('dated', callable=lambda: {'when': datetime.date(2020, 1, 1)}, proxytype=DictProxy)
m = SyncManager(address=('127.0.0.1', 0), authkey=sys.argv[1].encode())
s = m.get_server()
print('%s:%d' % s.address, flush=True)
threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
threading.Timer(120, lambda: os._exit(1)).start()
s.serve_forever()
"#,
        )
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3");
    let mut reader = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while reader.read_exact(&mut b).is_ok() && b[0] != b'\n' {
            line.push(b[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
    });
    let address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server address");
    (child, address)
}

fn stop(mut child: Child) {
    drop(child.stdin.take());
    let _ = finish(child);
}

/// A Rust program uses a CPython manager: dict, list, queue and lock proxies, Python's
/// exceptions as this crate's errors.
#[test]
fn rust_client_uses_a_cpython_server() {
    use multiproc::manager::PyManager;
    use multiproc::{ManagerError, QueueError};
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (child, address) = cpython_server(py, "py-key");
    assert!(matches!(
        PyManager::connect(address.as_str(), b"wrong"),
        Err(ManagerError::Connection(_))
    ));
    let mgr = PyManager::connect(address.as_str(), b"py-key").unwrap();
    let d = mgr.dict().unwrap();
    d.set("jobs", 3).unwrap();
    d.set(
        "nested",
        PyValue::List(vec![PyValue::Int(1 << 70), "x".into()]),
    )
    .unwrap();
    assert_eq!(d.get("jobs").unwrap(), Some(PyValue::Int(3)));
    assert_eq!(
        d.get("nested").unwrap(),
        Some(PyValue::List(vec![PyValue::Int(1 << 70), "x".into()]))
    );
    assert_eq!(d.get("missing").unwrap(), None);
    assert_eq!(d.len().unwrap(), 2);
    assert_eq!(d.remove("jobs").unwrap(), Some(PyValue::Int(3)));
    let l = mgr.list().unwrap();
    l.append("a").unwrap();
    l.append(2.5).unwrap();
    assert_eq!(
        (l.len().unwrap(), l.get(-1).unwrap()),
        (2, PyValue::Float(2.5))
    );
    assert!(matches!(
        l.get(5),
        Err(ManagerError::Python { class, .. }) if class == "IndexError"
    ));
    let q = mgr.queue().unwrap();
    q.put(PyValue::Dict(vec![("id".into(), 1.into())])).unwrap();
    assert_eq!(q.qsize().unwrap(), 1);
    assert_eq!(
        q.get(Some(Duration::from_secs(5))).unwrap(),
        PyValue::Dict(vec![("id".into(), 1.into())])
    );
    let t = Instant::now();
    assert!(matches!(
        q.get(Some(Duration::from_millis(300))),
        Err(ManagerError::Queue(QueueError::Empty))
    ));
    assert!(t.elapsed() >= Duration::from_millis(290));
    let lock = mgr.lock().unwrap();
    assert!(lock.acquire(None).unwrap());
    // Another thread (its own connection, as in CPython) waits, then gives up.
    let other = lock.clone();
    let got = std::thread::spawn(move || other.acquire(Some(Duration::from_millis(200))))
        .join()
        .unwrap();
    assert!(!got.unwrap());
    lock.release().unwrap();
    assert!(matches!(
        lock.release(),
        Err(ManagerError::Python { class, .. }) if class == "RemoteError" || class == "RuntimeError"
    ));
    assert!(matches!(
        d.0.call("no_such_method", vec![]),
        Err(ManagerError::UnknownMethod { .. })
    ));
    // A value the decoder does not accept (a datetime.date) is refused, named, and the
    // client goes on.
    let dated = mgr.create("dated", vec![]).unwrap();
    let err = dated.call("__getitem__", vec!["when".into()]).unwrap_err();
    assert!(
        err.to_string()
            .contains("global datetime.date is not allowed"),
        "{err}"
    );
    assert_eq!(d.len().unwrap(), 1);
    let before = mgr.number_of_objects().unwrap();
    drop((d, l, q, lock, dated));
    assert_eq!(mgr.number_of_objects().unwrap(), before - 5);
    stop(child);
}

/// A hostile "server" answering with a `GLOBAL os.system` + `REDUCE` pickle, to
/// `PyManager::connect` and to `Manager::connect`: refused, and nothing runs on this side.
#[test]
fn rust_client_runs_nothing_a_server_sends() {
    use multiproc::manager::PyManager;
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("mp-evil-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("ran");
    let mut child = Command::new(py)
        .arg("-c")
        .arg(
            r#"
import sys, os
from multiprocessing.connection import Listener
class Evil:
    def __reduce__(self): return (os.system, ('touch ' + sys.argv[2],))
import pickle
with Listener(('127.0.0.1', 0), authkey=b'k') as l:
    print('%s:%d' % l.address, flush=True)
    for answer in ['#RETURN', '#TRACEBACK']:
        with l.accept() as c:
            c.recv_bytes()
            c.send_bytes(pickle.dumps((answer, Evil())))
"#,
        )
        .args(["x", marker.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while reader.read_exact(&mut b).is_ok() && b[0] != b'\n' {
        line.push(b[0]);
    }
    let address = String::from_utf8(line).unwrap();
    let err = PyManager::connect(address.as_str(), b"k").unwrap_err();
    assert!(
        err.to_string()
            .contains("global posix.system is not allowed"),
        "{err}"
    );
    // `Manager::connect` reads the reply to its hello through the same decoder: a
    // `#TRACEBACK` whose text is a payload is no CPython server's answer, and is refused.
    let err = Manager::connect(address.as_str(), b"k").unwrap_err();
    assert!(
        matches!(err, multiproc::ManagerError::Connection(_)),
        "{err:?}"
    );
    let _ = finish(child);
    assert!(!marker.exists(), "the payload ran");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Manager::connect` to a stock CPython `SyncManager` server: the typed proxies Rust
/// programs use on multiproc managers, on Python objects a Python client of the same server
/// reads and writes too.
#[test]
fn manager_connect_gives_typed_proxies_on_a_cpython_server() {
    use multiproc::manager::{DictProxy, ProxyType};
    use multiproc::{ManagerError, QueueError, SyncError};
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Job {
        name: String,
        tries: u8,
        tags: Vec<String>,
    }
    let Some(py) = common::python("multiprocessing.managers") else {
        return;
    };
    let (child, address) = cpython_server(py, "py-key");
    assert!(matches!(
        Manager::connect(address.as_str(), b"wrong"),
        Err(ManagerError::Connection(_))
    ));
    let mgr = Manager::connect(address.as_str(), b"py-key").unwrap();
    assert!(mgr.is_cpython());
    assert_eq!(mgr.address().to_string(), address);

    // Dict.
    let d = mgr.dict::<String, u64>().unwrap();
    d.set(&"apples".into(), &3).unwrap();
    d.update([(&"pears".into(), &u64::MAX)]).unwrap();
    assert_eq!(d.get(&"apples".into()).unwrap(), Some(3));
    assert_eq!(d.get(&"plums".into()).unwrap(), None);
    assert!(d.contains_key(&"pears".into()).unwrap());
    assert_eq!(d.setdefault(&"plums".into(), &5).unwrap(), 5);
    assert_eq!(d.setdefault(&"plums".into(), &6).unwrap(), 5);
    assert_eq!(d.len().unwrap(), 3);
    assert_eq!(d.keys().unwrap(), ["apples", "pears", "plums"]);
    assert_eq!(d.remove(&"plums".into()).unwrap(), Some(5));
    assert_eq!(d.remove(&"plums".into()).unwrap(), None);
    assert_eq!(
        d.items().unwrap(),
        [("apples".to_string(), 3), ("pears".to_string(), u64::MAX)]
    );
    let jobs = mgr.dict::<u32, Job>().unwrap();
    let job = Job {
        name: "build".into(),
        tries: 2,
        tags: vec!["ci".into()],
    };
    jobs.set(&1, &job).unwrap();
    assert_eq!(jobs.get(&1).unwrap(), Some(job));

    // List.
    let l = mgr.list::<String>().unwrap();
    l.push(&"a".into()).unwrap();
    l.extend([&"b".to_string(), &"c".to_string()]).unwrap();
    l.set(0, &"A".into()).unwrap();
    assert_eq!((l.len().unwrap(), l.get(1).unwrap()), (3, "b".to_string()));
    assert!(matches!(
        l.get(7),
        Err(ManagerError::IndexOutOfRange { index: 7, len: 3 })
    ));
    assert_eq!(l.pop().unwrap(), Some("c".to_string()));
    assert_eq!(l.to_vec().unwrap(), ["A", "b"]);

    // Queue: items, time-outs, a bounded queue's room.
    let q = mgr.queue::<(String, i64)>().unwrap();
    q.put(&("rust".into(), -1)).unwrap();
    assert_eq!(q.qsize().unwrap(), 1);
    assert_eq!(
        q.get_timeout(Duration::from_secs(5)).unwrap(),
        ("rust".to_string(), -1)
    );
    assert!(q.empty().unwrap());
    let t = Instant::now();
    assert!(matches!(
        q.get_timeout(Duration::from_millis(300)),
        Err(ManagerError::Queue(QueueError::Empty))
    ));
    assert!(t.elapsed() >= Duration::from_millis(290));
    assert!(matches!(
        q.get_nowait(),
        Err(ManagerError::Queue(QueueError::Empty))
    ));
    let small = mgr.queue_bounded::<u8>(1).unwrap();
    small.put_nowait(&1).unwrap();
    assert!(small.full().unwrap());
    assert!(matches!(
        small.put_timeout(&2, Duration::from_millis(100)),
        Err(ManagerError::Queue(QueueError::Full))
    ));
    assert!(matches!(
        small.put_nowait(&2),
        Err(ManagerError::Queue(QueueError::Full))
    ));

    // Lock: another thread (its own connection) times out while this one holds it.
    let lock = mgr.lock().unwrap();
    {
        let _held = lock.lock().unwrap();
        let other = lock.clone();
        let t = Instant::now();
        let got = std::thread::spawn(move || other.acquire_timeout(Duration::from_millis(200)))
            .join()
            .unwrap();
        assert!(matches!(
            got,
            Err(ManagerError::Sync(SyncError::Timeout(_)))
        ));
        assert!(t.elapsed() >= Duration::from_millis(190));
        assert!(!lock.clone().try_acquire().unwrap());
    }
    assert!(lock.try_acquire().unwrap());
    lock.release().unwrap();
    assert!(matches!(
        lock.release(),
        Err(ManagerError::Sync(SyncError::NotLocked))
    ));
    let rlock = mgr.rlock().unwrap();
    rlock.acquire().unwrap();
    rlock.acquire().unwrap();
    rlock.release().unwrap();
    rlock.release().unwrap();

    // A Python client of the same server reads what Rust wrote and writes back.
    let script = format!(
        r#"
from multiprocessing.managers import Token, DictProxy, ListProxy, MakeProxyType
host, port = sys.argv[1].rsplit(':', 1)
addr, key = (host, int(port)), sys.argv[2].encode()
d = DictProxy(Token('dict', addr, '{d:x}'), 'pickle', authkey=key)
jobs = DictProxy(Token('dict', addr, '{jobs:x}'), 'pickle', authkey=key)
l = ListProxy(Token('list', addr, '{l:x}'), 'pickle', authkey=key)
q = MakeProxyType('Q', ('put', 'get'))(Token('Queue', addr, '{q:x}'), 'pickle', authkey=key)
assert d.copy() == {{'apples': 3, 'pears': 2**64 - 1}}, d.copy()
assert jobs[1] == {{'name': 'build', 'tries': 2, 'tags': ['ci']}}, jobs[1]
assert l[:] == ['A', 'b'], l[:]
d['from python'] = 7
d['not a number'] = 'seven'
l.append('from python')
q.put(('python', 2**40))
q.put(['python', 'two'])
print('ok')
"#,
        d = d.proxy().id(),
        jobs = jobs.proxy().id(),
        l = l.proxy().id(),
        q = q.proxy().id(),
    );
    assert_eq!(run_ok(py, &script, &address, "py-key").trim(), "ok");
    assert_eq!(d.get(&"from python".into()).unwrap(), Some(7));
    assert_eq!(l.get(2).unwrap(), "from python");
    assert_eq!(
        q.get_timeout(Duration::from_secs(5)).unwrap(),
        ("python".to_string(), 1 << 40)
    );

    // What does not fit the Rust type is a typed error, and the proxy goes on.
    let err = d.get(&"not a number".into()).unwrap_err();
    assert!(matches!(err, ManagerError::PyConversion(_)), "{err:?}");
    let err = q.get_timeout(Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, ManagerError::PyConversion(_)), "{err:?}");
    let bytes = mgr.dict::<String, u8>().unwrap();
    bytes.set(&"x".into(), &1).unwrap();
    let wide: DictProxy<String, u8> = DictProxy::from_proxy(d.proxy().clone());
    let err = wide.get(&"pears".into()).unwrap_err();
    assert!(err.to_string().contains("18446744073709551615"), "{err}");
    assert_eq!(d.len().unwrap(), 4);

    // What CPython's server cannot do is refused, by name.
    let unsupported = |r: Result<(), ManagerError>| match r {
        Err(e @ ManagerError::Unsupported { .. }) => e.to_string(),
        other => panic!("not refused: {other:?}"),
    };
    let m = unsupported(mgr.namespace().map(drop));
    assert!(m.contains("namespace") && m.contains("CPython"), "{m}");
    unsupported(mgr.joinable_queue::<u8>().map(drop));
    unsupported(mgr.event().map(drop));
    unsupported(mgr.value(&1u8).map(drop));
    unsupported(mgr.publish("d", &d));
    unsupported(mgr.lookup::<DictProxy<String, u64>>("d").map(drop));
    unsupported(mgr.stats().map(drop));
    unsupported(mgr.shutdown());
    unsupported(d.insert(&"apples".into(), &4).map(drop));
    unsupported(lock.locked().map(drop));
    let err = multiproc::codec::encode(&d).unwrap_err();
    assert!(err.to_string().contains("CPython"), "{err}");
    assert_eq!(d.get(&"apples".into()).unwrap(), Some(3));

    drop((d, jobs, l, q, small, lock, rlock, bytes, wide));
    stop(child);
}
