//! The subset of pickle the CPython manager protocol needs: an iterative decoder that builds
//! checked data ([`PyValue`]) and an encoder writing protocol 4.
//!
//! The decoder is a pickle machine that never runs anything: a global (`GLOBAL`,
//! `STACK_GLOBAL`, whatever the opcode) is looked up in a fixed allow-list the moment it is
//! read and anything else refuses the whole pickle; `REDUCE`, `NEWOBJ` and `BUILD` only
//! record their operands, which are then checked against the one shape each allowed global
//! has (`KeyError(args)`, `Token()` + state, `RebuildProxy(class, token, 'pickle', kwds)`,
//! `bytearray(bytes)`). Why each global is allowed:
//!
//! - exception classes ([`ExcClass`]): replies carry them (`#ERROR`) and Python code catches
//!   them by class;
//! - `multiprocessing.managers.Token`: `#PROXY` replies and `get_methods` name objects by
//!   token;
//! - `multiprocessing.managers.RebuildProxy` and the proxy classes ([`ProxyClass`],
//!   `AutoProxy`): a proxy inside a value pickles as `RebuildProxy(class, token, ...)`;
//! - `builtins.bytearray`, `builtins.set`, `builtins.frozenset`: how protocols 2–4 write
//!   these types;
//! - `builtins.slice`: a list proxy's `l[1:3]` sends `slice(1, 3, None)`.
//!
//! Limits: nesting depth, memo entries, integer size (128 bits), and a budget on the data
//! built (memo references may share an object many times; the budget bounds the expanded
//! tree). Lengths are checked against the bytes present before anything is allocated. The
//! machine's state is a flat arena, so a deeply nested input cannot overflow the stack.

use std::collections::HashMap;

use super::value::{ExcClass, ProxyClass, ProxyRef, PyException, PyValue, Token};

/// Values nested deeper than this are refused.
pub const MAX_DEPTH: usize = 100;
/// At most this many memo entries.
pub const MAX_MEMO: usize = 1 << 20;
/// At most this many objects built, and values on the machine's stack (each costs the
/// machine about 32 bytes, whatever the few bytes of its opcode).
pub const MAX_NODES: usize = 1 << 22;
/// The budget of the built value, in bytes (each value counted as [`VALUE_COST`] plus its
/// data): this many times the pickle's length plus [`MIN_BUDGET`], at most [`MAX_BUDGET`].
/// Memo references may share an object many times; the budget bounds the expanded tree.
const BUDGET_FACTOR: usize = 8;
const MIN_BUDGET: usize = 1 << 20;
const MAX_BUDGET: usize = 1 << 29;
const VALUE_COST: usize = 64;

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// The pickle ends in the middle of an opcode or before `STOP`.
    #[error("pickle truncated at byte {0}")]
    Truncated(usize),
    /// Bytes follow `STOP`.
    #[error("{0} bytes after the end of the pickle")]
    Trailing(usize),
    /// An opcode this decoder does not implement (named when known).
    #[error("pickle opcode {name} (0x{op:02x}) at byte {at} is not accepted")]
    Opcode {
        /// The opcode byte.
        op: u8,
        /// Its name in `pickletools`.
        name: &'static str,
        /// Its position.
        at: usize,
    },
    /// A global outside the allow-list.
    #[error("global {module}.{name} is not allowed")]
    Global {
        /// The module.
        module: String,
        /// The name.
        name: String,
    },
    /// Operands that do not fit the opcode (a `REDUCE` of something not callable, an
    /// `APPEND` to a non-list, a missing mark, an empty stack).
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed {
        /// Position of the opcode.
        at: usize,
        /// What was wrong.
        what: String,
    },
    /// An allowed global used with arguments of the wrong shape.
    #[error("refused {0}")]
    Shape(String),
    /// Nested deeper than [`MAX_DEPTH`] (or a cycle).
    #[error("value nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// An integer wider than 128 bits.
    #[error("integer of {0} bytes does not fit in 128 bits")]
    IntTooLarge(usize),
    /// More memo entries, or a larger built value, than the limits allow.
    #[error("pickle exceeds a limit: {0}")]
    Limit(String),
    /// Text that is not UTF-8.
    #[error("string at byte {0} is not valid UTF-8")]
    Utf8(usize),
    /// A value with no pickle form in this protocol (encoding).
    #[error("cannot pickle {0}")]
    Unpicklable(String),
}

type Idx = usize;

/// What the machine builds; containers refer to other nodes by index.
#[derive(Debug)]
enum Node {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    ByteArray(Vec<u8>),
    List(Vec<Idx>),
    Tuple(Vec<Idx>),
    Dict(Vec<(Idx, Idx)>),
    Set(Vec<Idx>),
    FrozenSet(Vec<Idx>),
    Global(Global),
    /// `REDUCE`: an allowed callable and its argument tuple, with a `BUILD` state if any.
    Reduce(Global, Idx, Option<Idx>),
    /// `NEWOBJ`: an allowed class and its argument tuple, with its `BUILD` state.
    NewObj(Global, Idx, Option<Idx>),
}

/// The globals a pickle may name.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    Exc(ExcClass),
    Proxy(ProxyClass),
    AutoProxy,
    Token,
    RebuildProxy,
    ByteArray,
    Set,
    FrozenSet,
    Slice,
}

