//! The objects a manager serves: the built-in kinds, and the interface user types implement.
//!
//! Built-in objects are type-agnostic: keys, values and items are the client's encoded bytes
//! (so dict keys compare by their encoding). Each object synchronizes itself, so calls on one
//! object never wait for calls on another; blocking methods (a queue `get`, a lock `acquire`)
//! wait on the object's condition variable without holding anything else, and give up when
//! the caller's connection goes away or the server stops.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_bytes::{ByteBuf, Bytes};

use super::wire::{Fault, Owner, args, ret};

/// How often a blocked call checks whether its caller is still there.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

/// What a call knows about its caller.
pub(crate) struct Ctx<'a> {
    /// The calling session and thread (lock ownership).
    pub owner: Owner,
    /// True once the caller has gone or the server is stopping: blocked calls give up.
    pub cancelled: &'a dyn Fn() -> bool,
}

/// An object living in a manager.
pub(crate) trait Object: Send + Sync {
    /// The kind, as proxies name it (`"dict"`, `"queue"`, `"user:path::Type"`).
    fn kind(&self) -> &str;
    /// Runs `method` with encoded `args`; the encoded result or a fault.
    fn call(&self, cx: &Ctx<'_>, method: &str, args: &[u8]) -> Result<Vec<u8>, Fault>;
    /// Client session `session` ended: let go of what it held (locks).
    fn session_ended(&self, _session: u128) {}
}

/// Creates a built-in object of `kind` from its encoded initial arguments; `None` for a
/// kind that is not built in.
pub(crate) fn create_builtin(kind: &str, init: &[u8]) -> Option<Result<Box<dyn Object>, Fault>> {
    let obj: Result<Box<dyn Object>, Fault> = match kind {
        "dict" => Ok(Box::new(Dict::default())),
        "list" => Ok(Box::new(List::new(Vec::new(), false))),
        "array" => args::<Vec<ByteBuf>>(init).map(|v| {
            Box::new(List::new(
                v.into_iter().map(ByteBuf::into_vec).collect(),
                true,
            )) as _
        }),
        "queue" | "joinable_queue" => {
            args::<u64>(init).map(|max| Box::new(Queue::new(max, kind == "joinable_queue")) as _)
        }
        "namespace" => Ok(Box::new(Namespace::default())),
        "value" => args::<ByteBuf>(init).map(|v| Box::new(Value(Mutex::new(v.into_vec()))) as _),
        "lock" | "rlock" => Ok(Box::new(Lock::new(kind == "rlock"))),
        "semaphore" | "bounded_semaphore" => {
            args::<u64>(init).map(|n| Box::new(Semaphore::new(n, kind == "bounded_semaphore")) as _)
        }
        "event" => Ok(Box::new(Event::default())),
        "condition" => Ok(Box::new(Condition::default())),
        "barrier" => args::<u64>(init).and_then(|n| {
            if n == 0 {
                Err(Fault::Invalid("a barrier needs at least one party".into()))
            } else {
                Ok(Box::new(Barrier::new(n)) as _)
            }
        }),
        _ => return None,
    };
    Some(obj)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unknown(kind: &str, method: &str) -> Fault {
    Fault::UnknownMethod {
        kind: kind.to_string(),
        method: method.to_string(),
    }
}

/// Waits on `cv` until `ready` gives a value. `timeout`: `None` waits for ever,
/// `Some(ZERO)` not at all; running out of time is `Ok(None)`. Gives up with
/// [`Fault::ShuttingDown`] when the caller is gone.
fn block<'m, S, R>(
    m: &'m Mutex<S>,
    cv: &Condvar,
    cx: &Ctx<'_>,
    timeout: Option<Duration>,
    mut ready: impl FnMut(&mut S) -> Option<R>,
) -> Result<(MutexGuard<'m, S>, Option<R>), Fault> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut guard = lock(m);
    let mut waited = false;
    loop {
        // After a wait, a caller that has gone must not take anything (an item it took
        // could not be delivered): check before trying.
        if waited && (cx.cancelled)() {
            return Err(Fault::ShuttingDown);
        }
        if let Some(r) = ready(&mut guard) {
            return Ok((guard, Some(r)));
        }
        let mut slice = CANCEL_CHECK;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok((guard, None));
            }
            slice = slice.min(left);
        }
        waited = true;
        guard = cv
            .wait_timeout(guard, slice)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// [`block`] for callers that need only the outcome.
fn wait_for<S, R>(
    m: &Mutex<S>,
    cv: &Condvar,
    cx: &Ctx<'_>,
    timeout: Option<Duration>,
    ready: impl FnMut(&mut S) -> Option<R>,
) -> Result<Option<R>, Fault> {
    block(m, cv, cx, timeout, ready).map(|(_, r)| r)
}

fn index(i: u64, len: usize) -> Result<usize, Fault> {
    if i < len as u64 {
        Ok(i as usize)
    } else {
        Err(Fault::IndexOutOfRange {
            index: i,
            len: len as u64,
        })
    }
}

/// A dict: encoded key → encoded value, iterated in insertion order as Python's.
#[derive(Default)]
struct Dict(Mutex<DictState>);

#[derive(Default)]
struct DictState {
    next: u64,
    map: HashMap<Vec<u8>, (u64, Vec<u8>)>,
}

impl DictState {
    fn insert(&mut self, k: &[u8], v: &[u8]) -> Option<Vec<u8>> {
        if let Some(slot) = self.map.get_mut(k) {
            return Some(std::mem::replace(&mut slot.1, v.to_vec()));
        }
        self.next += 1;
        self.map.insert(k.to_vec(), (self.next, v.to_vec()));
        None
    }

