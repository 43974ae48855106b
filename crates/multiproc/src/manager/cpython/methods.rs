//! The SyncManager type ids and their methods, as CPython's proxies call them, mapped onto
//! the manager's own objects (whose calls and faults are those of [`wire`](super::super::wire)).
//!
//! Items are kept as the encoding of a [`PyValue`], so Rust proxies with `PyValue` items
//! share them. Python's argument conventions (positional or keyword, `block`/`timeout`,
//! negative indices) are checked here, and faults become the exceptions Python code
//! catches (`KeyError`, `queue.Empty`, `threading.BrokenBarrierError`).

use std::cmp::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;

use super::value::{ExcClass, PyException, PyValue};
use crate::codec;
use crate::manager::objects::{Ctx, Object, create_builtin, lock};
use crate::manager::wire::{
    BarrierCall, Call, ConditionCall, DictCall, EventCall, Fault, JoinableCall, ListCall, LockCall,
    NamespaceCall, New, QueueCall, SemaphoreCall, SeqCall, ValueCall,
};

type Py<T> = Result<T, PyException>;

fn exc(class: ExcClass, message: impl Into<String>) -> PyException {
    PyException::new(class, message)
}

fn type_error(message: impl Into<String>) -> PyException {
    exc(ExcClass::TypeError, message)
}

impl From<Fault> for PyException {
    fn from(f: Fault) -> PyException {
        use ExcClass::*;
        match f {
            Fault::Empty => exc(QueueEmpty, ""),
            Fault::Full => exc(QueueFull, ""),
            Fault::BrokenBarrier => exc(BrokenBarrierError, ""),
            Fault::KeyNotFound => exc(KeyError, ""),
            Fault::IndexOutOfRange { .. } => exc(IndexError, "list index out of range"),
            Fault::NotLocked => exc(RuntimeError, "release unlocked lock"),
            Fault::NotOwner => exc(RuntimeError, "cannot release un-acquired lock"),
            Fault::OverReleased { .. } => exc(ValueError, "Semaphore released too many times"),
            Fault::TooManyTaskDone => exc(ValueError, "task_done() called too many times"),
            Fault::Timeout(_) => exc(TimeoutError, ""),
            Fault::UnknownMethod { kind, method } => exc(
                AttributeError,
                format!("'{kind}' object has no method '{method}'"),
            ),
            Fault::Invalid(m) => exc(RuntimeError, m),
            other => exc(RuntimeError, format!("{other:?}")),
        }
    }
}

/// The kinds of object a CPython client can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Dict,
    List,
    Array,
    Queue,
    Namespace,
    Value,
    Lock,
    Semaphore,
    Condition,
    Event,
    Barrier,
    Iterator,
}

/// The kind of this crate's iterator objects (a dict's `__iter__`).
pub(super) const ITERATOR_KIND: &str = "py_iterator";

impl Kind {
    /// The kind of an object of the manager (by [`Object::kind`]).
    pub(super) fn of(kind: &str) -> Option<Kind> {
        Some(match kind {
            "dict" => Kind::Dict,
            "list" => Kind::List,
            "array" => Kind::Array,
            "queue" | "joinable_queue" => Kind::Queue,
            "namespace" => Kind::Namespace,
            "value" => Kind::Value,
            "lock" | "rlock" => Kind::Lock,
            "semaphore" => Kind::Semaphore,
            "condition" => Kind::Condition,
            "event" => Kind::Event,
            "barrier" => Kind::Barrier,
            ITERATOR_KIND => Kind::Iterator,
            _ => return None,
        })
    }

    /// The methods CPython's proxy for this kind calls (what `create` reports as exposed).
    pub(super) fn exposed(self) -> &'static [&'static str] {
        match self {
            Kind::Dict => &[
                "__contains__",
                "__delitem__",
                "__getitem__",
                "__iter__",
                "__len__",
                "__setitem__",
                "clear",
                "copy",
                "get",
                "items",
                "keys",
                "pop",
                "popitem",
                "setdefault",
                "update",
                "values",
            ],
            Kind::List => &[
                "__add__",
                "__contains__",
                "__delitem__",
                "__getitem__",
                "__len__",
                "__mul__",
                "__reversed__",
                "__rmul__",
                "__setitem__",
                "append",
                "count",
                "extend",
                "index",
                "insert",
                "pop",
                "remove",
                "reverse",
                "sort",
                "__imul__",
            ],
            Kind::Array => &["__len__", "__getitem__", "__setitem__"],
            Kind::Queue => &[
                "empty",
                "full",
                "get",
                "get_nowait",
                "join",
                "put",
                "put_nowait",
                "qsize",
                "task_done",
            ],
            Kind::Namespace => &["__getattribute__", "__setattr__", "__delattr__"],
            Kind::Value => &["get", "set"],
            Kind::Lock | Kind::Semaphore => &["acquire", "release"],
            Kind::Condition => &["acquire", "release", "wait", "notify", "notify_all"],
            Kind::Event => &["is_set", "set", "clear", "wait"],
            Kind::Barrier => &["__getattribute__", "wait", "abort", "reset"],
            Kind::Iterator => &["__next__", "send", "throw", "close"],
        }
    }
}

/// What a method gives back.
pub(super) enum Outcome {
    Value(PyValue),
    /// A new iterator over these items (`#PROXY` to an `Iterator`).
    Iter(Vec<PyValue>),
}

/// Encodes an item as the objects keep it.
pub(super) fn enc(v: &PyValue) -> Py<ByteBuf> {
    codec::encode(v)
        .map(ByteBuf::from)
        .map_err(|e| type_error(format!("cannot store the value: {e}")))
}

/// Decodes an item the objects kept.
pub(super) fn dec(b: &[u8]) -> Py<PyValue> {
    codec::decode(b).map_err(|_| {
        type_error(
            "this item was stored by a Rust client as a type with no Python form; store \
             multiproc::manager::PyValue items to share them with Python",
        )
    })
}