impl Global {
    fn find(module: &str, name: &str) -> Option<Global> {
        if let Some(e) = ExcClass::find(module, name) {
            return Some(Global::Exc(e));
        }
        if let Some(p) = ProxyClass::find(module, name) {
            return Some(Global::Proxy(p));
        }
        Some(match (module, name) {
            ("multiprocessing.managers", "AutoProxy") => Global::AutoProxy,
            ("multiprocessing.managers", "Token") => Global::Token,
            ("multiprocessing.managers", "RebuildProxy") => Global::RebuildProxy,
            ("builtins", "bytearray") => Global::ByteArray,
            ("builtins", "set") => Global::Set,
            ("builtins", "frozenset") => Global::FrozenSet,
            ("builtins", "slice") => Global::Slice,
            _ => return None,
        })
    }
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'c' => "GLOBAL",
        0x93 => "STACK_GLOBAL",
        b'R' => "REDUCE",
        b'i' => "INST",
        b'o' => "OBJ",
        0x92 => "NEWOBJ_EX",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        0x82..=0x84 => "EXT",
        b'I' => "INT",
        b'L' => "LONG",
        b'S' => "STRING",
        b'T' | b'U' => "BINSTRING",
        b'V' => "UNICODE",
        b'F' => "FLOAT",
        b'p' | b'g' => "PUT/GET (text)",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    at: usize,
    arena: Vec<Node>,
    stack: Vec<Idx>,
    marks: Vec<usize>,
    memo: HashMap<u32, Idx>,
}

