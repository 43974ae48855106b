//! Type tags: four bytes that say which type a typed message was sent as.
//!
//! The codec's encoding says nothing of its type: `-1i32` reads back as the `u32` 1. A typed
//! connection frame starts with a tag of the sent type, which the receiver checks against
//! the type it asks for.
//!
//! The tag is FNV-1a (32 bits) of the type's [`type_name`](std::any::type_name) made
//! independent of where the type lives and of how it is held:
//! - module paths go: `my_app::jobs::Job` and `worker::Job` are both `Job`, so two programs
//!   built apart that define the same message type in modules of their own agree;
//! - references and the smart pointers serde sees through go: `&T`, `&mut T`, `Box<T>`,
//!   `Rc<T>`, `Arc<T>`, `Cow<T>` are all `T`;
//! - a borrowed form and its owned form are one: `str` and `String`, `[T]` and `Vec<T>`,
//!   `Path` and `PathBuf`, `OsStr` and `OsString`, `CStr` and `CString`, serde_bytes'
//!   `Bytes` and `ByteBuf`;
//! - the hasher of a `HashMap` or `HashSet` goes.
//!
//! This applies inside generic arguments, tuples and arrays too: `(&str, &[Job])` and
//! `(String, Vec<Job>)` have the same tag.

use std::cell::Cell;

use crate::error::CodecError;

/// The tag of `T`, computed once per type and thread (a small cache).
///
/// Two programs built apart agree on it as long as their type names print alike: the
/// compiler does not promise that `type_name` stays the same across its versions, though
/// without module paths the names hardly move.
#[inline]
pub(crate) fn of<T: ?Sized>() -> [u8; 4] {
    let name = std::any::type_name::<T>();
    // The name is a static string: its address and length identify it (two types with
    // one name share a tag anyway).
    let key = (name.as_ptr() as usize, name.len());
    let slot = (key.0 >> 3 ^ key.1) % CACHE;
    TAGS.with(|tags| {
        let (k, tag) = tags[slot].get();
        if k == key {
            return tag;
        }
        let tag = compute(name);
        tags[slot].set((key, tag));
        tag
    })
}

/// The tag of the type named `name`.
#[cold]
fn compute(name: &str) -> [u8; 4] {
    fnv1a(wire_name(name).as_bytes()).to_le_bytes()
}

/// Cache slots per thread.
const CACHE: usize = 16;

/// A cache slot: the address and length of a type's name, and its tag.
type Slot = Cell<((usize, usize), [u8; 4])>;

thread_local! {
    /// Recent tags by the address and length of their type's name. Plain data: no
    /// destructor to register on a thread's first use.
    static TAGS: [Slot; CACHE] =
        const { [const { Cell::new(((0, 0), [0; 4])) }; CACHE] };
}

/// FNV-1a, 32 bits.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The name a tag is made of: a [`type_name`](std::any::type_name) without module paths,
/// references and smart pointers, with owned forms named as their borrowed ones (see the
/// module's documentation).
fn wire_name(type_name: &str) -> String {
    let mut names = Names {
        rest: type_name.as_bytes(),
    };
    let mut out = String::with_capacity(type_name.len());
    while !names.rest.is_empty() {
        names.element(&mut out, None);
        // What stops an element at the top level (a stray `,` or `;`) is kept as it is.
        if let Some((&c, rest)) = names.rest.split_first() {
            out.push(char::from(c));
            names.rest = rest;
        }
    }
    out
}

/// A reader of a type name. Type names are ASCII but for identifiers; anything it does not
/// know is copied through, so that equal names always give equal results.
struct Names<'a> {
    rest: &'a [u8],
}