/// Makes a built-in call and decodes its result.
fn call<T: DeserializeOwned>(obj: &dyn Object, cx: &Ctx<'_>, c: impl Call) -> Result<T, Fault> {
    let args = c.encode_args().map_err(|e| Fault::Invalid(e.to_string()))?;
    let out = obj.call(cx, c.name(), &args)?;
    codec::decode(&out).map_err(|e| Fault::Invalid(format!("unexpected result: {e}")))
}

/// Python's argument binding: positional, then keywords, into `params`; the first
/// `required` must be given.
fn bind(
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(String, PyValue)>,
    params: &[&str],
    required: usize,
) -> Py<Vec<Option<PyValue>>> {
    if args.len() > params.len() {
        return Err(type_error(format!(
            "{method}() takes at most {} arguments ({} given)",
            params.len(),
            args.len()
        )));
    }
    let mut out: Vec<Option<PyValue>> = args.into_iter().map(Some).collect();
    out.resize(params.len(), None);
    for (k, v) in kwds {
        let i = params.iter().position(|p| *p == k).ok_or_else(|| {
            type_error(format!(
                "{method}() got an unexpected keyword argument '{k}'"
            ))
        })?;
        if out[i].replace(v).is_some() {
            return Err(type_error(format!(
                "{method}() got multiple values for argument '{k}'"
            )));
        }
    }
    if let Some(i) = out[..required].iter().position(Option::is_none) {
        return Err(type_error(format!(
            "{method}() missing required argument '{}'",
            params[i]
        )));
    }
    Ok(out)
}

fn int(v: &PyValue, what: &str) -> Py<i128> {
    v.as_int()
        .ok_or_else(|| type_error(format!("{what} must be an int, not {}", v.type_name())))
}

fn count(v: &PyValue, what: &str) -> Py<u64> {
    let n = int(v, what)?;
    u64::try_from(n).map_err(|_| exc(ExcClass::ValueError, format!("{what} must be >= 0")))
}

/// A timeout in seconds (`None`: for ever).
fn seconds(v: Option<&PyValue>) -> Py<Option<Duration>> {
    let secs = match v {
        None | Some(PyValue::None) => return Ok(None),
        Some(PyValue::Float(f)) => *f,
        Some(v) => int(v, "timeout")? as f64,
    };
    if secs.is_nan() || secs < 0.0 {
        return Err(exc(
            ExcClass::ValueError,
            "'timeout' must be a non-negative number",
        ));
    }
    Ok(Some(
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX),
    ))
}

/// `block`/`timeout` as a queue takes them.
fn block_timeout(block: Option<&PyValue>, timeout: Option<&PyValue>) -> Py<Option<Duration>> {
    if block.is_some_and(|b| !b.truthy()) {
        return Ok(Some(Duration::ZERO));
    }
    seconds(timeout)
}

/// `blocking`/`timeout` as `threading.Lock.acquire` takes them (`-1`: for ever).
fn lock_timeout(blocking: Option<&PyValue>, timeout: Option<&PyValue>) -> Py<Option<Duration>> {
    let forever = matches!(timeout, None | Some(PyValue::None))
        || timeout.and_then(PyValue::as_int) == Some(-1)
        || timeout == Some(&PyValue::Float(-1.0));
    if blocking.is_some_and(|b| !b.truthy()) {
        if !forever {
            return Err(exc(
                ExcClass::ValueError,
                "can't specify a timeout for a non-blocking call",
            ));
        }
        return Ok(Some(Duration::ZERO));
    }
    if forever {
        return Ok(None);
    }
    seconds(timeout)
}

/// Items of an iterable sent by value (a list, tuple, set, or a dict's keys).
fn iterable(v: PyValue) -> Py<Vec<PyValue>> {
    match v {
        PyValue::List(v) | PyValue::Tuple(v) | PyValue::Set(v) | PyValue::FrozenSet(v) => Ok(v),
        PyValue::Dict(d) => Ok(d.into_iter().map(|(k, _)| k).collect()),
        PyValue::Str(s) => Ok(s.chars().map(|c| PyValue::Str(c.to_string())).collect()),
        PyValue::Bytes(b) | PyValue::ByteArray(b) => {
            Ok(b.into_iter().map(|x| PyValue::Int(x.into())).collect())
        }
        other => Err(type_error(format!(
            "'{}' object is not iterable",
            other.type_name()
        ))),
    }
}

/// Key/value pairs of a mapping or a sequence of pairs (`dict(...)`, `update(...)`).
fn pairs(v: PyValue) -> Py<Vec<(PyValue, PyValue)>> {
    match v {
        PyValue::Dict(d) => Ok(d),
        other => iterable(other)?
            .into_iter()
            .map(|p| match p {
                PyValue::Tuple(mut t) | PyValue::List(mut t) if t.len() == 2 => {
                    let v = t.pop().unwrap_or(PyValue::None);
                    let k = t.pop().unwrap_or(PyValue::None);
                    Ok((k, v))
                }
                _ => Err(exc(
                    ExcClass::ValueError,
                    "dictionary update sequence element has length other than 2",
                )),
            })
            .collect(),
    }
}

fn kw_pairs(kwds: Vec<(String, PyValue)>) -> Vec<(PyValue, PyValue)> {
    kwds.into_iter()
        .map(|(k, v)| (PyValue::Str(k), v))
        .collect()
}

fn none() -> Py<Outcome> {
    Ok(Outcome::Value(PyValue::None))
}

fn val(v: PyValue) -> Py<Outcome> {
    Ok(Outcome::Value(v))
}

