//! [`PyValue`]: the Python values the CPython manager protocol carries, as checked data.

use std::cell::Cell;

use serde::{Deserialize, Deserializer, Serialize};

thread_local! {
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Deserializes a container of values one level deeper, refusing past the decoder's depth
/// limit: items a Rust client stored are decoded for Python clients, and deeply nested
/// bytes must not overflow the server's stack.
fn nested<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    struct Leave;
    impl Drop for Leave {
        fn drop(&mut self) {
            DEPTH.with(|c| c.set(c.get().saturating_sub(1)));
        }
    }
    let depth = DEPTH.with(|c| {
        c.set(c.get() + 1);
        c.get()
    });
    let _leave = Leave;
    if depth > super::pickle::MAX_DEPTH {
        return Err(serde::de::Error::custom("value nested too deep"));
    }
    T::deserialize(d)
}

/// A Python value as it travels between a CPython client and a multiproc manager: plain data
/// and the few protocol objects the manager protocol needs (exceptions, tokens, proxies), and
/// nothing else. Decoding a pickle produces one of these or refuses the pickle; no code is
/// ever run to build it.
///
/// Objects created by Python clients keep their keys and items as `PyValue`s, so a Rust
/// proxy reads and writes them with `PyValue` as its item type:
///
/// ```no_run
/// use multiproc::manager::{Manager, PyValue};
/// # fn main() -> Result<(), multiproc::ManagerError> {
/// let mgr = Manager::connect("127.0.0.1:5000", b"secret")?;
/// let d = mgr.lookup::<multiproc::manager::DictProxy<PyValue, PyValue>>("jobs")?;
/// d.set(&"count".into(), &PyValue::Int(3))?;
/// # Ok(()) }
/// ```
///
/// Dict keys compare by their encoding: `1`, `1.0` and `True`, one key in Python, are three
/// keys here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PyValue {
    /// `None`.
    None,
    /// `bool`.
    Bool(bool),
    /// `int` (beyond 128 bits a pickle is refused with a clear error).
    Int(i128),
    /// `float`.
    Float(f64),
    /// `str`.
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `bytearray`.
    ByteArray(Vec<u8>),
    /// `list`.
    List(#[serde(deserialize_with = "nested")] Vec<PyValue>),
    /// `tuple`.
    Tuple(#[serde(deserialize_with = "nested")] Vec<PyValue>),
    /// `dict`, in insertion order.
    Dict(#[serde(deserialize_with = "nested")] Vec<(PyValue, PyValue)>),
    /// `set`.
    Set(#[serde(deserialize_with = "nested")] Vec<PyValue>),
    /// `frozenset`.
    FrozenSet(#[serde(deserialize_with = "nested")] Vec<PyValue>),
    /// `slice(start, stop, step)` (what `l[1:3]` sends).
    Slice(#[serde(deserialize_with = "nested")] Box<[PyValue; 3]>),
    /// An exception instance of an allowed class, with its arguments.
    Exception(#[serde(deserialize_with = "nested")] PyException),
    /// A `multiprocessing.managers.Token` naming an object of a manager.
    Token(#[serde(deserialize_with = "nested")] Token),
    /// A proxy to an object of the same manager (`RebuildProxy(...)` in a pickle).
    Proxy(#[serde(deserialize_with = "nested")] ProxyRef),
}

/// An exception instance: its class (from a fixed list) and arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PyException {
    /// The class.
    pub class: ExcClass,
    /// The arguments (`exc.args`).
    pub args: Vec<PyValue>,
}

/// A `multiprocessing.managers.Token`. Its address is kept as data and never connected to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    /// The registered type id (`"dict"`, `"Queue"`, a published name).
    pub typeid: String,
    /// The address as the sender wrote it (a `(host, port)` tuple or a path).
    pub address: Box<PyValue>,
    /// The object's id on its manager.
    pub id: String,
}

/// A proxy inside a value: `RebuildProxy(class, token, serializer, kwds)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyRef {
    /// The proxy class (`None`: `AutoProxy`, built from `exposed`).
    pub class: Option<ProxyClass>,
    /// The object.
    pub token: Token,
    /// The methods an `AutoProxy` exposes.
    pub exposed: Option<Vec<String>>,
}

macro_rules! names {
    ($(#[$m:meta])* enum $name:ident { $($var:ident => $module:literal $py:literal $(| $alt:literal)?,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[allow(missing_docs)]
        pub enum $name { $($var,)* }

        impl $name {
            /// The module and name Python finds it under.
            pub fn path(self) -> (&'static str, &'static str) {
                match self { $(Self::$var => ($module, $py),)* }
            }

            /// The one named `module.name`, if it is on the list.
            pub(crate) fn find(module: &str, name: &str) -> Option<Self> {
                $(if name == $py && (module == $module $(|| module == $alt)?) {
                    return Some(Self::$var);
                })*
                None
            }
        }
    };
}

names! {
    /// The exception classes a pickle may name: what the manager protocol reports and what
    /// everyday Python code catches (`except KeyError`, `except queue.Empty`).
    enum ExcClass {
        Exception => "builtins" "Exception",
        KeyError => "builtins" "KeyError",
        IndexError => "builtins" "IndexError",
        ValueError => "builtins" "ValueError",
        TypeError => "builtins" "TypeError",
        AttributeError => "builtins" "AttributeError",
        RuntimeError => "builtins" "RuntimeError",
        StopIteration => "builtins" "StopIteration",
        NotImplementedError => "builtins" "NotImplementedError",
        OverflowError => "builtins" "OverflowError",
        AssertionError => "builtins" "AssertionError",
        TimeoutError => "builtins" "TimeoutError",
        QueueEmpty => "queue" "Empty" | "_queue",
        QueueFull => "queue" "Full",
        BrokenBarrierError => "threading" "BrokenBarrierError",
    }
}

names! {
    /// The proxy classes of `multiprocessing.managers` a `RebuildProxy` may name. They are
    /// only ever data here (which proxy a Python client builds), never called.
    enum ProxyClass {
        DictProxy => "multiprocessing.managers" "DictProxy",
        ListProxy => "multiprocessing.managers" "ListProxy",
        ArrayProxy => "multiprocessing.managers" "ArrayProxy",
        ValueProxy => "multiprocessing.managers" "ValueProxy",
        NamespaceProxy => "multiprocessing.managers" "NamespaceProxy",
        AcquirerProxy => "multiprocessing.managers" "AcquirerProxy",
        ConditionProxy => "multiprocessing.managers" "ConditionProxy",
        EventProxy => "multiprocessing.managers" "EventProxy",
        BarrierProxy => "multiprocessing.managers" "BarrierProxy",
        IteratorProxy => "multiprocessing.managers" "IteratorProxy",
    }
}

impl PyException {
    /// An exception of `class` with one string argument (none when `message` is empty).
    pub fn new(class: ExcClass, message: impl Into<String>) -> PyException {
        let message = message.into();
        let args = if message.is_empty() {
            Vec::new()
        } else {
            vec![PyValue::Str(message)]
        };
        PyException { class, args }
    }
}

impl PyValue {
    /// The Python type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PyValue::None => "NoneType",
            PyValue::Bool(_) => "bool",
            PyValue::Int(_) => "int",
            PyValue::Float(_) => "float",
            PyValue::Str(_) => "str",
            PyValue::Bytes(_) => "bytes",
            PyValue::ByteArray(_) => "bytearray",
            PyValue::List(_) => "list",
            PyValue::Tuple(_) => "tuple",
            PyValue::Dict(_) => "dict",
            PyValue::Set(_) => "set",
            PyValue::FrozenSet(_) => "frozenset",
            PyValue::Slice(_) => "slice",
            PyValue::Exception(_) => "exception",
            PyValue::Token(_) => "Token",
            PyValue::Proxy(_) => "proxy",
        }
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PyValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is an `int` or a `bool` (Python's `bool` is an `int`).
    pub fn as_int(&self) -> Option<i128> {
        match self {
            PyValue::Int(i) => Some(*i),
            PyValue::Bool(b) => Some(i128::from(*b)),
            _ => None,
        }
    }

    /// Python's truth value of plain data.
    pub fn truthy(&self) -> bool {
        match self {
            PyValue::None => false,
            PyValue::Bool(b) => *b,
            PyValue::Int(i) => *i != 0,
            PyValue::Float(f) => *f != 0.0,
            PyValue::Str(s) => !s.is_empty(),
            PyValue::Bytes(b) | PyValue::ByteArray(b) => !b.is_empty(),
            PyValue::List(v) | PyValue::Tuple(v) | PyValue::Set(v) | PyValue::FrozenSet(v) => {
                !v.is_empty()
            }
            PyValue::Dict(d) => !d.is_empty(),
            _ => true,
        }
    }
}

impl From<&str> for PyValue {
    fn from(s: &str) -> Self {
        PyValue::Str(s.to_string())
    }
}

impl From<String> for PyValue {
    fn from(s: String) -> Self {
        PyValue::Str(s)
    }
}

impl From<i64> for PyValue {
    fn from(i: i64) -> Self {
        PyValue::Int(i.into())
    }
}

impl From<bool> for PyValue {
    fn from(b: bool) -> Self {
        PyValue::Bool(b)
    }
}

impl From<f64> for PyValue {
    fn from(f: f64) -> Self {
        PyValue::Float(f)
    }
}
