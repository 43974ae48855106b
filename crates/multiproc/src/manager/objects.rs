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

use super::wire::{
    BarrierCall, ConditionCall, DictCall, EventCall, Fault, JoinableCall, ListCall, LockCall,
    NamespaceCall, New, Owner, QueueCall, SemaphoreCall, SeqCall, ValueCall, ret,
};

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
    Some(New::decode(kind, init).transpose()?.and_then(|new| {
        let obj: Box<dyn Object> = match new {
            New::Dict => Box::new(Dict::default()),
            New::List => Box::new(List::new(Vec::new(), false)),
            New::Array { items } => Box::new(List::new(
                items.into_iter().map(ByteBuf::into_vec).collect(),
                true,
            )),
            New::Queue { maxsize } => Box::new(Queue::new(maxsize, false)),
            New::JoinableQueue { maxsize } => Box::new(Queue::new(maxsize, true)),
            New::Namespace => Box::new(Namespace::default()),
            New::Value { value } => Box::new(Value(Mutex::new(value.into_vec()))),
            New::Lock => Box::new(Lock::new(false)),
            New::RLock => Box::new(Lock::new(true)),
            New::Semaphore { value } => Box::new(Semaphore::new(value, false)),
            New::BoundedSemaphore { value } => Box::new(Semaphore::new(value, true)),
            New::Event => Box::new(Event::default()),
            New::Condition => Box::new(Condition::default()),
            New::Barrier { parties: 0 } => {
                return Err(Fault::Invalid("a barrier needs at least one party".into()));
            }
            New::Barrier { parties } => Box::new(Barrier::new(parties)),
        };
        Ok(obj)
    }))
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
    fn insert(&mut self, k: ByteBuf, v: ByteBuf) -> Option<ByteBuf> {
        if let Some(slot) = self.map.get_mut(k.as_slice()) {
            return Some(std::mem::replace(&mut slot.1, v.into_vec()).into());
        }
        self.next += 1;
        self.map.insert(k.into_vec(), (self.next, v.into_vec()));
        None
    }

    /// The entries in insertion order.
    fn ordered(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        let mut all: Vec<_> = self.map.iter().map(|(k, (n, v))| (*n, k, v)).collect();
        all.sort_unstable_by_key(|e| e.0);
        all.into_iter()
            .map(|(_, k, v)| (Bytes::new(k), Bytes::new(v)))
    }
}

impl Object for Dict {
    fn kind(&self) -> &str {
        "dict"
    }