/// Creates the object a SyncManager type id names, from Python's constructor arguments;
/// `None` when `typeid` is not one of them.
pub(super) fn create(
    typeid: &str,
    args: Vec<PyValue>,
    kwds: Vec<(String, PyValue)>,
    cx: &Ctx<'_>,
) -> Option<Py<Box<dyn Object>>> {
    let new = |n: New| -> Py<Box<dyn Object>> {
        let init = n.encode_args().map_err(|e| type_error(e.to_string()))?;
        match create_builtin(n.name(), &init) {
            Some(r) => r.map_err(PyException::from),
            None => Err(type_error("unknown kind")),
        }
    };
    let semaphore = |args, kwds, bounded: bool| -> Py<Box<dyn Object>> {
        let b = bind(typeid, args, kwds, &["value"], 0)?;
        let value = match &b[0] {
            Some(v) => {
                let n = int(v, "value")?;
                u64::try_from(n).map_err(|_| {
                    exc(ExcClass::ValueError, "semaphore initial value must be >= 0")
                })?
            }
            None => 1,
        };
        new(if bounded {
            New::BoundedSemaphore { value }
        } else {
            New::Semaphore { value }
        })
    };
    if !TYPEIDS.contains(&typeid) {
        return None;
    }
    Some((|| match typeid {
        "dict" => {
            let b = bind(typeid, args, Vec::new(), &["mapping"], 0)?;
            let mut entries = match b.into_iter().next().flatten() {
                Some(m) => pairs(m)?,
                None => Vec::new(),
            };
            entries.extend(kw_pairs(kwds));
            let obj = new(New::Dict)?;
            update(&*obj, cx, entries)?;
            Ok(obj)
        }
        "list" => {
            let b = bind(typeid, args, kwds, &["iterable"], 0)?;
            let items = match b.into_iter().next().flatten() {
                Some(v) => iterable(v)?,
                None => Vec::new(),
            };
            let obj = new(New::List)?;
            extend(&*obj, cx, items)?;
            Ok(obj)
        }
        "Queue" | "JoinableQueue" => {
            let b = bind(typeid, args, kwds, &["maxsize"], 0)?;
            let maxsize = match &b[0] {
                // Python's queue: maxsize <= 0 is unbounded.
                Some(v) => u64::try_from(int(v, "maxsize")?).unwrap_or(0),
                None => 0,
            };
            new(New::JoinableQueue { maxsize })
        }
        "Namespace" => {
            if !args.is_empty() {
                return Err(type_error("Namespace() takes keyword arguments only"));
            }
            let obj = new(New::Namespace)?;
            for (name, value) in kwds {
                call::<()>(
                    &*obj,
                    cx,
                    NamespaceCall::Set {
                        name: &name,
                        value: enc(&value)?,
                    },
                )?;
            }
            Ok(obj)
        }
        "Value" => {
            let b = bind(typeid, args, kwds, &["typecode", "value", "lock"], 2)?;
            let value = b.into_iter().nth(1).flatten().unwrap_or(PyValue::None);
            new(New::Value {
                value: enc(&value)?,
            })
        }
        "Array" => {
            let b = bind(typeid, args, kwds, &["typecode", "sequence", "lock"], 2)?;
            let seq = b.into_iter().nth(1).flatten().unwrap_or(PyValue::None);
            let items = iterable(seq)?.iter().map(enc).collect::<Py<_>>()?;
            new(New::Array { items })
        }
        "Lock" | "RLock" | "Event" => {
            bind(typeid, args, kwds, &[], 0)?;
            new(match typeid {
                "Lock" => New::Lock,
                "RLock" => New::RLock,
                _ => New::Event,
            })
        }
        "Semaphore" => semaphore(args, kwds, false),
        "BoundedSemaphore" => semaphore(args, kwds, true),
        "Condition" => {
            let b = bind(typeid, args, kwds, &["lock"], 0)?;
            if b[0].as_ref().is_some_and(|l| *l != PyValue::None) {
                return Err(type_error(
                    "Condition(lock) with a lock of its own is not supported by this server",
                ));
            }
            new(New::Condition)
        }
        "Barrier" => {
            let b = bind(typeid, args, kwds, &["parties", "action", "timeout"], 1)?;
            if b[1..]
                .iter()
                .any(|v| v.as_ref().is_some_and(|v| *v != PyValue::None))
            {
                return Err(type_error(
                    "Barrier(action=, timeout=) is not supported by this server",
                ));
            }
            let parties = b[0].as_ref().map(|p| count(p, "parties")).transpose()?;
            new(New::Barrier {
                parties: parties.unwrap_or(0),
            })
        }
        _ => Err(type_error(format!("unknown type id {typeid}"))),
    })())
}

/// The SyncManager type ids this server creates (`Pool` is not one of them).
pub(super) const TYPEIDS: &[&str] = &[
    "dict",
    "list",
    "Queue",
    "JoinableQueue",
    "Namespace",
    "Value",
    "Array",
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "Barrier",
];

fn update(obj: &dyn Object, cx: &Ctx<'_>, entries: Vec<(PyValue, PyValue)>) -> Py<()> {
    let entries = entries
        .iter()
        .map(|(k, v)| Ok((enc(k)?, enc(v)?)))
        .collect::<Py<_>>()?;
    Ok(call(obj, cx, DictCall::Update { entries })?)
}

fn extend(obj: &dyn Object, cx: &Ctx<'_>, items: Vec<PyValue>) -> Py<()> {
    let items = items.iter().map(enc).collect::<Py<_>>()?;
    Ok(call(obj, cx, ListCall::Extend { items })?)
}

fn items(obj: &dyn Object, cx: &Ctx<'_>) -> Py<Vec<(PyValue, PyValue)>> {
    let all: Vec<(ByteBuf, ByteBuf)> = call(obj, cx, DictCall::Items)?;
    all.iter().map(|(k, v)| Ok((dec(k)?, dec(v)?))).collect()
}

fn to_vec(obj: &dyn Object, cx: &Ctx<'_>) -> Py<Vec<PyValue>> {
    let all: Vec<ByteBuf> = call(obj, cx, SeqCall::ToVec)?;
    all.iter().map(|b| dec(b)).collect()
}

fn opt(b: Option<ByteBuf>) -> Py<Option<PyValue>> {
    b.map(|b| dec(&b)).transpose()
}

fn key_error(key: PyValue) -> PyException {
    PyException {
        class: ExcClass::KeyError,
        args: vec![key],
    }
}

