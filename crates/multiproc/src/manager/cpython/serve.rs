//! The server side: a CPython client's connection, as `multiprocessing.managers.Server`
//! serves it.
//!
//! A connection carries one request `(None, funcname, args, kwds)` — `create`, `incref`,
//! `decref`, ... — or, after `accept_connection`, the method calls `(id, method, args,
//! kwds)` of one client thread. Replies are `('#RETURN', value)`, `('#ERROR', exception)`,
//! `('#TRACEBACK', text)` and `('#PROXY', (exposed, token))`. A refused pickle gets a
//! `#TRACEBACK` naming what was refused, and the connection goes on.
//!
//! Lock ownership: each connection is one owner (a CPython client thread has a connection
//! of its own); when it closes — the client exited or was killed — the locks it held are
//! released, as for Rust clients.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::methods::{self, Kind, Outcome, call_method};
use super::pickle;
use super::value::{ExcClass, PyException, PyValue, Token};
use crate::connection::{Address, Connection};
use crate::manager::objects::{Ctx, Object};
use crate::manager::server::{Core, SPIN, peer_gone};

/// What a request gets back.
enum Reply {
    Return(PyValue),
    Error(PyException),
    Traceback(String),
    Proxy(Vec<String>, Token),
}

impl From<PyException> for Reply {
    fn from(e: PyException) -> Reply {
        Reply::Error(e)
    }
}

/// A connection's own owner id for locks: disjoint from Rust sessions' random ids in all
/// but a 2^-64 chance.
fn owner_id() -> u128 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    (0x9e37_79b9_7f4a_7c15_u128 << 64) | u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The server's address as CPython writes it in a token.
fn address_value(a: &Address) -> PyValue {
    match a {
        Address::Tcp(s) => PyValue::Tuple(vec![
            PyValue::Str(s.ip().to_string()),
            PyValue::Int(s.port().into()),
        ]),
        Address::Unix(p) => PyValue::Str(p.to_string_lossy().into_owned()),
        Address::Abstract(n) => PyValue::Str(format!("\0{}", String::from_utf8_lossy(n))),
    }
}

struct Client<'a> {
    core: &'a Core,
    conn: &'a Connection,
    owner: u128,
    /// Objects this connection called (their locks are released when it closes).
    touched: HashSet<u64>,
    /// Stop the server once the reply is sent.
    stop: bool,
}

/// Serves a CPython client's connection whose first request is `first`.
pub(in crate::manager) fn serve(core: &Core, conn: &Connection, first: &[u8]) {
    let mut c = Client {
        core,
        conn,
        owner: owner_id(),
        touched: HashSet::new(),
        stop: false,
    };
    let serve_calls = match request(first) {
        Ok((None, func, args, kwds)) => {
            let (reply, then) = c.function(&func, args, kwds);
            let sent = c.send(reply);
            if c.stop {
                core.stop();
            }
            if sent.is_err() {
                return;
            }
            then
        }
        Ok((Some(_), ..)) => {
            let _ = c.send(Reply::Traceback(
                "a connection's first request must call a manager function".into(),
            ));
            false
        }
        Err(r) => {
            let _ = c.send(r);
            false
        }
    };
    if serve_calls {
        c.calls();
    }
    for id in std::mem::take(&mut c.touched) {
        if let Some(obj) = core.object(id) {
            obj.session_ended(c.owner);
        }
    }
}

type Request = (Option<String>, String, Vec<PyValue>, Vec<(String, PyValue)>);

/// Decodes and checks a request: `(ident, name, args, kwds)`.
fn request(bytes: &[u8]) -> Result<Request, Reply> {
    let v = pickle::decode(bytes).map_err(|e| Reply::Traceback(format!("request refused: {e}")))?;
    let bad = || Reply::Traceback("request refused: not (ident, method, args, kwds)".into());
    let PyValue::Tuple(parts) = v else {
        return Err(bad());
    };
    let [ident, name, args, kwds]: [PyValue; 4] = parts.try_into().map_err(|_| bad())?;
    let ident = match ident {
        PyValue::None => None,
        PyValue::Str(s) => Some(s),
        _ => return Err(bad()),
    };
    let (PyValue::Str(name), PyValue::Tuple(args) | PyValue::List(args), PyValue::Dict(kwds)) =
        (name, args, kwds)
    else {
        return Err(bad());
    };
    let kwds = kwds
        .into_iter()
        .map(|(k, v)| match k {
            PyValue::Str(k) => Ok((k, v)),
            _ => Err(bad()),
        })
        .collect::<Result<_, _>>()?;
    Ok((ident, name, args, kwds))
}