    fn call(&self, _: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        let call = DictCall::decode(method, a)?.ok_or_else(|| unknown(self.kind(), method))?;
        let mut d = lock(&self.0);
        match call {
            DictCall::Get { key } => ret(&d.map.get(key.as_slice()).map(|e| Bytes::new(&e.1))),
            DictCall::Set { key, value } => {
                d.insert(key, value);
                ret(&())
            }
            DictCall::Insert { key, value } => ret(&d.insert(key, value)),
            DictCall::SetDefault { key, default } => {
                if !d.map.contains_key(key.as_slice()) {
                    d.insert(key.clone(), default);
                }
                ret(Bytes::new(&d.map[key.as_slice()].1))
            }
            DictCall::Remove { key } => {
                ret(&d.map.remove(key.as_slice()).map(|e| ByteBuf::from(e.1)))
            }
            DictCall::Contains { key } => ret(&d.map.contains_key(key.as_slice())),
            DictCall::Len => ret(&(d.map.len() as u64)),
            DictCall::Clear => ret(&d.map.clear()),
            DictCall::Update { entries } => {
                for (k, v) in entries {
                    d.insert(k, v);
                }
                ret(&())
            }
            DictCall::Keys => ret(&d.ordered().map(|e| e.0).collect::<Vec<_>>()),
            DictCall::Values => ret(&d.ordered().map(|e| e.1).collect::<Vec<_>>()),
            DictCall::Items => ret(&d.ordered().collect::<Vec<_>>()),
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

    /// The methods of lists and arrays.
    fn seq_call(&self, call: SeqCall) -> Result<Vec<u8>, Fault> {
        let mut l = lock(&self.items);
        match call {
            SeqCall::Len => ret(&(l.len() as u64)),
            SeqCall::Get { index: i } => ret(Bytes::new(&l[index(i, l.len())?])),
            SeqCall::Set { index: i, value } => {
                let i = index(i, l.len())?;
                l[i] = value.into_vec();
                ret(&())
            }
            SeqCall::ToVec => ret(&l.iter().map(|v| Bytes::new(v)).collect::<Vec<_>>()),
            SeqCall::Contains { value } => ret(&l.contains(&value)),
        }
    }

    /// The methods only lists have.
    fn list_call(&self, call: ListCall) -> Result<Vec<u8>, Fault> {
        let mut l = lock(&self.items);
        match call {
            ListCall::Push { value } => ret(&l.push(value.into_vec())),
            ListCall::Pop => ret(&l.pop().map(ByteBuf::from)),
            ListCall::Insert { index: i, value } => {
                let i = if i == l.len() as u64 {
                    l.len()
                } else {
                    index(i, l.len())?
                };
                ret(&l.insert(i, value.into_vec()))
            }
            ListCall::Remove { index: i } => {
                let i = index(i, l.len())?;
                ret(&ByteBuf::from(l.remove(i)))
            }
            ListCall::Extend { items } => ret(&l.extend(items.into_iter().map(ByteBuf::into_vec))),
            ListCall::Clear => ret(&l.clear()),
        }
    }
}

impl Object for List {
    fn kind(&self) -> &str {
        if self.fixed { "array" } else { "list" }
    }

    fn call(&self, _: &Ctx<'_>, method: &str, a: &[u8]) -> Result<Vec<u8>, Fault> {
        if let Some(call) = SeqCall::decode(method, a)? {
            return self.seq_call(call);
        }
        let call = match self.fixed {
            false => ListCall::decode(method, a)?,
            true => None,
        };
        self.list_call(call.ok_or_else(|| unknown(self.kind(), method))?)
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

    /// The methods every queue has.
    fn queue_call(&self, cx: &Ctx<'_>, call: QueueCall) -> Result<Vec<u8>, Fault> {
        match call {
            QueueCall::Put { item, timeout } => {
                let max = self.max;
                let (mut q, room) = block(&self.state, &self.changed, cx, timeout, |q| {
                    (max == 0 || (q.items.len() as u64) < max).then_some(())
                })?;
                room.ok_or(Fault::Full)?;
                q.items.push_back(item.into_vec());
                q.unfinished += 1;
                drop(q);
                self.changed.notify_all();
                ret(&())
            }
            QueueCall::Get { timeout } => {
                let (q, item) = block(&self.state, &self.changed, cx, timeout, |q| {
                    q.items.pop_front()
                })?;
                drop(q);
                let item = item.ok_or(Fault::Empty)?;
                self.changed.notify_all();
                ret(Bytes::new(&item))
            }
            QueueCall::QSize => ret(&(lock(&self.state).items.len() as u64)),
            QueueCall::Empty => ret(&lock(&self.state).items.is_empty()),
            QueueCall::Full => {
                ret(&(self.max > 0 && lock(&self.state).items.len() as u64 >= self.max))
            }
        }
    }

    /// The methods only joinable queues have.
    fn joinable_call(&self, cx: &Ctx<'_>, call: JoinableCall) -> Result<Vec<u8>, Fault> {
        match call {
            JoinableCall::TaskDone => {
                let mut q = lock(&self.state);
                if q.unfinished == 0 {
                    return Err(Fault::TooManyTaskDone);
                }
                q.unfinished -= 1;
                drop(q);
                self.changed.notify_all();
                ret(&())
            }
            JoinableCall::Join { timeout } => {
                let done = wait_for(&self.state, &self.changed, cx, timeout, |q| {
                    (q.unfinished == 0).then_some(())
                })?;
                done.ok_or_else(|| Fault::Timeout(timeout.unwrap_or_default()))?;
                ret(&())
            }
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
        if let Some(call) = QueueCall::decode(method, a)? {
            return self.queue_call(cx, call);
        }
        let call = match self.joinable {
            true => JoinableCall::decode(method, a)?,
            false => None,
        };
        self.joinable_call(cx, call.ok_or_else(|| unknown(self.kind(), method))?)
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
        let call = NamespaceCall::decode(method, a)?;
        let call = call.ok_or_else(|| unknown(self.kind(), method))?;
        let mut ns = lock(&self.0);
        match call {
            NamespaceCall::Get { name } => ret(Bytes::new(ns.get(name).ok_or(Fault::KeyNotFound)?)),
            NamespaceCall::Set { name, value } => {
                ns.insert(name.to_string(), value.into_vec());
                ret(&())
            }
            NamespaceCall::Remove { name } => {
                ns.remove(name).ok_or(Fault::KeyNotFound)?;
                ret(&())
            }
            NamespaceCall::Contains { name } => ret(&ns.contains_key(name)),
            NamespaceCall::Names => ret(&ns.keys().collect::<Vec<_>>()),
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
        let call = ValueCall::decode(method, a)?.ok_or_else(|| unknown(self.kind(), method))?;
        let mut v = lock(&self.0);
        match call {
            ValueCall::Get => ret(Bytes::new(&v)),
            ValueCall::Set { value } => {
                *v = value.into_vec();
                ret(&())
            }
            ValueCall::Swap { value } => {
                ret(Bytes::new(&std::mem::replace(&mut *v, value.into_vec())))
            }
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
        let call = LockCall::decode(method, a)?;
        match call.ok_or_else(|| unknown(self.kind(), method))? {
            LockCall::Acquire { timeout } => {
                let r = self.reentrant;
                let got = wait_for(&self.holder, &self.freed, cx, timeout, |h| {
                    h.try_take(cx.owner, r)
                })?;
                ret(&got.is_some())
            }
            LockCall::Release => {
                if lock(&self.holder).release(cx.owner, self.reentrant)? {
                    self.freed.notify_one();
                }
                ret(&())
            }
            LockCall::Locked => ret(&lock(&self.holder).owner.is_some()),
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
        let call = SemaphoreCall::decode(method, a)?;
        match call.ok_or_else(|| unknown(self.kind(), method))? {
            SemaphoreCall::Acquire { timeout } => {
                let got = wait_for(&self.value, &self.changed, cx, timeout, |v| {
                    (*v > 0).then(|| *v -= 1)
                })?;
                ret(&got.is_some())
            }
            SemaphoreCall::Release { n } => {
                let mut v = lock(&self.value);
                let bound = self.bound.unwrap_or(u64::MAX);
                let new = v.checked_add(n).filter(|new| *new <= bound);
                *v = new.ok_or(Fault::OverReleased { bound })?;
                drop(v);
                self.changed.notify_all();
                ret(&())
            }
            SemaphoreCall::Value => ret(&*lock(&self.value)),
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
        let call = EventCall::decode(method, a)?;
        match call.ok_or_else(|| unknown(self.kind(), method))? {
            call @ (EventCall::Set | EventCall::Clear) => {
                *lock(&self.set) = matches!(call, EventCall::Set);
                self.changed.notify_all();
                ret(&())
            }
            EventCall::IsSet => ret(&*lock(&self.set)),
            EventCall::Wait { timeout } => {
                let set = wait_for(&self.set, &self.changed, cx, timeout, |s| s.then_some(()))?;
                ret(&set.is_some())
            }
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
        let call = ConditionCall::decode(method, a)?;
        match call.ok_or_else(|| unknown(self.kind(), method))? {
            ConditionCall::Acquire { timeout } => {
                let got = wait_for(&self.state, &self.changed, cx, timeout, |s| {
                    s.holder.try_take(cx.owner, true)
                })?;
                ret(&got.is_some())
            }
            ConditionCall::Release => {
                if lock(&self.state).holder.release(cx.owner, true)? {
                    self.changed.notify_all();
                }
                ret(&())
            }
            ConditionCall::Wait { timeout } => ret(&self.wait(cx, timeout)?),
            ConditionCall::Notify { n } => {
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
        let call = BarrierCall::decode(method, a)?;
        match call.ok_or_else(|| unknown(self.kind(), method))? {
            BarrierCall::Wait { timeout } => ret(&self.wait(cx, timeout)?),
            BarrierCall::Abort => ret(&self.abort()),
            BarrierCall::Reset => {
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
            BarrierCall::Parties => ret(&self.parties),
            BarrierCall::NWaiting => ret(&lock(&self.state).count),
            BarrierCall::Broken => ret(&lock(&self.state).broken),
        }
    }
}