    fn ordered(&self) -> Vec<(&Vec<u8>, &Vec<u8>)> {
        let mut all: Vec<_> = self.map.iter().map(|(k, (n, v))| (*n, k, v)).collect();
        all.sort_unstable_by_key(|e| e.0);
        all.into_iter().map(|(_, k, v)| (k, v)).collect()
    }
}

impl Object for Dict {
    fn kind(&self) -> &str {
        "dict"
    }

    fn call(&self, _: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        let mut d = lock(&self.0);
        match method {
            "get" => {
                let (k,): (&Bytes,) = args(a)?;
                ret(&d.map.get(k.as_ref()).map(|e| Bytes::new(&e.1)))
            }
            "set" => {
                let (k, v): (&Bytes, &Bytes) = args(a)?;
                d.insert(k, v);
                ret(&())
            }
            "insert" => {
                let (k, v): (&Bytes, &Bytes) = args(a)?;
                ret(&d.insert(k, v).map(ByteBuf::from))
            }
            "setdefault" => {
                let (k, v): (&Bytes, &Bytes) = args(a)?;
                if !d.map.contains_key(k.as_ref()) {
                    d.insert(k, v);
                }
                ret(Bytes::new(&d.map[k.as_ref()].1))
            }
            "remove" => {
                let (k,): (&Bytes,) = args(a)?;
                ret(&d.map.remove(k.as_ref()).map(|e| ByteBuf::from(e.1)))
            }
            "contains" => {
                let (k,): (&Bytes,) = args(a)?;
                ret(&d.map.contains_key(k.as_ref()))
            }
            "len" => ret(&(d.map.len() as u64)),
            "clear" => {
                d.map.clear();
                ret(&())
            }
            "update" => {
                let items: Vec<(&Bytes, &Bytes)> = args(a)?;
                for (k, v) in items {
                    d.insert(k, v);
                }
                ret(&())
            }
            "keys" => ret(&d
                .ordered()
                .iter()
                .map(|e| Bytes::new(e.0))
                .collect::<Vec<_>>()),
            "values" => ret(&d
                .ordered()
                .iter()
                .map(|e| Bytes::new(e.1))
                .collect::<Vec<_>>()),
            "items" => ret(&d
                .ordered()
                .iter()
                .map(|e| (Bytes::new(e.0), Bytes::new(e.1)))
                .collect::<Vec<_>>()),
            _ => Err(unknown("dict", method)),
        }
    }
}

/// A list, or (fixed length) an array.
struct List {
    items: Mutex<Vec<Vec<u8>>>,
    fixed: bool,
}

impl List {
    fn new(items: Vec<Vec<u8>>, fixed: bool) -> Self {
        List {
            items: Mutex::new(items),
            fixed,
        }
    }
}

impl Object for List {
    fn kind(&self) -> &str {
        if self.fixed { "array" } else { "list" }
    }