impl<'a> Machine<'a> {
    fn malformed(&self, what: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.at,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.input.len())
            .ok_or(PickleError::Truncated(self.input.len()))?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A length prefix; the bytes must be present (so nothing is allocated for bytes that
    /// did not arrive).
    fn len_bytes(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let n = usize::try_from(n).map_err(|_| PickleError::Truncated(self.input.len()))?;
        self.take(n)
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.input[self.pos..];
        let n = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(PickleError::Truncated(self.input.len()))?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| PickleError::Utf8(self.pos))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn text(&mut self, bytes: &[u8]) -> Result<String, PickleError> {
        std::str::from_utf8(bytes)
            .map(str::to_string)
            .map_err(|_| PickleError::Utf8(self.at))
    }

    fn push(&mut self, node: Node) {
        self.arena.push(node);
        self.stack.push(self.arena.len() - 1);
    }

    fn pop(&mut self) -> Result<Idx, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack empty"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack empty"))
    }

    fn top(&self) -> Result<Idx, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.malformed("stack empty"));
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    /// The items since the last mark (which is dropped).
    fn pop_mark(&mut self) -> Result<Vec<Idx>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| self.malformed("no mark"))?;
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let top = self.top()?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return Err(PickleError::Limit(format!(
                "more than {MAX_MEMO} memo entries"
            )));
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let i = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.malformed(format!("memo entry {key} missing")))?;
        self.stack.push(i);
        Ok(())
    }

    fn int_bytes(&mut self, b: &[u8]) -> Result<(), PickleError> {
        if b.len() > 16 {
            return Err(PickleError::IntTooLarge(b.len()));
        }
        let neg = b.last().is_some_and(|x| x & 0x80 != 0);
        let mut a = [if neg { 0xff } else { 0 }; 16];
        a[..b.len()].copy_from_slice(b);
        self.push(Node::Int(i128::from_le_bytes(a)));
        Ok(())
    }

    fn items(&mut self, what: &str) -> Result<(Vec<Idx>, Idx), PickleError> {
        let items = self.pop_mark()?;
        let target = self
            .top()
            .map_err(|_| self.malformed(format!("{what} without a target")))?;
        Ok((items, target))
    }

    fn step(&mut self, op: u8) -> Result<bool, PickleError> {
        match op {
            0x80 => {
                let v = self.byte()?;
                if v > 5 {
                    return Err(self.malformed(format!("unsupported protocol {v}")));
                }
            }
            0x95 => {
                let n = u64::from_le_bytes(self.le()?);
                if n > (self.input.len() - self.pos) as u64 {
                    return Err(PickleError::Truncated(self.input.len()));
                }
            }
            b'.' => return Ok(true),
            b'N' => self.push(Node::None),
            0x88 => self.push(Node::Bool(true)),
            0x89 => self.push(Node::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.le()?);
                self.push(Node::Int(v.into()))
            }
            b'K' => {
                let v = self.byte()?;
                self.push(Node::Int(v.into()))
            }
            b'M' => {
                let v = u16::from_le_bytes(self.le()?);
                self.push(Node::Int(v.into()))
            }
            0x8a => {
                let n = self.byte()?;
                let b = self.take(n.into())?;
                self.int_bytes(b)?
            }
            0x8b => {
                let n = i32::from_le_bytes(self.le()?);
                let n = usize::try_from(n).map_err(|_| self.malformed("negative length"))?;
                if n > 16 {
                    return Err(PickleError::IntTooLarge(n));
                }
                let b = self.take(n)?;
                self.int_bytes(b)?
            }
            b'G' => {
                let v = f64::from_be_bytes(self.le()?);
                self.push(Node::Float(v))
            }
            0x8c => {
                let n = self.byte()?;
                let b = self.take(n.into())?;
                let s = self.text(b)?;
                self.push(Node::Str(s))
            }
            b'X' => {
                let n = u32::from_le_bytes(self.le()?);
                let b = self.len_bytes(n.into())?;
                let s = self.text(b)?;
                self.push(Node::Str(s))
            }
            0x8d => {
                let n = u64::from_le_bytes(self.le()?);
                let b = self.len_bytes(n)?;
                let s = self.text(b)?;
                self.push(Node::Str(s))
            }
            b'C' => {
                let n = self.byte()?;
                let b = self.take(n.into())?;
                self.push(Node::Bytes(b.to_vec()))
            }
            b'B' => {
                let n = u32::from_le_bytes(self.le()?);
                let b = self.len_bytes(n.into())?;
                self.push(Node::Bytes(b.to_vec()))
            }
            0x8e => {
                let n = u64::from_le_bytes(self.le()?);
                let b = self.len_bytes(n)?;
                self.push(Node::Bytes(b.to_vec()))
            }
            0x96 => {
                let n = u64::from_le_bytes(self.le()?);
                let b = self.len_bytes(n)?;
                self.push(Node::ByteArray(b.to_vec()))
            }
            b']' => self.push(Node::List(Vec::new())),
            b')' => self.push(Node::Tuple(Vec::new())),
            b'}' => self.push(Node::Dict(Vec::new())),
            0x8f => self.push(Node::Set(Vec::new())),
            b'(' => self.marks.push(self.stack.len()),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Node::Tuple(items))
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Node::Tuple(items))
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push(Node::List(items))
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs(&items).ok_or_else(|| self.malformed("odd DICT items"))?;
                self.push(Node::Dict(pairs))
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push(Node::FrozenSet(items))
            }
            b'a' => {
                let v = self.pop()?;
                let t = self.top()?;
                match &mut self.arena[t] {
                    Node::List(l) => l.push(v),
                    _ => return Err(self.malformed("APPEND to a non-list")),
                }
            }
            b'e' => {
                let (items, t) = self.items("APPENDS")?;
                match &mut self.arena[t] {
                    Node::List(l) => l.extend(items),
                    _ => return Err(self.malformed("APPENDS to a non-list")),
                }
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                let t = self.top()?;
                match &mut self.arena[t] {
                    Node::Dict(d) => d.push((k, v)),
                    _ => return Err(self.malformed("SETITEM on a non-dict")),
                }
            }
            b'u' => {
                let (items, t) = self.items("SETITEMS")?;
                let p = pairs(&items).ok_or_else(|| self.malformed("odd SETITEMS items"))?;
                match &mut self.arena[t] {
                    Node::Dict(d) => d.extend(p),
                    _ => return Err(self.malformed("SETITEMS on a non-dict")),
                }
            }
            0x90 => {
                let (items, t) = self.items("ADDITEMS")?;
                match &mut self.arena[t] {
                    Node::Set(s) => s.extend(items),
                    _ => return Err(self.malformed("ADDITEMS on a non-set")),
                }
            }
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let t = self.top()?;
                self.stack.push(t)
            }
            0x94 => {
                let key = u32::try_from(self.memo.len())
                    .map_err(|_| PickleError::Limit("memo full".into()))?;
                self.memo_put(key)?
            }
            b'q' => {
                let k = self.byte()?;
                self.memo_put(k.into())?
            }
            b'r' => {
                let k = u32::from_le_bytes(self.le()?);
                self.memo_put(k)?
            }
            b'h' => {
                let k = self.byte()?;
                self.memo_get(k.into())?
            }
            b'j' => {
                let k = u32::from_le_bytes(self.le()?);
                self.memo_get(k)?
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(module, name)?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (&self.arena[module], &self.arena[name]) {
                    (Node::Str(m), Node::Str(n)) => {
                        let (m, n) = (m.clone(), n.clone());
                        self.global(&m, &n)?
                    }
                    _ => return Err(self.malformed("STACK_GLOBAL of non-strings")),
                }
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let Node::Global(g) = self.arena[callable] else {
                    return Err(self.malformed("REDUCE/NEWOBJ of something not a global"));
                };
                if !matches!(self.arena[args], Node::Tuple(_)) {
                    return Err(self.malformed("REDUCE/NEWOBJ arguments not a tuple"));
                }
                let callable_ok = matches!(
                    (op, g),
                    (
                        b'R',
                        Global::Exc(_)
                            | Global::RebuildProxy
                            | Global::ByteArray
                            | Global::Set
                            | Global::FrozenSet
                            | Global::Slice
                    ) | (0x81, Global::Token)
                );
                if !callable_ok {
                    return Err(PickleError::Shape(format!(
                        "{} applied to {g:?}",
                        if op == b'R' { "REDUCE" } else { "NEWOBJ" }
                    )));
                }
                self.push(if op == b'R' {
                    Node::Reduce(g, args, None)
                } else {
                    Node::NewObj(g, args, None)
                })
            }
            b'b' => {
                let state = self.pop()?;
                let t = self.top()?;
                match &mut self.arena[t] {
                    Node::NewObj(Global::Token, _, s @ None)
                    | Node::Reduce(Global::Exc(_), _, s @ None) => *s = Some(state),
                    _ => return Err(self.malformed("BUILD on an object that takes no state")),
                }
            }
            _ => {
                return Err(PickleError::Opcode {
                    op,
                    name: opcode_name(op),
                    at: self.at,
                });
            }
        }
        Ok(false)
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        let g = Global::find(module, name).ok_or_else(|| PickleError::Global {
            module: module.chars().take(100).collect(),
            name: name.chars().take(100).collect(),
        })?;
        self.push(Node::Global(g));
        Ok(())
    }
}