fn parse_id(ident: &str) -> Result<u64, Reply> {
    ident
        .parse()
        .map_err(|_| Reply::Traceback(format!("KeyError: {ident:?} names no object")))
}

impl Client<'_> {
    fn send(&self, reply: Reply) -> Result<(), crate::error::ConnectionError> {
        let (tag, body) = match reply {
            Reply::Return(v) => ("#RETURN", v),
            Reply::Error(e) => ("#ERROR", PyValue::Exception(e)),
            Reply::Traceback(t) => ("#TRACEBACK", PyValue::Str(t)),
            Reply::Proxy(exposed, token) => (
                "#PROXY",
                PyValue::Tuple(vec![
                    PyValue::Tuple(exposed.into_iter().map(PyValue::Str).collect()),
                    PyValue::Token(token),
                ]),
            ),
        };
        let bytes = pickle::encode(&PyValue::Tuple(vec![PyValue::Str(tag.into()), body]))
            .or_else(|e| {
                pickle::encode(&PyValue::Tuple(vec![
                    PyValue::Str("#UNSERIALIZABLE".into()),
                    PyValue::Str(e.to_string()),
                ]))
            })
            .unwrap_or_default();
        self.conn.send_bytes(&bytes)
    }

    fn token(&self, typeid: &str, id: u64) -> Token {
        Token {
            typeid: typeid.to_string(),
            address: Box::new(address_value(self.core.address())),
            id: id.to_string(),
        }
    }

    /// Checks a value received from the client before it is stored: plain data, and
    /// proxies to objects of this server (which are then kept alive).
    fn admit(&self, v: &mut PyValue) -> Result<(), Reply> {
        match v {
            PyValue::List(items)
            | PyValue::Tuple(items)
            | PyValue::Set(items)
            | PyValue::FrozenSet(items) => items.iter_mut().try_for_each(|i| self.admit(i)),
            PyValue::Dict(d) => d.iter_mut().try_for_each(|(k, v)| {
                self.admit(k)?;
                self.admit(v)
            }),
            PyValue::Proxy(p) => {
                let ok = p.token.id.parse().is_ok_and(|id| self.core.keep(id));
                if !ok {
                    return Err(PyException::new(
                        ExcClass::ValueError,
                        format!(
                            "a proxy inside a value must name an object of this manager; \
                             {:?} does not",
                            p.token.id
                        ),
                    )
                    .into());
                }
                // The address is the one this server is reached at, whatever was sent.
                *p.token.address = address_value(self.core.address());
                Ok(())
            }
            PyValue::Exception(_) | PyValue::Token(_) => Err(PyException::new(
                ExcClass::TypeError,
                format!("a {} cannot be stored in a manager object", v.type_name()),
            )
            .into()),
            _ => Ok(()),
        }
    }

    /// A manager function (`create`, `incref`, ...); the reply, and whether the
    /// connection goes on serving method calls.
    fn function(
        &mut self,
        func: &str,
        args: Vec<PyValue>,
        kwds: Vec<(String, PyValue)>,
    ) -> (Reply, bool) {
        let one_id = |args: &[PyValue]| match args {
            [PyValue::Str(id)] => parse_id(id),
            _ => Err(Reply::Traceback(format!("TypeError: {func}() takes an id"))),
        };
        let reply = match func {
            "dummy" => Reply::Return(PyValue::None),
            "accept_connection" => return (Reply::Return(PyValue::None), true),
            "create" => self.create(args, kwds).unwrap_or_else(|r| r),
            "incref" | "decref" => match one_id(&args) {
                Ok(id) => {
                    let r = if func == "incref" {
                        self.core.py_incref(id)
                    } else {
                        self.core.py_decref(id)
                    };
                    match r {
                        Ok(()) => Reply::Return(PyValue::None),
                        Err(_) => Reply::Traceback(format!("KeyError: {id:?}")),
                    }
                }
                Err(r) => r,
            },
            "get_methods" => match args.as_slice() {
                [PyValue::Token(t)] => match self.kind_of(&t.id) {
                    Ok((_, kind)) => Reply::Return(names(kind.exposed())),
                    Err(r) => r,
                },
                _ => Reply::Traceback("TypeError: get_methods() takes a token".into()),
            },
            "number_of_objects" => Reply::Return(PyValue::Int(self.core.object_count() as i128)),
            "debug_info" => Reply::Return(PyValue::Str(format!(
                "{} objects",
                self.core.object_count()
            ))),
            "shutdown" => {
                self.stop = true;
                Reply::Return(PyValue::None)
            }
            other => Reply::Traceback(format!("AssertionError: '{other}' unrecognized")),
        };
        (reply, false)
    }

    /// `create(typeid, *args, **kwds)`: a SyncManager type, or a name a client published
    /// (what `BaseManager.register(name)` then `manager.name()` asks for).
    fn create(
        &self,
        mut args: Vec<PyValue>,
        mut kwds: Vec<(String, PyValue)>,
    ) -> Result<Reply, Reply> {
        if args.is_empty() {
            return Err(Reply::Traceback(
                "TypeError: create() needs a typeid".into(),
            ));
        }
        let PyValue::Str(typeid) = args.remove(0) else {
            return Err(Reply::Traceback("TypeError: typeid must be a str".into()));
        };
        for a in &mut args {
            self.admit(a)?;
        }
        for (_, v) in &mut kwds {
            self.admit(v)?;
        }
        let cancelled = || peer_gone(self.core, self.conn);
        let cx = Ctx {
            owner: (self.owner, 0),
            cancelled: &cancelled,
        };
        let (id, kind) = match methods::create(&typeid, args, kwds, &cx) {
            Some(obj) => {
                let obj: Arc<dyn Object> = Arc::from(obj?);
                let kind = Kind::of(obj.kind());
                (self.core.py_create(obj), kind)
            }
            None => match self.core.py_lookup(&typeid) {
                Some((id, obj)) => (id, Kind::of(obj.kind())),
                None => {
                    return Err(Reply::Traceback(format!(
                        "KeyError: {typeid:?} is neither a SyncManager type nor a published name"
                    )));
                }
            },
        };
        let Some(kind) = kind else {
            let _ = self.core.py_decref(id);
            return Err(Reply::Traceback(format!(
                "TypeError: {typeid:?} is an object of a kind Python clients cannot use"
            )));
        };
        Ok(Reply::Return(PyValue::Tuple(vec![
            PyValue::Str(id.to_string()),
            names(kind.exposed()),
        ])))
    }

    fn kind_of(&self, ident: &str) -> Result<(Arc<dyn Object>, Kind), Reply> {
        let id = parse_id(ident)?;
        let obj = self
            .core
            .object(id)
            .ok_or_else(|| Reply::Traceback(format!("KeyError: {ident:?} names no object")))?;
        let kind = Kind::of(obj.kind()).ok_or_else(|| {
            Reply::Traceback(format!(
                "TypeError: a {:?} object cannot be used from Python",
                obj.kind()
            ))
        })?;
        Ok((obj, kind))
    }

    /// Serves method calls until the client closes the connection.
    fn calls(&mut self) {
        while let Ok(bytes) = self.conn.recv_spinning(SPIN, None) {
            let reply = match request(&bytes) {
                Ok((Some(ident), method, args, kwds)) => self
                    .method(&ident, &method, args, kwds)
                    .unwrap_or_else(|r| r),
                Ok((None, ..)) => Reply::Traceback("KeyError: None names no object".into()),
                Err(r) => r,
            };
            if self.send(reply).is_err() || self.core.is_stopping() {
                return;
            }
        }
    }

    fn method(
        &mut self,
        ident: &str,
        method: &str,
        mut args: Vec<PyValue>,
        mut kwds: Vec<(String, PyValue)>,
    ) -> Result<Reply, Reply> {
        let (obj, kind) = self.kind_of(ident)?;
        let fallback = matches!(method, "#GETVALUE" | "__repr__" | "__str__");
        if !fallback && !kind.exposed().contains(&method) {
            return Err(methods::not_exposed(kind, method).into());
        }
        for a in &mut args {
            self.admit(a)?;
        }
        for (_, v) in &mut kwds {
            self.admit(v)?;
        }
        if let Ok(id) = ident.parse() {
            self.touched.insert(id);
        }
        let cancelled = || peer_gone(self.core, self.conn);
        let cx = Ctx {
            owner: (self.owner, 0),
            cancelled: &cancelled,
        };
        Ok(match call_method(kind, &*obj, &cx, method, args, kwds)? {
            Outcome::Value(v) => Reply::Return(v),
            Outcome::Iter(items) => {
                let it = methods::Iter(std::sync::Mutex::new(items.into_iter()));
                let id = self.core.py_create(Arc::new(it));
                Reply::Proxy(
                    names_vec(Kind::Iterator.exposed()),
                    self.token("Iterator", id),
                )
            }
        })
    }
}

fn names_vec(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

fn names(n: &[&str]) -> PyValue {
    PyValue::Tuple(n.iter().map(|s| PyValue::Str(s.to_string())).collect())
}