    fn call(&self, _: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        let mut l = lock(&self.items);
        match method {
            "len" => ret(&(l.len() as u64)),
            "get" => {
                let (i,): (u64,) = args(a)?;
                ret(Bytes::new(&l[index(i, l.len())?]))
            }
            "set" => {
                let (i, v): (u64, &Bytes) = args(a)?;
                let i = index(i, l.len())?;
                l[i] = v.to_vec();
                ret(&())
            }
            "to_vec" => ret(&l.iter().map(|v| Bytes::new(v)).collect::<Vec<_>>()),
            "contains" => {
                let (v,): (&Bytes,) = args(a)?;
                ret(&l.iter().any(|x| x.as_slice() == v.as_ref()))
            }
            _ if self.fixed => Err(unknown("array", method)),
            "push" => {
                let (v,): (&Bytes,) = args(a)?;
                l.push(v.to_vec());
                ret(&())
            }
            "pop" => ret(&l.pop().map(ByteBuf::from)),
            "insert" => {
                let (i, v): (u64, &Bytes) = args(a)?;
                let i = if i == l.len() as u64 {
                    l.len()
                } else {
                    index(i, l.len())?
                };
                l.insert(i, v.to_vec());
                ret(&())
            }
            "remove" => {
                let (i,): (u64,) = args(a)?;
                let i = index(i, l.len())?;
                ret(&ByteBuf::from(l.remove(i)))
            }
            "extend" => {
                let items: Vec<&Bytes> = args(a)?;
                l.extend(items.into_iter().map(|v| v.to_vec()));
                ret(&())
            }
            "clear" => {
                l.clear();
                ret(&())
            }
            _ => Err(unknown("list", method)),
        }
    }
}

/// A FIFO queue, bounded when `max > 0`, joinable when asked.
struct Queue {
    state: Mutex<QueueState>,
    changed: Condvar,
    max: u64,
    joinable: bool,
}

struct QueueState {
    items: VecDeque<Vec<u8>>,
    unfinished: u64,
}

impl Queue {
    fn new(max: u64, joinable: bool) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                unfinished: 0,
            }),
            changed: Condvar::new(),
            max,
            joinable,
        }
    }
}

impl Object for Queue {
    fn kind(&self) -> &str {
        if self.joinable {
            "joinable_queue"
        } else {
            "queue"
        }
    }

    fn call(&self, cx: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        match method {
            "put" => {
                let (item, timeout): (&Bytes, Option<Duration>) = args(a)?;
                let max = self.max;
                let (mut q, room) = block(&self.state, &self.changed, cx, timeout, |q| {
                    (max == 0 || (q.items.len() as u64) < max).then_some(())
                })?;
                room.ok_or(Fault::Full)?;
                q.items.push_back(item.to_vec());
                q.unfinished += 1;
                drop(q);
                self.changed.notify_all();
                ret(&())
            }
            "get" => {
                let (timeout,): (Option<Duration>,) = args(a)?;
                let (q, item) = block(&self.state, &self.changed, cx, timeout, |q| {
                    q.items.pop_front()
                })?;
                drop(q);
                let item = item.ok_or(Fault::Empty)?;
                self.changed.notify_all();
                ret(Bytes::new(&item))
            }
            "qsize" => ret(&(lock(&self.state).items.len() as u64)),
            "empty" => ret(&lock(&self.state).items.is_empty()),
            "full" => ret(&(self.max > 0 && lock(&self.state).items.len() as u64 >= self.max)),
            "task_done" if self.joinable => {
                let mut q = lock(&self.state);
                if q.unfinished == 0 {
                    return Err(Fault::TooManyTaskDone);
                }
                q.unfinished -= 1;
                drop(q);
                self.changed.notify_all();
                ret(&())
            }
            "join" if self.joinable => {
                let (timeout,): (Option<Duration>,) = args(a)?;
                let done = wait_for(&self.state, &self.changed, cx, timeout, |q| {
                    (q.unfinished == 0).then_some(())
                })?;
                done.ok_or_else(|| Fault::Timeout(timeout.unwrap_or_default()))?;
                ret(&())
            }
            _ => Err(unknown(self.kind(), method)),
        }
    }
}