/// A Python index (negative from the end) into a sequence of `len`.
fn seq_index(i: &PyValue, len: u64, what: &str) -> Py<u64> {
    let i = match i {
        PyValue::Int(_) | PyValue::Bool(_) => int(i, "index")?,
        other => {
            return Err(type_error(format!(
                "{what} indices must be integers, not {}",
                other.type_name()
            )));
        }
    };
    let j = if i < 0 { i + i128::from(len) } else { i };
    u64::try_from(j)
        .ok()
        .filter(|j| *j < len)
        .ok_or_else(|| exc(ExcClass::IndexError, format!("{what} index out of range")))
}

/// Calls `method` of `obj` (a `kind`) as CPython's proxy sends it.
pub(super) fn call_method(
    kind: Kind,
    obj: &dyn Object,
    cx: &Ctx<'_>,
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(String, PyValue)>,
) -> Py<Outcome> {
    if method == "__repr__" || method == "__str__" {
        bind(method, args, kwds, &[], 0)?;
        return val(PyValue::Str(repr_of(kind, obj, cx)?));
    }
    match kind {
        Kind::Dict => dict(obj, cx, method, args, kwds),
        Kind::List | Kind::Array => list(kind, obj, cx, method, args, kwds),
        Kind::Queue => queue(obj, cx, method, args, kwds),
        Kind::Namespace => namespace(obj, cx, method, args, kwds),
        Kind::Value => {
            let b = bind(
                method,
                args,
                kwds,
                if method == "set" { &["value"] } else { &[] },
                usize::from(method == "set"),
            )?;
            match method {
                "get" | "#GETVALUE" => val(dec(&call::<ByteBuf>(obj, cx, ValueCall::Get)?)?),
                "set" => {
                    let value = enc(b[0].as_ref().unwrap_or(&PyValue::None))?;
                    call::<()>(obj, cx, ValueCall::Set { value })?;
                    none()
                }
                _ => Err(not_exposed(kind, method)),
            }
        }
        Kind::Lock | Kind::Semaphore | Kind::Condition => {
            acquirer(kind, obj, cx, method, args, kwds)
        }
        Kind::Event => {
            let b = bind(
                method,
                args,
                kwds,
                if method == "wait" { &["timeout"] } else { &[] },
                0,
            )?;
            match method {
                "is_set" => val(PyValue::Bool(call(obj, cx, EventCall::IsSet)?)),
                "set" => {
                    call::<()>(obj, cx, EventCall::Set)?;
                    none()
                }
                "clear" => {
                    call::<()>(obj, cx, EventCall::Clear)?;
                    none()
                }
                "wait" => {
                    let timeout = seconds(b[0].as_ref())?;
                    val(PyValue::Bool(call(obj, cx, EventCall::Wait { timeout })?))
                }
                _ => Err(not_exposed(kind, method)),
            }
        }
        Kind::Barrier => barrier(obj, cx, method, args, kwds),
        Kind::Iterator => match method {
            "__next__" => {
                bind(method, args, kwds, &[], 0)?;
                let next: Option<PyValue> = decode_out(obj.call(cx, "next", &[])?)?;
                next.map(Outcome::Value)
                    .ok_or_else(|| exc(ExcClass::StopIteration, ""))
            }
            "close" => none(),
            _ => Err(type_error(format!(
                "iterator.{method}() is not supported by this server"
            ))),
        },
    }
}

fn decode_out<T: DeserializeOwned>(b: Vec<u8>) -> Py<T> {
    codec::decode(&b).map_err(|e| exc(ExcClass::RuntimeError, e.to_string()))
}

pub(super) fn not_exposed(kind: Kind, method: &str) -> PyException {
    exc(
        ExcClass::AttributeError,
        format!("method '{method}' of {kind:?} object is not exposed"),
    )
}