fn pairs(items: &[Idx]) -> Option<Vec<(Idx, Idx)>> {
    items
        .len()
        .is_multiple_of(2)
        .then(|| items.chunks(2).map(|c| (c[0], c[1])).collect())
}

/// Decodes one pickle into checked data, or refuses it.
pub fn decode(input: &[u8]) -> Result<PyValue, PickleError> {
    let mut m = Machine {
        input,
        pos: 0,
        at: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    loop {
        if m.arena.len() >= MAX_NODES || m.stack.len() >= MAX_NODES || m.marks.len() >= MAX_NODES {
            return Err(PickleError::Limit(format!("more than {MAX_NODES} objects")));
        }
        m.at = m.pos;
        let op = m.byte()?;
        if m.step(op)? {
            break;
        }
    }
    if m.pos != input.len() {
        return Err(PickleError::Trailing(input.len() - m.pos));
    }
    let root = m.pop()?;
    if !m.stack.is_empty() || !m.marks.is_empty() {
        return Err(PickleError::Malformed {
            at: m.at,
            what: "values left on the stack at STOP".into(),
        });
    }
    let mut b = Builder {
        arena: &m.arena,
        budget: input
            .len()
            .saturating_mul(BUDGET_FACTOR)
            .saturating_add(MIN_BUDGET)
            .min(MAX_BUDGET),
    };
    b.value(root, 0)
}

/// Turns the arena into a value, checking shapes, depth and the budget.
struct Builder<'a> {
    arena: &'a [Node],
    budget: usize,
}