impl Names<'_> {
    fn eat(&mut self, literal: &str) -> bool {
        match self.rest.strip_prefix(literal.as_bytes()) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// Skips spaces; whether there were any.
    fn skip_spaces(&mut self) -> bool {
        let mut any = false;
        while self.eat(" ") {
            any = true;
        }
        any
    }

    /// An identifier (or a number: an array length, a const argument).
    fn ident(&mut self) -> String {
        let end = self
            .rest
            .iter()
            .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
            .unwrap_or(self.rest.len());
        let (ident, rest) = self.rest.split_at(end);
        self.rest = rest;
        String::from_utf8_lossy(ident).into_owned()
    }

    /// One element of a list that ends at `,`, `;` (an array's length follows) or `closer`:
    /// usually one type, but anything else (`fn(u8) -> u8`, `dyn A + B`) is taken as it
    /// comes, one space between its parts.
    fn element(&mut self, out: &mut String, closer: Option<u8>) {
        loop {
            let spaced = self.skip_spaces();
            let Some(&c) = self.rest.first() else {
                return;
            };
            if c == b',' || c == b';' || Some(c) == closer {
                return;
            }
            if spaced && !out.is_empty() {
                out.push(' ');
            }
            if self.eat("->") {
                out.push_str("->");
                continue;
            }
            let before = self.rest.len();
            self.ty(out);
            if self.rest.len() == before {
                // Not a type: keep the character.
                out.push(char::from(c));
                self.rest = &self.rest[1..];
            }
        }
    }

    /// The elements of a list up to `closer` (eaten), each normalized on its own; empty
    /// ones (lifetimes, after a trailing comma) left out.
    fn list(&mut self, closer: u8) -> Vec<String> {
        let mut items = Vec::new();
        loop {
            let mut item = String::new();
            self.element(&mut item, Some(closer));
            if !item.is_empty() {
                items.push(item);
            }
            if !(self.eat(",") || self.eat(";")) {
                break;
            }
        }
        if self.rest.first() == Some(&closer) {
            self.rest = &self.rest[1..];
        }
        items
    }

    /// One type, normalized, onto `out`.
    fn ty(&mut self, out: &mut String) {
        if self.eat("&") {
            self.eat("mut ");
            return self.ty(out);
        }
        if self.eat("'") {
            // A lifetime (`Cow<'_, str>`): not part of the name.
            self.ident();
            return;
        }
        if self.eat("(") {
            out.push('(');
            out.push_str(&self.list(b')').join(", "));
            out.push(')');
            return;
        }
        if self.eat("[") {
            // A slice `[T]`, or an array `[T; N]`.
            out.push('[');
            out.push_str(&self.list(b']').join("; "));
            out.push(']');
            return;
        }
        let mut name = self.ident();
        while self.eat("::") {
            name = self.ident();
        }
        let args = if self.eat("<") {
            self.list(b'>')
        } else {
            Vec::new()
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match (name.as_str(), args.as_slice()) {
            ("Box" | "Rc" | "Arc" | "Cow", [inner, ..]) => out.push_str(inner),
            ("String", []) => out.push_str("str"),
            ("Vec", [inner, ..]) => {
                out.push('[');
                out.push_str(inner);
                out.push(']');
            }
            ("PathBuf", []) => out.push_str("Path"),
            ("OsString", []) => out.push_str("OsStr"),
            ("CString", []) => out.push_str("CStr"),
            ("ByteBuf", []) => out.push_str("Bytes"),
            ("HashMap", [k, v, ..]) => out.push_str(&format!("HashMap<{k}, {v}>")),
            ("HashSet", [k, ..]) => out.push_str(&format!("HashSet<{k}>")),
            (name, []) => out.push_str(name),
            (name, args) => {
                out.push_str(name);
                out.push('<');
                out.push_str(&args.join(", "));
                out.push('>');
            }
        }
    }
}

/// The encoding after the tag at the start of a typed `frame`, if the tag is that of `T`.
#[inline]
pub(crate) fn strip<T: ?Sized>(frame: &[u8]) -> Result<&[u8], CodecError> {
    match frame.split_first_chunk::<4>() {
        Some((tag, value)) if *tag == of::<T>() => Ok(value),
        _ => Err(refused::<T>(frame)),
    }
}

/// Why a typed `frame` is not a `T`.
#[cold]
fn refused<T: ?Sized>(frame: &[u8]) -> CodecError {
    let name = std::any::type_name::<T>();
    CodecError::Decode(if frame.len() < 4 {
        format!(
            "`{name}`: a message of {} bytes is too short to be typed (a raw message sent with \
             `send_bytes`?)",
            frame.len()
        )
    } else {
        format!(
            "`{name}`: the message was sent as another type (its type tag is not that of \
             `{name}`)"
        )
    })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn names_lose_paths_references_and_owned_forms() {
        for (name, expected) in [
            ("u32", "u32"),
            ("alloc::string::String", "str"),
            ("&str", "str"),
            ("alloc::boxed::Box<str>", "str"),
            ("alloc::borrow::Cow<'_, str>", "str"),
            ("&mut alloc::vec::Vec<my_app::jobs::Job>", "[Job]"),
            ("&[worker::Job]", "[Job]"),
            ("(u8,)", "(u8)"),
            ("(u8, &str, ())", "(u8, str, ())"),
            ("[u8; 4]", "[u8; 4]"),
            ("&[[u8; 4]]", "[[u8; 4]]"),
            (
                "core::option::Option<alloc::sync::Arc<std::path::PathBuf>>",
                "Option<Path>",
            ),
            (
                "std::collections::hash::map::HashMap<u32, alloc::string::String, fx::Hasher>",
                "HashMap<u32, str>",
            ),
            (
                "core::result::Result<(), alloc::string::String>",
                "Result<(), str>",
            ),
            ("a::Pair<b::X, c::Y<3>>", "Pair<X, Y<3>>"),
            ("fn(u8) -> u8", "fn(u8) -> u8"),
            ("*const u8", "*const u8"),
            (
                "alloc::boxed::Box<dyn core::fmt::Debug + core::marker::Send>",
                "dyn Debug + Send",
            ),
            ("main::main::{{closure}}", "{{closure}}"),
        ] {
            assert_eq!(wire_name(name), expected, "{name}");
        }
    }

    #[test]
    fn tags_tell_types_apart_but_not_their_forms() {
        assert_eq!(of::<&str>(), of::<String>());
        assert_eq!(of::<str>(), of::<Box<str>>());
        assert_eq!(
            of::<(&str, &[u32], Option<&std::path::Path>)>(),
            of::<(String, Vec<u32>, Option<std::path::PathBuf>)>()
        );
        assert_ne!(of::<i32>(), of::<u32>());
        assert_ne!(of::<(u8, u8)>(), of::<u16>());
        assert_ne!(of::<[u8; 4]>(), of::<Vec<u8>>());
        assert_ne!(of::<Vec<u8>>(), of::<Vec<u16>>());
        // Cached or not, the same tag.
        for _ in 0..3 {
            assert_eq!(of::<u64>(), fnv1a(b"u64").to_le_bytes());
        }
    }
}