fn dict(
    obj: &dyn Object,
    cx: &Ctx<'_>,
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(String, PyValue)>,
) -> Py<Outcome> {
    let one = |args: Vec<PyValue>, kwds| -> Py<PyValue> {
        Ok(bind(method, args, kwds, &["key"], 1)?
            .remove(0)
            .unwrap_or(PyValue::None))
    };
    match method {
        "__getitem__" => {
            let k = one(args, kwds)?;
            let v: Option<ByteBuf> = call(obj, cx, DictCall::Get { key: enc(&k)? })?;
            val(opt(v)?.ok_or_else(|| key_error(k))?)
        }
        "get" => {
            let mut b = bind(method, args, kwds, &["key", "default"], 1)?;
            let k = b[0].take().unwrap_or(PyValue::None);
            let v: Option<ByteBuf> = call(obj, cx, DictCall::Get { key: enc(&k)? })?;
            val(opt(v)?.or(b[1].take()).unwrap_or(PyValue::None))
        }
        "__setitem__" => {
            let mut b = bind(method, args, kwds, &["key", "value"], 2)?;
            let (k, v) = (
                b[0].take().unwrap_or(PyValue::None),
                b[1].take().unwrap_or(PyValue::None),
            );
            call::<()>(
                obj,
                cx,
                DictCall::Set {
                    key: enc(&k)?,
                    value: enc(&v)?,
                },
            )?;
            none()
        }
        "__delitem__" | "pop" => {
            let mut b = bind(method, args, kwds, &["key", "default"], 1)?;
            if method == "__delitem__" && b[1].is_some() {
                return Err(type_error("__delitem__() takes 1 argument"));
            }
            let k = b[0].take().unwrap_or(PyValue::None);
            let v: Option<ByteBuf> = call(obj, cx, DictCall::Remove { key: enc(&k)? })?;
            match (opt(v)?, b[1].take()) {
                (Some(v), _) if method == "pop" => val(v),
                (Some(_), _) => none(),
                (None, Some(d)) => val(d),
                (None, None) => Err(key_error(k)),
            }
        }
        "__contains__" => {
            let k = one(args, kwds)?;
            val(PyValue::Bool(call(
                obj,
                cx,
                DictCall::Contains { key: enc(&k)? },
            )?))
        }
        "__len__" => {
            bind(method, args, kwds, &[], 0)?;
            val(PyValue::Int(call::<u64>(obj, cx, DictCall::Len)?.into()))
        }
        "clear" => {
            bind(method, args, kwds, &[], 0)?;
            call::<()>(obj, cx, DictCall::Clear)?;
            none()
        }
        "copy" | "#GETVALUE" => {
            bind(method, args, kwds, &[], 0)?;
            val(PyValue::Dict(items(obj, cx)?))
        }
        "items" | "keys" | "values" | "__iter__" => {
            bind(method, args, kwds, &[], 0)?;
            let all = items(obj, cx)?;
            let out: Vec<PyValue> = match method {
                "items" => all
                    .into_iter()
                    .map(|(k, v)| PyValue::Tuple(vec![k, v]))
                    .collect(),
                "values" => all.into_iter().map(|(_, v)| v).collect(),
                _ => all.into_iter().map(|(k, _)| k).collect(),
            };
            if method == "__iter__" {
                Ok(Outcome::Iter(out))
            } else {
                val(PyValue::List(out))
            }
        }
        "popitem" => {
            bind(method, args, kwds, &[], 0)?;
            // The last entry, taken by its key (retried if another client took it first).
            loop {
                let Some((k, _)) = items(obj, cx)?.pop() else {
                    return Err(exc(ExcClass::KeyError, "popitem(): dictionary is empty"));
                };
                let v: Option<ByteBuf> = call(obj, cx, DictCall::Remove { key: enc(&k)? })?;
                if let Some(v) = opt(v)? {
                    return val(PyValue::Tuple(vec![k, v]));
                }
            }
        }
        "setdefault" => {
            let mut b = bind(method, args, kwds, &["key", "default"], 1)?;
            let k = b[0].take().unwrap_or(PyValue::None);
            let d = b[1].take().unwrap_or(PyValue::None);
            let v: ByteBuf = call(
                obj,
                cx,
                DictCall::SetDefault {
                    key: enc(&k)?,
                    default: enc(&d)?,
                },
            )?;
            val(dec(&v)?)
        }
        "update" => {
            let b = bind(method, args, Vec::new(), &["other"], 0)?;
            let mut entries = match b.into_iter().next().flatten() {
                Some(o) => pairs(o)?,
                None => Vec::new(),
            };
            entries.extend(kw_pairs(kwds));
            update(obj, cx, entries)?;
            none()
        }
        _ => Err(not_exposed(Kind::Dict, method)),
    }
}