/// A namespace: named attributes.
#[derive(Default)]
struct Namespace(Mutex<BTreeMap<String, Vec<u8>>>);

impl Object for Namespace {
    fn kind(&self) -> &str {
        "namespace"
    }

    fn call(&self, _: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        let mut ns = lock(&self.0);
        match method {
            "get" => {
                let (name,): (&str,) = args(a)?;
                ret(Bytes::new(ns.get(name).ok_or(Fault::KeyNotFound)?))
            }
            "set" => {
                let (name, v): (&str, &Bytes) = args(a)?;
                ns.insert(name.to_string(), v.to_vec());
                ret(&())
            }
            "remove" => {
                let (name,): (&str,) = args(a)?;
                ns.remove(name).ok_or(Fault::KeyNotFound)?;
                ret(&())
            }
            "contains" => {
                let (name,): (&str,) = args(a)?;
                ret(&ns.contains_key(name))
            }
            "names" => ret(&ns.keys().collect::<Vec<_>>()),
            _ => Err(unknown("namespace", method)),
        }
    }
}

/// A single value.
struct Value(Mutex<Vec<u8>>);

impl Object for Value {
    fn kind(&self) -> &str {
        "value"
    }

    fn call(&self, _: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        let mut v = lock(&self.0);
        match method {
            "get" => ret(Bytes::new(&v)),
            "set" => {
                let (new,): (&Bytes,) = args(a)?;
                *v = new.to_vec();
                ret(&())
            }
            "swap" => {
                let (new,): (&Bytes,) = args(a)?;
                ret(Bytes::new(&std::mem::replace(&mut *v, new.to_vec())))
            }
            _ => Err(unknown("value", method)),
        }
    }
}

/// Who holds a lock and how many times.
#[derive(Default)]
struct Holder {
    owner: Option<Owner>,
    count: u32,
}

impl Holder {
    /// Takes the lock for `who` if free (or already `who`'s and `reentrant`).
    fn try_take(&mut self, who: Owner, reentrant: bool) -> Option<()> {
        match self.owner {
            None => {
                self.owner = Some(who);
                self.count = 1;
                Some(())
            }
            Some(o) if reentrant && o == who => {
                self.count += 1;
                Some(())
            }
            _ => None,
        }
    }

    /// Releases one level; true when the lock became free.
    fn release(&mut self, who: Owner, reentrant: bool) -> Result<bool, Fault> {
        match self.owner {
            None => Err(Fault::NotLocked),
            Some(o) if reentrant && o != who => Err(Fault::NotOwner),
            Some(_) => {
                self.count -= 1;
                if self.count == 0 {
                    self.owner = None;
                }
                Ok(self.count == 0)
            }
        }
    }

    /// Frees the lock if session `s` holds it.
    fn drop_session(&mut self, s: u128) -> bool {
        if self.owner.is_some_and(|o| o.0 == s) {
            self.owner = None;
            self.count = 0;
            return true;
        }
        false
    }
}

/// `Lock` (any thread may release) or `RLock` (reentrant, owner releases).
struct Lock {
    holder: Mutex<Holder>,
    freed: Condvar,
    reentrant: bool,
}

impl Lock {
    fn new(reentrant: bool) -> Self {
        Lock {
            holder: Mutex::new(Holder::default()),
            freed: Condvar::new(),
            reentrant,
        }
    }
}

impl Object for Lock {
    fn kind(&self) -> &str {
        if self.reentrant { "rlock" } else { "lock" }
    }

    fn call(&self, cx: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        match method {
            "acquire" => {
                let (timeout,): (Option<Duration>,) = args(a)?;
                let r = self.reentrant;
                let got = wait_for(&self.holder, &self.freed, cx, timeout, |h| {
                    h.try_take(cx.owner, r)
                })?;
                ret(&got.is_some())
            }
            "release" => {
                if lock(&self.holder).release(cx.owner, self.reentrant)? {
                    self.freed.notify_one();
                }
                ret(&())
            }
            "locked" => ret(&lock(&self.holder).owner.is_some()),
            _ => Err(unknown(self.kind(), method)),
        }
    }

