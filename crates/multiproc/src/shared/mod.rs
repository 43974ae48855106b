//! Shared memory: [`SharedMemory`] (raw bytes), [`Value`] and [`Array`] (plain data).

mod memory;
mod value;

pub use memory::SharedMemory;
pub use value::{Array, Value};