fn list(
    kind: Kind,
    obj: &dyn Object,
    cx: &Ctx<'_>,
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(String, PyValue)>,
) -> Py<Outcome> {
    let len = || -> Py<u64> { Ok(call::<u64>(obj, cx, SeqCall::Len)?) };
    let what = if kind == Kind::Array { "array" } else { "list" };
    if kind == Kind::Array && !Kind::Array.exposed().contains(&method) && method != "#GETVALUE" {
        return Err(not_exposed(kind, method));
    }
    let arg = |args: Vec<PyValue>, kwds, name: &str| -> Py<PyValue> {
        Ok(bind(method, args, kwds, &[name], 1)?
            .remove(0)
            .unwrap_or(PyValue::None))
    };
    let replace = |items: Vec<PyValue>| -> Py<()> {
        call::<()>(obj, cx, ListCall::Clear)?;
        extend(obj, cx, items)
    };
    match method {
        "__len__" => {
            bind(method, args, kwds, &[], 0)?;
            val(PyValue::Int(len()?.into()))
        }
        "__getitem__" => {
            let i = arg(args, kwds, "index")?;
            if let PyValue::Slice(parts) = &i {
                let all = to_vec(obj, cx)?;
                return val(PyValue::List(slice(&all, parts)?));
            }
            let index = seq_index(&i, len()?, what)?;
            val(dec(&call::<ByteBuf>(obj, cx, SeqCall::Get { index })?)?)
        }
        "__setitem__" => {
            let mut b = bind(method, args, kwds, &["index", "value"], 2)?;
            let index = seq_index(b[0].as_ref().unwrap_or(&PyValue::None), len()?, what)?;
            let value = enc(&b[1].take().unwrap_or(PyValue::None))?;
            call::<()>(obj, cx, SeqCall::Set { index, value })?;
            none()
        }
        "__delitem__" => {
            let i = arg(args, kwds, "index")?;
            let index = seq_index(&i, len()?, what)?;
            call::<ByteBuf>(obj, cx, ListCall::Remove { index })?;
            none()
        }
        "__contains__" => {
            let v = arg(args, kwds, "value")?;
            val(PyValue::Bool(call(
                obj,
                cx,
                SeqCall::Contains { value: enc(&v)? },
            )?))
        }
        "#GETVALUE" => {
            bind(method, args, kwds, &[], 0)?;
            val(PyValue::List(to_vec(obj, cx)?))
        }
        "append" => {
            let v = arg(args, kwds, "object")?;
            call::<()>(obj, cx, ListCall::Push { value: enc(&v)? })?;
            none()
        }
        "extend" => {
            let v = arg(args, kwds, "iterable")?;
            extend(obj, cx, iterable(v)?)?;
            none()
        }
        "insert" => {
            let mut b = bind(method, args, kwds, &["index", "object"], 2)?;
            let n = i128::from(len()?);
            let i = int(b[0].as_ref().unwrap_or(&PyValue::None), "index")?;
            let i = if i < 0 { (i + n).max(0) } else { i.min(n) };
            let value = enc(&b[1].take().unwrap_or(PyValue::None))?;
            call::<()>(
                obj,
                cx,
                ListCall::Insert {
                    index: i as u64,
                    value,
                },
            )?;
            none()
        }
        "pop" => {
            let b = bind(method, args, kwds, &["index"], 0)?;
            let n = len()?;
            if n == 0 {
                return Err(exc(ExcClass::IndexError, "pop from empty list"));
            }
            let index = match &b[0] {
                Some(i) => seq_index(i, n, "pop")?,
                None => n - 1,
            };
            val(dec(&call::<ByteBuf>(obj, cx, ListCall::Remove { index })?)?)
        }
        "remove" | "index" | "count" => {
            let v = arg(args, kwds, "value")?;
            let all = to_vec(obj, cx)?;
            let at = all.iter().position(|x| *x == v);
            match (method, at) {
                ("count", _) => val(PyValue::Int(all.iter().filter(|x| **x == v).count() as i128)),
                ("index", Some(i)) => val(PyValue::Int(i as i128)),
                ("remove", Some(i)) => {
                    call::<ByteBuf>(obj, cx, ListCall::Remove { index: i as u64 })?;
                    none()
                }
                _ => Err(exc(
                    ExcClass::ValueError,
                    format!("{} is not in list", repr(&v)),
                )),
            }
        }
        "reverse" => {
            bind(method, args, kwds, &[], 0)?;
            let mut all = to_vec(obj, cx)?;
            all.reverse();
            replace(all)?;
            none()
        }
        "__reversed__" => {
            bind(method, args, kwds, &[], 0)?;
            let mut all = to_vec(obj, cx)?;
            all.reverse();
            val(PyValue::List(all))
        }
        "sort" => {
            let b = bind(method, Vec::new(), kwds, &["key", "reverse"], 0)?;
            if !args.is_empty() || b[0].as_ref().is_some_and(|k| *k != PyValue::None) {
                return Err(type_error(
                    "sort() with a key function is not supported by this server",
                ));
            }
            let mut all = to_vec(obj, cx)?;
            let mut failed = None;
            all.sort_by(|a, b| {
                compare(a, b).unwrap_or_else(|e| {
                    failed.get_or_insert(e);
                    Ordering::Equal
                })
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if b[1].as_ref().is_some_and(PyValue::truthy) {
                all.reverse();
            }
            replace(all)?;
            none()
        }
        "__add__" => {
            let other = arg(args, kwds, "other")?;
            let PyValue::List(other) = other else {
                return Err(type_error(format!(
                    "can only concatenate list (not \"{}\") to list",
                    other.type_name()
                )));
            };
            let mut all = to_vec(obj, cx)?;
            all.extend(other);
            val(PyValue::List(all))
        }
        "__mul__" | "__rmul__" | "__imul__" => {
            let n = arg(args, kwds, "n")?;
            let n = usize::try_from(int(&n, "n")?.max(0)).unwrap_or(usize::MAX);
            let all = to_vec(obj, cx)?;
            let total = all.len().saturating_mul(n);
            if total > 1 << 24 {
                return Err(exc(
                    ExcClass::OverflowError,
                    "the repeated list would be too long",
                ));
            }
            let out: Vec<PyValue> = (0..n).flat_map(|_| all.iter().cloned()).collect();
            if method == "__imul__" {
                replace(out)?;
                none()
            } else {
                val(PyValue::List(out))
            }
        }
        _ => Err(not_exposed(kind, method)),
    }
}

/// `items[start:stop:step]` with Python's rules (negative from the end, clamped).
fn slice(items: &[PyValue], parts: &[PyValue; 3]) -> Py<Vec<PyValue>> {
    let n = items.len() as i128;
    let get = |v: &PyValue| v.as_int();
    let step = get(&parts[2]).unwrap_or(1);
    if step == 0 {
        return Err(exc(ExcClass::ValueError, "slice step cannot be zero"));
    }
    let clamp = |v: i128, low: i128, high: i128| {
        let v = if v < 0 { v + n } else { v };
        v.clamp(low, high)
    };
    let mut out = Vec::new();
    if step > 0 {
        let start = get(&parts[0]).map_or(0, |v| clamp(v, 0, n));
        let stop = get(&parts[1]).map_or(n, |v| clamp(v, 0, n));
        let mut i = start;
        while i < stop {
            out.push(items[i as usize].clone());
            i += step;
        }
    } else {
        let start = get(&parts[0]).map_or(n - 1, |v| clamp(v, -1, n - 1));
        let stop = get(&parts[1]).map_or(-1, |v| clamp(v, -1, n - 1));
        let mut i = start;
        while i > stop {
            out.push(items[i as usize].clone());
            i += step;
        }
    }
    Ok(out)
}

/// Python's `<` on plain data, where it is defined.
fn compare(a: &PyValue, b: &PyValue) -> Py<Ordering> {
    use PyValue::*;
    let num = |v: &PyValue| match v {
        Int(i) => Some(*i as f64),
        Bool(b) => Some(f64::from(u8::from(*b))),
        Float(f) => Some(*f),
        _ => Option::None,
    };
    Ok(match (a, b) {
        (Int(x), Int(y)) => x.cmp(y),
        (Str(x), Str(y)) => x.cmp(y),
        (Bytes(x), Bytes(y)) => x.cmp(y),
        (List(x), List(y)) | (Tuple(x), Tuple(y)) => {
            for (p, q) in x.iter().zip(y) {
                if p != q {
                    return compare(p, q);
                }
            }
            x.len().cmp(&y.len())
        }
        _ => match (num(a), num(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => {
                return Err(type_error(format!(
                    "'<' not supported between instances of '{}' and '{}'",
                    a.type_name(),
                    b.type_name()
                )));
            }
        },
    })
}

fn queue(
    obj: &dyn Object,
    cx: &Ctx<'_>,
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(String, PyValue)>,
) -> Py<Outcome> {
    match method {
        "put" | "put_nowait" => {
            let params: &[&str] = if method == "put" {
                &["item", "block", "timeout"]
            } else {
                &["item"]
            };
            let mut b = bind(method, args, kwds, params, 1)?;
            let timeout = if method == "put" {
                block_timeout(b[1].as_ref(), b[2].as_ref())?
            } else {
                Some(Duration::ZERO)
            };
            let item = enc(&b[0].take().unwrap_or(PyValue::None))?;
            call::<()>(obj, cx, QueueCall::Put { item, timeout })?;
            none()
        }
        "get" | "get_nowait" => {
            let params: &[&str] = if method == "get" {
                &["block", "timeout"]
            } else {
                &[]
            };
            let b = bind(method, args, kwds, params, 0)?;
            let timeout = if method == "get" {
                block_timeout(b[0].as_ref(), b[1].as_ref())?
            } else {
                Some(Duration::ZERO)
            };
            val(dec(&call::<ByteBuf>(obj, cx, QueueCall::Get { timeout })?)?)
        }
        "qsize" | "empty" | "full" | "task_done" | "join" => {
            bind(method, args, kwds, &[], 0)?;
            match method {
                "qsize" => val(PyValue::Int(call::<u64>(obj, cx, QueueCall::QSize)?.into())),
                "empty" => val(PyValue::Bool(call(obj, cx, QueueCall::Empty)?)),
                "full" => val(PyValue::Bool(call(obj, cx, QueueCall::Full)?)),
                "task_done" => {
                    call::<()>(obj, cx, JoinableCall::TaskDone)?;
                    none()
                }
                _ => {
                    call::<()>(obj, cx, JoinableCall::Join { timeout: None })?;
                    none()
                }
            }
        }
        _ => Err(not_exposed(Kind::Queue, method)),
    }
}

fn namespace(
    obj: &dyn Object,
    cx: &Ctx<'_>,
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(String, PyValue)>,
) -> Py<Outcome> {
    let params: &[&str] = if method == "__setattr__" {
        &["name", "value"]
    } else {
        &["name"]
    };
    let mut b = match method {
        "#GETVALUE" => {
            return Err(type_error(
                "a Namespace has no value form here; read its attributes",
            ));
        }
        _ => bind(method, args, kwds, params, params.len())?,
    };
    let name = match b[0].take() {
        Some(PyValue::Str(s)) => s,
        _ => return Err(type_error("attribute name must be string")),
    };
    let missing = || {
        exc(
            ExcClass::AttributeError,
            format!("'Namespace' object has no attribute '{name}'"),
        )
    };
    match method {
        "__getattribute__" => {
            let v: ByteBuf = call(obj, cx, NamespaceCall::Get { name: &name }).map_err(|f| {
                if matches!(f, Fault::KeyNotFound) {
                    missing()
                } else {
                    f.into()
                }
            })?;
            val(dec(&v)?)
        }
        "__setattr__" => {
            let value = enc(&b[1].take().unwrap_or(PyValue::None))?;
            call::<()>(obj, cx, NamespaceCall::Set { name: &name, value })?;
            none()
        }
        "__delattr__" => {
            call::<()>(obj, cx, NamespaceCall::Remove { name: &name }).map_err(|f| {
                if matches!(f, Fault::KeyNotFound) {
                    missing()
                } else {
                    f.into()
                }
            })?;
            none()
        }
        _ => Err(not_exposed(Kind::Namespace, method)),
    }
}

fn acquirer(
    kind: Kind,
    obj: &dyn Object,
    cx: &Ctx<'_>,
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(String, PyValue)>,
) -> Py<Outcome> {
    match method {
        "acquire" => {
            let b = bind(method, args, kwds, &["blocking", "timeout"], 0)?;
            let got: bool = match kind {
                Kind::Lock => call(
                    obj,
                    cx,
                    LockCall::Acquire {
                        timeout: lock_timeout(b[0].as_ref(), b[1].as_ref())?,
                    },
                )?,
                Kind::Semaphore => {
                    let timeout = if b[0].as_ref().is_some_and(|x| !x.truthy()) {
                        if b[1].as_ref().is_some_and(|t| *t != PyValue::None) {
                            return Err(exc(
                                ExcClass::ValueError,
                                "can't specify timeout for non-blocking acquire",
                            ));
                        }
                        Some(Duration::ZERO)
                    } else {
                        seconds(b[1].as_ref())?
                    };
                    call(obj, cx, SemaphoreCall::Acquire { timeout })?
                }
                _ => call(
                    obj,
                    cx,
                    ConditionCall::Acquire {
                        timeout: lock_timeout(b[0].as_ref(), b[1].as_ref())?,
                    },
                )?,
            };
            val(PyValue::Bool(got))
        }
        "release" => {
            let b = bind(
                method,
                args,
                kwds,
                if kind == Kind::Semaphore { &["n"] } else { &[] },
                0,
            )?;
            match kind {
                Kind::Lock => call::<()>(obj, cx, LockCall::Release)?,
                Kind::Semaphore => {
                    let n = b[0]
                        .as_ref()
                        .map(|n| count(n, "n"))
                        .transpose()?
                        .unwrap_or(1);
                    if n == 0 {
                        return Err(exc(ExcClass::ValueError, "n must be one or more"));
                    }
                    call::<()>(obj, cx, SemaphoreCall::Release { n })?
                }
                _ => call::<()>(obj, cx, ConditionCall::Release).map_err(|f| match f {
                    Fault::NotLocked | Fault::NotOwner => {
                        exc(ExcClass::RuntimeError, "cannot release un-acquired lock")
                    }
                    f => f.into(),
                })?,
            }
            none()
        }
        "wait" | "notify" | "notify_all" if kind == Kind::Condition => {
            let not_held = |f: Fault, what: &str| match f {
                Fault::Invalid(_) => exc(
                    ExcClass::RuntimeError,
                    format!("cannot {what} un-acquired lock"),
                ),
                f => f.into(),
            };
            match method {
                "wait" => {
                    let b = bind(method, args, kwds, &["timeout"], 0)?;
                    let timeout = seconds(b[0].as_ref())?;
                    let woken: bool = call(obj, cx, ConditionCall::Wait { timeout })
                        .map_err(|f| not_held(f, "wait on"))?;
                    val(PyValue::Bool(woken))
                }
                "notify" => {
                    let b = bind(method, args, kwds, &["n"], 0)?;
                    let n = b[0]
                        .as_ref()
                        .map(|n| count(n, "n"))
                        .transpose()?
                        .unwrap_or(1);
                    call::<()>(obj, cx, ConditionCall::Notify { n })
                        .map_err(|f| not_held(f, "notify on"))?;
                    none()
                }
                _ => {
                    bind(method, args, kwds, &[], 0)?;
                    call::<()>(obj, cx, ConditionCall::Notify { n: u64::MAX })
                        .map_err(|f| not_held(f, "notify on"))?;
                    none()
                }
            }
        }
        _ => Err(not_exposed(kind, method)),
    }
}

fn barrier(
    obj: &dyn Object,
    cx: &Ctx<'_>,
    method: &str,
    args: Vec<PyValue>,
    kwds: Vec<(String, PyValue)>,
) -> Py<Outcome> {
    match method {
        "wait" => {
            let b = bind(method, args, kwds, &["timeout"], 0)?;
            let timeout = seconds(b[0].as_ref())?;
            val(PyValue::Int(
                call::<u64>(obj, cx, BarrierCall::Wait { timeout })?.into(),
            ))
        }
        "abort" | "reset" => {
            bind(method, args, kwds, &[], 0)?;
            let c = if method == "abort" {
                BarrierCall::Abort
            } else {
                BarrierCall::Reset
            };
            call::<()>(obj, cx, c)?;
            none()
        }
        "__getattribute__" => {
            let b = bind(method, args, kwds, &["name"], 1)?;
            match b[0].as_ref().and_then(PyValue::as_str) {
                Some("parties") => val(PyValue::Int(
                    call::<u64>(obj, cx, BarrierCall::Parties)?.into(),
                )),
                Some("n_waiting") => val(PyValue::Int(
                    call::<u64>(obj, cx, BarrierCall::NWaiting)?.into(),
                )),
                Some("broken") => val(PyValue::Bool(call(obj, cx, BarrierCall::Broken)?)),
                other => Err(exc(
                    ExcClass::AttributeError,
                    format!(
                        "'Barrier' object has no attribute {:?}",
                        other.unwrap_or("")
                    ),
                )),
            }
        }
        _ => Err(not_exposed(Kind::Barrier, method)),
    }
}

fn repr_of(kind: Kind, obj: &dyn Object, cx: &Ctx<'_>) -> Py<String> {
    Ok(match kind {
        Kind::Dict => repr(&PyValue::Dict(items(obj, cx)?)),
        Kind::List => repr(&PyValue::List(to_vec(obj, cx)?)),
        Kind::Array => format!("array({})", repr(&PyValue::List(to_vec(obj, cx)?))),
        Kind::Value => format!(
            "Value({})",
            repr(&dec(&call::<ByteBuf>(obj, cx, ValueCall::Get)?)?)
        ),
        Kind::Namespace => {
            let names: Vec<String> = call(obj, cx, NamespaceCall::Names)?;
            let mut parts = Vec::new();
            for n in names {
                let v: ByteBuf = call(obj, cx, NamespaceCall::Get { name: &n })?;
                parts.push(format!("{n}={}", repr(&dec(&v)?)));
            }
            format!("Namespace({})", parts.join(", "))
        }
        other => format!("<{other:?} object>"),
    })
}

/// Python's `repr` of plain data.
pub(super) fn repr(v: &PyValue) -> String {
    let seq = |items: &[PyValue]| items.iter().map(repr).collect::<Vec<_>>().join(", ");
    match v {
        PyValue::None => "None".into(),
        PyValue::Bool(true) => "True".into(),
        PyValue::Bool(false) => "False".into(),
        PyValue::Int(i) => i.to_string(),
        PyValue::Float(f) if f.is_nan() => "nan".into(),
        PyValue::Float(f) if f.is_infinite() => if *f > 0.0 { "inf" } else { "-inf" }.into(),
        PyValue::Float(f) => format!("{f:?}"),
        PyValue::Str(s) => format!(
            "'{}'",
            s.escape_debug()
                .to_string()
                .replace('\'', "\\'")
                .replace("\\\"", "\"")
        ),
        PyValue::Bytes(b) => format!("b'{}'", b.escape_ascii()),
        PyValue::ByteArray(b) => format!("bytearray(b'{}')", b.escape_ascii()),
        PyValue::List(items) => format!("[{}]", seq(items)),
        PyValue::Tuple(items) if items.len() == 1 => format!("({},)", repr(&items[0])),
        PyValue::Tuple(items) => format!("({})", seq(items)),
        PyValue::Dict(d) => format!(
            "{{{}}}",
            d.iter()
                .map(|(k, v)| format!("{}: {}", repr(k), repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        PyValue::Set(items) if items.is_empty() => "set()".into(),
        PyValue::Set(items) => format!("{{{}}}", seq(items)),
        PyValue::FrozenSet(items) if items.is_empty() => "frozenset()".into(),
        PyValue::FrozenSet(items) => format!("frozenset({{{}}})", seq(items)),
        PyValue::Slice(parts) => format!("slice({})", seq(parts.as_slice())),
        PyValue::Exception(e) => format!("{}({})", e.class.path().1, seq(&e.args)),
        PyValue::Token(t) => format!("Token(typeid={:?}, id={:?})", t.typeid, t.id),
        PyValue::Proxy(p) => format!("<proxy of {} {}>", p.token.typeid, p.token.id),
    }
}

/// A dict's iterator (`__iter__`): the keys when it was made.
pub(super) struct Iter(pub(super) Mutex<std::vec::IntoIter<PyValue>>);

impl Object for Iter {
    fn kind(&self) -> &str {
        ITERATOR_KIND
    }

    fn call(&self, _: &Ctx<'_>, method: &str, _: &[u8]) -> Result<Vec<u8>, Fault> {
        match method {
            "next" => crate::manager::wire::ret(&lock(&self.0).next()),
            _ => Err(Fault::UnknownMethod {
                kind: ITERATOR_KIND.into(),
                method: method.into(),
            }),
        }
    }
}