    fn session_ended(&self, session: u128) {
        if lock(&self.holder).drop_session(session) {
            self.freed.notify_one();
        }
    }
}

/// A counting semaphore, bounded (releases past the initial value are errors) when asked.
struct Semaphore {
    value: Mutex<u64>,
    changed: Condvar,
    bound: Option<u64>,
}

impl Semaphore {
    fn new(value: u64, bounded: bool) -> Self {
        Semaphore {
            value: Mutex::new(value),
            changed: Condvar::new(),
            bound: bounded.then_some(value),
        }
    }
}

impl Object for Semaphore {
    fn kind(&self) -> &str {
        "semaphore"
    }

    fn call(&self, cx: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        match method {
            "acquire" => {
                let (timeout,): (Option<Duration>,) = args(a)?;
                let got = wait_for(&self.value, &self.changed, cx, timeout, |v| {
                    (*v > 0).then(|| *v -= 1)
                })?;
                ret(&got.is_some())
            }
            "release" => {
                let (n,): (u64,) = args(a)?;
                let mut v = lock(&self.value);
                let bound = self.bound.unwrap_or(u64::MAX);
                let new = v.checked_add(n).filter(|new| *new <= bound);
                *v = new.ok_or(Fault::OverReleased { bound })?;
                drop(v);
                self.changed.notify_all();
                ret(&())
            }
            "value" => ret(&*lock(&self.value)),
            _ => Err(unknown("semaphore", method)),
        }
    }
}

/// An event flag.
#[derive(Default)]
struct Event {
    set: Mutex<bool>,
    changed: Condvar,
}

impl Object for Event {
    fn kind(&self) -> &str {
        "event"
    }

    fn call(&self, cx: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        match method {
            "set" | "clear" => {
                *lock(&self.set) = method == "set";
                self.changed.notify_all();
                ret(&())
            }
            "is_set" => ret(&*lock(&self.set)),
            "wait" => {
                let (timeout,): (Option<Duration>,) = args(a)?;
                let set = wait_for(&self.set, &self.changed, cx, timeout, |s| s.then_some(()))?;
                ret(&set.is_some())
            }
            _ => Err(unknown("event", method)),
        }
    }
}

/// A condition variable with its own reentrant lock.
#[derive(Default)]
struct Condition {
    state: Mutex<CondState>,
    changed: Condvar,
}

#[derive(Default)]
struct CondState {
    holder: Holder,
    next_ticket: u64,
    waiting: VecDeque<u64>,
    notified: HashSet<u64>,
}

impl Condition {
    fn owned(&self, cx: &Ctx<'_>, what: &str) -> Result<MutexGuard<'_, CondState>, Fault> {
        let st = lock(&self.state);
        if st.holder.owner != Some(cx.owner) {
            return Err(Fault::Invalid(format!(
                "cannot {what} an un-acquired condition"
            )));
        }
        Ok(st)
    }

    fn wait(&self, cx: &Ctx<'_>, timeout: Option<Duration>) -> Result<bool, Fault> {
        let mut st = self.owned(cx, "wait on")?;
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.waiting.push_back(ticket);
        let saved = std::mem::take(&mut st.holder);
        drop(st);
        self.changed.notify_all();
        let woken = block(&self.state, &self.changed, cx, timeout, |s| {
            s.notified.remove(&ticket).then_some(())
        });
        let notified = match woken {
            Ok((mut st, woken)) => {
                if woken.is_none() {
                    // Timed out: leave the line (under the same lock, so no notify picks it).
                    st.waiting.retain(|t| *t != ticket);
                }
                woken.is_some()
            }
            Err(e) => {
                let mut st = lock(&self.state);
                st.waiting.retain(|t| *t != ticket);
                st.notified.remove(&ticket);
                return Err(e);
            }
        };
        // Take the lock back at the depth it was held.
        let (mut st, _) = block(&self.state, &self.changed, cx, None, |s| {
            s.holder.owner.is_none().then_some(())
        })?;
        st.holder = saved;
        Ok(notified)
    }
}

impl Object for Condition {
    fn kind(&self) -> &str {
        "condition"
    }