impl Builder<'_> {
    fn spend(&mut self, n: usize) -> Result<(), PickleError> {
        self.budget = self
            .budget
            .checked_sub(n.saturating_add(VALUE_COST))
            .ok_or_else(|| PickleError::Limit("the decoded value is too large".into()))?;
        Ok(())
    }

    fn all(&mut self, items: &[Idx], depth: usize) -> Result<Vec<PyValue>, PickleError> {
        items.iter().map(|i| self.value(*i, depth + 1)).collect()
    }

    fn value(&mut self, i: Idx, depth: usize) -> Result<PyValue, PickleError> {
        if depth > MAX_DEPTH {
            return Err(PickleError::TooDeep);
        }
        let node = &self.arena[i];
        self.spend(match node {
            Node::Str(s) => s.len(),
            Node::Bytes(b) | Node::ByteArray(b) => b.len(),
            _ => 0,
        })?;
        Ok(match node {
            Node::None => PyValue::None,
            Node::Bool(b) => PyValue::Bool(*b),
            Node::Int(v) => PyValue::Int(*v),
            Node::Float(f) => PyValue::Float(*f),
            Node::Str(s) => PyValue::Str(s.clone()),
            Node::Bytes(b) => PyValue::Bytes(b.clone()),
            Node::ByteArray(b) => PyValue::ByteArray(b.clone()),
            Node::List(v) => PyValue::List(self.all(v, depth)?),
            Node::Tuple(v) => PyValue::Tuple(self.all(v, depth)?),
            Node::Set(v) => PyValue::Set(self.all(v, depth)?),
            Node::FrozenSet(v) => PyValue::FrozenSet(self.all(v, depth)?),
            Node::Dict(d) => PyValue::Dict(
                d.iter()
                    .map(|(k, v)| Ok((self.value(*k, depth + 1)?, self.value(*v, depth + 1)?)))
                    .collect::<Result<_, PickleError>>()?,
            ),
            Node::Global(g) => {
                return Err(PickleError::Shape(format!(
                    "a bare global {g:?} as a value"
                )));
            }
            Node::Reduce(g, args, state) => self.reduce(*g, *args, *state, depth)?,
            Node::NewObj(g, args, state) => {
                let token = self.token(*g, *args, *state, depth)?;
                PyValue::Token(token)
            }
        })
    }

    fn args(&mut self, args: Idx, depth: usize) -> Result<Vec<PyValue>, PickleError> {
        match &self.arena[args] {
            Node::Tuple(v) => self.all(v, depth),
            _ => Err(PickleError::Shape("arguments that are not a tuple".into())),
        }
    }

    fn token(
        &mut self,
        g: Global,
        args: Idx,
        state: Option<Idx>,
        depth: usize,
    ) -> Result<Token, PickleError> {
        let bad = |w: &str| PickleError::Shape(format!("a Token {w}"));
        if g != Global::Token || !self.args(args, depth)?.is_empty() {
            return Err(bad("built with arguments"));
        }
        let state = state.ok_or_else(|| bad("without state"))?;
        match self.value(state, depth + 1)? {
            PyValue::Tuple(t) if t.len() == 3 => {
                let mut t = t.into_iter();
                let (typeid, address, id) = (t.next(), t.next(), t.next());
                match (typeid, address, id) {
                    (Some(PyValue::Str(typeid)), Some(address), Some(PyValue::Str(id))) => {
                        if !matches!(
                            address,
                            PyValue::Tuple(_) | PyValue::Str(_) | PyValue::Bytes(_)
                        ) {
                            return Err(bad("with an address that is not a tuple or a path"));
                        }
                        Ok(Token {
                            typeid,
                            address: Box::new(address),
                            id,
                        })
                    }
                    _ => Err(bad("whose state is not (str, address, str)")),
                }
            }
            _ => Err(bad("whose state is not a 3-tuple")),
        }
    }

    fn reduce(
        &mut self,
        g: Global,
        args: Idx,
        state: Option<Idx>,
        depth: usize,
    ) -> Result<PyValue, PickleError> {
        match g {
            Global::Exc(class) => {
                // An exception's `__dict__` (from `BUILD`) is checked data, then dropped.
                if let Some(s) = state {
                    self.value(s, depth + 1)?;
                }
                Ok(PyValue::Exception(PyException {
                    class,
                    args: self.args(args, depth)?,
                }))
            }
            Global::ByteArray => match self.args(args, depth)?.as_slice() {
                [] => Ok(PyValue::ByteArray(Vec::new())),
                [PyValue::Bytes(b)] => Ok(PyValue::ByteArray(b.clone())),
                _ => Err(PickleError::Shape(
                    "bytearray(...) of other than bytes".into(),
                )),
            },
            Global::Set | Global::FrozenSet => {
                let items = match self.args(args, depth)?.into_iter().next() {
                    None => Vec::new(),
                    Some(PyValue::List(l)) => l,
                    Some(_) => {
                        return Err(PickleError::Shape("set(...) of other than a list".into()));
                    }
                };
                Ok(if g == Global::Set {
                    PyValue::Set(items)
                } else {
                    PyValue::FrozenSet(items)
                })
            }
            Global::Slice => match <[PyValue; 3]>::try_from(self.args(args, depth)?) {
                Ok(parts)
                    if parts
                        .iter()
                        .all(|p| matches!(p, PyValue::None | PyValue::Int(_))) =>
                {
                    Ok(PyValue::Slice(Box::new(parts)))
                }
                _ => Err(PickleError::Shape(
                    "slice(...) of other than 3 ints or None".into(),
                )),
            },
            Global::RebuildProxy => self.rebuild_proxy(args, depth),
            _ => Err(PickleError::Shape(format!("a call of {g:?}"))),
        }
    }

    /// `RebuildProxy(class, token, 'pickle', kwds)`: a proxy of the same manager.
    fn rebuild_proxy(&mut self, args: Idx, depth: usize) -> Result<PyValue, PickleError> {
        let bad = |w: &str| PickleError::Shape(format!("RebuildProxy {w}"));
        let Node::Tuple(items) = &self.arena[args] else {
            return Err(bad("arguments"));
        };
        let [class, token, serializer, kwds] = items.as_slice() else {
            return Err(bad("with other than 4 arguments"));
        };
        let class = match self.arena[*class] {
            Node::Global(Global::Proxy(p)) => Some(p),
            Node::Global(Global::AutoProxy) => None,
            _ => return Err(bad("of a class that is not a manager proxy")),
        };
        let token = match &self.arena[*token] {
            Node::NewObj(g, a, s) => self.token(*g, *a, *s, depth + 1)?,
            _ => return Err(bad("without a Token")),
        };
        if self.value(*serializer, depth + 1)? != PyValue::Str("pickle".into()) {
            return Err(bad("with a serializer other than 'pickle'"));
        }
        let mut exposed = None;
        match self.value(*kwds, depth + 1)? {
            PyValue::Dict(kw) => {
                for (k, v) in kw {
                    match (k.as_str(), v) {
                        (Some("exposed"), PyValue::Tuple(names) | PyValue::List(names)) => {
                            let names = names
                                .into_iter()
                                .map(|n| match n {
                                    PyValue::Str(s) => Ok(s),
                                    _ => Err(bad("with an exposed name that is not a str")),
                                })
                                .collect::<Result<_, _>>()?;
                            exposed = Some(names);
                        }
                        (Some("incref" | "manager_owned"), PyValue::Bool(_)) => {}
                        (Some("authkey"), _) => {
                            return Err(bad("carrying an authkey"));
                        }
                        _ => return Err(bad("with an unknown keyword")),
                    }
                }
            }
            _ => return Err(bad("keywords that are not a dict")),
        }
        Ok(PyValue::Proxy(ProxyRef {
            class,
            token,
            exposed,
        }))
    }
}

