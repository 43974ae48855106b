//! CPython's manager protocol (`multiprocessing.managers`), both ways: stock Python clients
//! use a multiproc manager server, and Rust programs use a CPython manager server.
//!
//! The two protocols share the connection handshake; the server tells them apart by the
//! first request after it (a pickle starts with the `PROTO` opcode, `0x80`). Nothing
//! received is executed: [`pickle`] decodes only checked data.

mod client;
pub mod convert;
mod methods;
pub mod pickle;
mod serve;
mod value;

pub(super) use client::is_refused_request;
pub(super) use serve::serve;

pub use client::{PyDict, PyList, PyLock, PyManager, PyProxy, PyQueue};
pub use value::{ExcClass, ProxyClass, ProxyRef, PyException, PyValue, Token};
