//! Shared memory: [`SharedMemory`] (raw bytes), [`Value`] and [`Array`] (plain data), and
//! the blocks under every cross-process object.

pub(crate) mod block;
mod memory;
pub(crate) mod tracker;
mod value;

pub use memory::SharedMemory;
pub use value::{Array, Value};