    fn call(&self, cx: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        match method {
            "acquire" => {
                let (timeout,): (Option<Duration>,) = args(a)?;
                let got = wait_for(&self.state, &self.changed, cx, timeout, |s| {
                    s.holder.try_take(cx.owner, true)
                })?;
                ret(&got.is_some())
            }
            "release" => {
                if lock(&self.state).holder.release(cx.owner, true)? {
                    self.changed.notify_all();
                }
                ret(&())
            }
            "wait" => {
                let (timeout,): (Option<Duration>,) = args(a)?;
                ret(&self.wait(cx, timeout)?)
            }
            "notify" => {
                let (n,): (u64,) = args(a)?;
                let mut st = self.owned(cx, "notify")?;
                for _ in 0..n {
                    match st.waiting.pop_front() {
                        Some(t) => {
                            st.notified.insert(t);
                        }
                        None => break,
                    }
                }
                drop(st);
                self.changed.notify_all();
                ret(&())
            }
            _ => Err(unknown("condition", method)),
        }
    }

    fn session_ended(&self, session: u128) {
        if lock(&self.state).holder.drop_session(session) {
            self.changed.notify_all();
        }
    }
}

/// A barrier for a fixed number of parties.
struct Barrier {
    parties: u64,
    state: Mutex<BarrierState>,
    changed: Condvar,
}

#[derive(Default)]
struct BarrierState {
    count: u64,
    generation: u64,
    broken: bool,
    /// Generations ended by `reset` (their waiters see a broken barrier).
    reset: HashSet<u64>,
}

impl Barrier {
    fn new(parties: u64) -> Self {
        Barrier {
            parties,
            state: Mutex::new(BarrierState::default()),
            changed: Condvar::new(),
        }
    }

    fn wait(&self, cx: &Ctx<'_>, timeout: Option<Duration>) -> Result<u64, Fault> {
        let mut st = lock(&self.state);
        if st.broken {
            return Err(Fault::BrokenBarrier);
        }
        let index = st.count;
        let generation = st.generation;
        st.count += 1;
        if st.count == self.parties {
            st.count = 0;
            st.generation += 1;
            drop(st);
            self.changed.notify_all();
            return Ok(index);
        }
        drop(st);
        let waited = block(&self.state, &self.changed, cx, timeout, |s| {
            (s.generation != generation || s.broken).then_some(())
        });
        let mut st = match waited {
            Ok((st, Some(()))) => st,
            Ok((st, None)) => st,
            Err(e) => {
                self.abort();
                return Err(e);
            }
        };
        if st.generation != generation {
            if st.reset.contains(&generation) {
                return Err(Fault::BrokenBarrier);
            }
            return Ok(index);
        }
        // Timed out or broken while waiting: the barrier is broken for everyone.
        st.broken = true;
        drop(st);
        self.changed.notify_all();
        Err(Fault::BrokenBarrier)
    }

    fn abort(&self) {
        lock(&self.state).broken = true;
        self.changed.notify_all();
    }
}

impl Object for Barrier {
    fn kind(&self) -> &str {
        "barrier"
    }

    fn call(&self, cx: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        match method {
            "wait" => {
                let (timeout,): (Option<Duration>,) = args(a)?;
                ret(&self.wait(cx, timeout)?)
            }
            "abort" => {
                self.abort();
                ret(&())
            }
            "reset" => {
                let mut st = lock(&self.state);
                if st.count > 0 {
                    let g = st.generation;
                    st.reset.insert(g);
                    st.generation += 1;
                }
                st.count = 0;
                st.broken = false;
                drop(st);
                self.changed.notify_all();
                ret(&())
            }
            "parties" => ret(&self.parties),
            "n_waiting" => ret(&lock(&self.state).count),
            "broken" => ret(&lock(&self.state).broken),
            _ => Err(unknown("barrier", method)),
        }
    }
}