/// Encodes `value` as a protocol 4 pickle.
pub fn encode(value: &PyValue) -> Result<Vec<u8>, PickleError> {
    let mut out = vec![0x80, 4];
    write(&mut out, value, 0)?;
    out.push(b'.');
    Ok(out)
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    if b.len() < 256 {
        out.push(0x8c);
        out.push(b.len() as u8);
    } else if let Ok(n) = u32::try_from(b.len()) {
        out.push(b'X');
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(0x8d);
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(b);
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    if b.len() < 256 {
        out.push(b'C');
        out.push(b.len() as u8);
    } else if let Ok(n) = u32::try_from(b.len()) {
        out.push(b'B');
        out.extend_from_slice(&n.to_le_bytes());
    } else {
        out.push(0x8e);
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    }
    out.extend_from_slice(b);
}

fn write_int(out: &mut Vec<u8>, v: i128) {
    if (0..256).contains(&v) {
        out.extend_from_slice(&[b'K', v as u8]);
    } else if (0..65536).contains(&v) {
        out.push(b'M');
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if let Ok(v) = i32::try_from(v) {
        out.push(b'J');
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        // The shortest two's complement form.
        let b = v.to_le_bytes();
        let mut n = 16;
        while n > 1 {
            let (last, prev) = (b[n - 1], b[n - 2]);
            if (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0) {
                n -= 1;
            } else {
                break;
            }
        }
        out.extend_from_slice(&[0x8a, n as u8]);
        out.extend_from_slice(&b[..n]);
    }
}

fn write_global(out: &mut Vec<u8>, (module, name): (&str, &str)) {
    write_str(out, module);
    write_str(out, name);
    out.push(0x93);
}

fn write_tuple(out: &mut Vec<u8>, items: &[PyValue], depth: usize) -> Result<(), PickleError> {
    match items.len() {
        0 => out.push(b')'),
        1..=3 => {
            for i in items {
                write(out, i, depth + 1)?;
            }
            out.push(0x84 + items.len() as u8);
        }
        _ => {
            out.push(b'(');
            for i in items {
                write(out, i, depth + 1)?;
            }
            out.push(b't');
        }
    }
    Ok(())
}

fn write_items(
    out: &mut Vec<u8>,
    items: &[PyValue],
    depth: usize,
    close: u8,
) -> Result<(), PickleError> {
    if !items.is_empty() {
        out.push(b'(');
        for i in items {
            write(out, i, depth + 1)?;
        }
        out.push(close);
    }
    Ok(())
}

fn write_token(out: &mut Vec<u8>, t: &Token, depth: usize) -> Result<(), PickleError> {
    write_global(out, ("multiprocessing.managers", "Token"));
    out.extend_from_slice(b")\x81");
    write_str(out, &t.typeid);
    write(out, &t.address, depth + 1)?;
    write_str(out, &t.id);
    out.extend_from_slice(b"\x87b");
    Ok(())
}

fn write(out: &mut Vec<u8>, value: &PyValue, depth: usize) -> Result<(), PickleError> {
    if depth > MAX_DEPTH {
        return Err(PickleError::TooDeep);
    }
    match value {
        PyValue::None => out.push(b'N'),
        PyValue::Bool(true) => out.push(0x88),
        PyValue::Bool(false) => out.push(0x89),
        PyValue::Int(v) => write_int(out, *v),
        PyValue::Float(f) => {
            out.push(b'G');
            out.extend_from_slice(&f.to_be_bytes());
        }
        PyValue::Str(s) => write_str(out, s),
        PyValue::Bytes(b) => write_bytes(out, b),
        PyValue::ByteArray(b) => {
            write_global(out, ("builtins", "bytearray"));
            write_bytes(out, b);
            out.extend_from_slice(b"\x85R");
        }
        PyValue::List(items) => {
            out.push(b']');
            write_items(out, items, depth, b'e')?;
        }
        PyValue::Tuple(items) => write_tuple(out, items, depth)?,
        PyValue::Dict(entries) => {
            out.push(b'}');
            if !entries.is_empty() {
                out.push(b'(');
                for (k, v) in entries {
                    write(out, k, depth + 1)?;
                    write(out, v, depth + 1)?;
                }
                out.push(b'u');
            }
        }
        PyValue::Set(items) => {
            out.push(0x8f);
            write_items(out, items, depth, 0x90)?;
        }
        PyValue::FrozenSet(items) => {
            out.push(b'(');
            for i in items {
                write(out, i, depth + 1)?;
            }
            out.push(0x91);
        }
        PyValue::Exception(e) => {
            write_global(out, e.class.path());
            write_tuple(out, &e.args, depth)?;
            out.push(b'R');
        }
        PyValue::Slice(parts) => {
            write_global(out, ("builtins", "slice"));
            write_tuple(out, parts.as_slice(), depth)?;
            out.push(b'R');
        }
        PyValue::Token(t) => write_token(out, t, depth)?,
        PyValue::Proxy(p) => {
            write_global(out, ("multiprocessing.managers", "RebuildProxy"));
            out.push(b'(');
            match p.class {
                Some(c) => write_global(out, c.path()),
                None => write_global(out, ("multiprocessing.managers", "AutoProxy")),
            }
            write_token(out, &p.token, depth + 1)?;
            write_str(out, "pickle");
            out.push(b'}');
            if let Some(names) = &p.exposed {
                write_str(out, "exposed");
                let names: Vec<PyValue> = names.iter().map(|n| PyValue::Str(n.clone())).collect();
                write_tuple(out, &names, depth + 1)?;
                out.push(b's');
            }
            out.extend_from_slice(b"tR");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from CPython 3.11 (`ForkingPickler.dumps`).
    const CREATE: &[u8] = b"\x80\x04\x95\x19\x00\x00\x00\x00\x00\x00\x00(N\x8c\x06create\x94\x8c\x04dict\x94\x85\x94}\x94t\x94.";
    const KEY_ERROR: &[u8] = b"\x80\x04\x95,\x00\x00\x00\x00\x00\x00\x00\x8c\x06#ERROR\x94\x8c\x08builtins\x94\x8c\x08KeyError\x94\x93\x94\x8c\x01x\x94\x85\x94R\x94\x86\x94.";
    const PROXY: &[u8] = b"\x80\x04\x95c\x00\x00\x00\x00\x00\x00\x00\x8c\x06#PROXY\x94\x8c\x08__next__\x94\x85\x94\x8c\x18multiprocessing.managers\x94\x8c\x05Token\x94\x93\x94)\x81\x94\x8c\x04dict\x94\x8c\t127.0.0.1\x94M\x88\x13\x86\x94\x8c\x027f\x94\x87\x94b\x86\x94\x86\x94.";
    const PUT: &[u8] = b"\x80\x04\x95r\x00\x00\x00\x00\x00\x00\x00(K\x03\x8c\x03put\x94}\x94(\x8c\x02id\x94K\x01\x8c\x04path\x94\x8c\x06/tmp/a\x94\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@C\x01x\x94G?\xf8\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\tbytearray\x94\x93\x94C\x02ab\x94\x85\x94R\x94u\x85\x94}\x94\x8c\x07timeout\x94K\x01st\x94.";

    /// Real pickles, for the fuzz test to mutate.
    pub(crate) const SEEDS: &[&[u8]] = &[CREATE, KEY_ERROR, PROXY, PUT];

    fn s(x: &str) -> PyValue {
        PyValue::Str(x.into())
    }

    #[test]
    fn decodes_what_cpython_sends() {
        assert_eq!(
            decode(CREATE).unwrap(),
            PyValue::Tuple(vec![
                PyValue::None,
                s("create"),
                PyValue::Tuple(vec![s("dict")]),
                PyValue::Dict(vec![])
            ])
        );
        assert_eq!(
            decode(KEY_ERROR).unwrap(),
            PyValue::Tuple(vec![
                s("#ERROR"),
                PyValue::Exception(PyException {
                    class: ExcClass::KeyError,
                    args: vec![s("x")]
                })
            ])
        );
        let PyValue::Tuple(t) = decode(PROXY).unwrap() else {
            panic!()
        };
        let PyValue::Tuple(inner) = &t[1] else {
            panic!()
        };
        assert_eq!(
            inner[1],
            PyValue::Token(Token {
                typeid: "dict".into(),
                address: Box::new(PyValue::Tuple(vec![s("127.0.0.1"), PyValue::Int(5000)])),
                id: "7f".into()
            })
        );
        let PyValue::Tuple(t) = decode(PUT).unwrap() else {
            panic!()
        };
        let PyValue::Tuple(args) = &t[2] else {
            panic!()
        };
        let PyValue::Dict(d) = &args[0] else { panic!() };
        assert_eq!(d[2], (PyValue::Int(1 << 70), PyValue::Bytes(b"x".to_vec())));
        assert_eq!(
            d[3],
            (PyValue::Float(1.5), PyValue::ByteArray(b"ab".to_vec()))
        );
    }

    #[test]
    fn encoding_roundtrips() {
        let v = PyValue::Tuple(vec![
            PyValue::Int(-1),
            PyValue::Int(300),
            PyValue::Int(70000),
            PyValue::Int(-(1 << 40)),
            PyValue::Int(i128::MIN),
            PyValue::Int(i128::MAX),
            s(&"x".repeat(300)),
            PyValue::Bytes(vec![1; 300]),
            PyValue::ByteArray(vec![2]),
            PyValue::List(vec![PyValue::None, PyValue::Bool(true)]),
            PyValue::Dict(vec![(s("a"), PyValue::Float(-0.5))]),
            PyValue::Set(vec![PyValue::Int(1)]),
            PyValue::FrozenSet(vec![]),
            PyValue::Slice(Box::new([PyValue::None, PyValue::Int(-1), PyValue::Int(2)])),
            PyValue::Exception(PyException::new(ExcClass::QueueEmpty, "")),
            PyValue::Proxy(ProxyRef {
                class: None,
                token: Token {
                    typeid: "Queue".into(),
                    address: Box::new(s("/tmp/x")),
                    id: "1".into(),
                },
                exposed: Some(vec!["get".into()]),
            }),
        ]);
        assert_eq!(decode(&encode(&v).unwrap()).unwrap(), v);
    }

    #[test]
    fn stored_items_nested_too_deep_are_refused_without_recursing_far() {
        // postcard of List(List(...)): variant 7, length 1, repeated.
        let mut bytes = Vec::new();
        for _ in 0..100_000 {
            bytes.extend_from_slice(&[7, 1]);
        }
        bytes.push(0);
        assert!(crate::codec::decode::<PyValue>(&bytes).is_err());
        let ok = PyValue::List(vec![PyValue::List(vec![PyValue::Int(1)])]);
        let b = crate::codec::encode(&ok).unwrap();
        assert_eq!(crate::codec::decode::<PyValue>(&b).unwrap(), ok);
    }

    #[test]
    fn refuses_globals_outside_the_list() {
        let p = b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x04true\x85R.";
        assert_eq!(
            decode(p),
            Err(PickleError::Global {
                module: "os".into(),
                name: "system".into()
            })
        );
        let p = b"cos\nsystem\n(S'true'\ntR.";
        assert!(matches!(decode(p), Err(PickleError::Global { .. })));
        // An allowed class used otherwise than its one shape.
        let p = b"\x80\x04\x8c\x18multiprocessing.managers\x8c\x05Token\x93)R.";
        assert!(matches!(decode(p), Err(PickleError::Shape(_))));
        let p = b"\x80\x04\x8c\x08builtins\x8c\x08KeyError\x93.";
        assert!(matches!(decode(p), Err(PickleError::Shape(_))));
    }

    #[test]
    fn bounds_depth_size_and_cycles() {
        let n = 1_000_000;
        let mut p = vec![0x80, 4];
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        assert_eq!(decode(&p), Err(PickleError::TooDeep));
        // A list that contains itself.
        assert_eq!(decode(b"\x80\x04]\x94h\x00a."), Err(PickleError::TooDeep));
        // A length that promises more than arrived allocates nothing.
        assert!(matches!(
            decode(b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7f."),
            Err(PickleError::Truncated(_))
        ));
        assert_eq!(
            decode(b"\x80\x04\x8a\x11\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01."),
            Err(PickleError::IntTooLarge(17))
        );
        // Shared references cannot expand past the budget: a list holding one 60 kB string
        // 20 000 times.
        let mut p = b"\x80\x04]\x94(\x8d".to_vec();
        p.extend_from_slice(&60_000u64.to_le_bytes());
        p.extend(std::iter::repeat_n(b'a', 60_000));
        p.push(0x94);
        for _ in 0..20_000 {
            p.extend_from_slice(b"h\x01");
        }
        p.extend_from_slice(b"e.");
        assert!(matches!(decode(&p), Err(PickleError::Limit(_))));
        // Two bytes per value cannot make the machine hold gigabytes.
        let mut p = b"\x80\x04]".to_vec();
        p.extend(std::iter::repeat_n(*b"K\x01", MAX_NODES).flatten());
        assert!(matches!(decode(&p), Err(PickleError::Limit(_))));
        for cut in 0..PUT.len() {
            assert!(decode(&PUT[..cut]).is_err());
        }
        assert!(matches!(
            decode(&[PUT, b"x"].concat()),
            Err(PickleError::Trailing(1))
        ));
    }
}

/// Randomized decoding of mutated real pickles: no panic, no hang, bounded memory. A few
/// thousand cases by default; `MULTIPROC_PICKLE_FUZZ=<cases>` runs longer
/// (`MULTIPROC_PICKLE_FUZZ=5000000 cargo test -p multiproc --release --lib pickle_fuzz`).
#[cfg(test)]
mod fuzz {
    use super::tests::SEEDS;
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Opcodes and operands that stress the machine.
    const INTERESTING: &[&[u8]] = &[
        b"(",
        b"t",
        b"e",
        b"u",
        b"a",
        b"s",
        b"\x94",
        b"h\x00",
        b"j\xff\xff\xff\xff",
        b"]",
        b"}",
        b"R",
        b"\x81",
        b"b",
        b"\x93",
        b"0",
        b"1",
        b"2",
        b"\x85",
        b"\x8f",
        b"\x90",
        b"\x91",
        b"\x8a\x10",
        b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff",
        b"X\xff\xff\xff\x7f",
        b"\x8c\x02os\x8c\x06system\x93",
        b"cbuiltins\neval\n",
        b"\x95\xff\xff\xff\xff\x00\x00\x00\x00",
    ];

    fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
        let mut p = seed.to_vec();
        for _ in 0..1 + rng.below(6) {
            let at = rng.below(p.len() + 1);
            match rng.below(5) {
                0 if !p.is_empty() => {
                    let i = rng.below(p.len());
                    p[i] = rng.next() as u8;
                }
                1 if !p.is_empty() => {
                    let end = (at + rng.below(8)).min(p.len());
                    p.drain(at.min(end)..end);
                }
                2 => {
                    let ins = INTERESTING[rng.below(INTERESTING.len())];
                    p.splice(at..at, ins.iter().copied());
                }
                3 if !p.is_empty() => {
                    // Repeat a slice (deep nesting, many memo references).
                    let start = rng.below(p.len());
                    let end = (start + 1 + rng.below(4)).min(p.len());
                    let piece = p[start..end].to_vec();
                    let times = 1 + rng.below(2000);
                    let rep: Vec<u8> = piece
                        .iter()
                        .copied()
                        .cycle()
                        .take(piece.len() * times)
                        .collect();
                    p.splice(at.min(p.len())..at.min(p.len()), rep);
                }
                _ => {
                    let other = SEEDS[rng.below(SEEDS.len())];
                    let from = rng.below(other.len());
                    p.splice(at..at, other[from..].iter().copied());
                }
            }
        }
        p
    }

    #[test]
    fn pickle_fuzz() {
        let cases: usize = std::env::var("MULTIPROC_PICKLE_FUZZ")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ cases as u64);
        let started = std::time::Instant::now();
        let mut accepted = 0;
        for _ in 0..cases {
            let seed = SEEDS[rng.below(SEEDS.len())];
            let p = mutate(&mut rng, seed);
            let t = std::time::Instant::now();
            if let Ok(v) = decode(&p) {
                accepted += 1;
                // What was accepted encodes and decodes back to itself.
                let again = encode(&v).and_then(|b| decode(&b));
                assert!(
                    matches!(&again, Ok(w) if format!("{w:?}") == format!("{v:?}")),
                    "{p:?}"
                );
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(1),
                "slow: {p:?}"
            );
        }
        assert!(accepted > 0);
        eprintln!(
            "{cases} cases, {accepted} accepted, {:?}",
            started.elapsed()
        );
    }
}
