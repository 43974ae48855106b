//! The private floor of shared-memory building blocks, named by role: a mapped block as a
//! handle ([`Block`]), the robust futex lock word ([`lock_word`]) and the byte ring under
//! every queue ([`Ring`]).
//!
//! `sync/`, `queue/`, `shared/` and `pool/` build on these; they build on `sys/` and on the
//! crate's floor of codec, errors and waiting policy, never on an area above them.

pub(crate) mod bell;
pub(crate) mod block;
pub(crate) mod lock_watch;
pub(crate) mod lock_word;
pub(crate) mod ring;

pub(crate) use bell::Bell;
pub(crate) use block::Block;
pub(crate) use ring::{Blocking, Ring, Tally};
