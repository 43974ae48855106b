//! `SharedMemory`: raw bytes shared by processes, anonymous or named.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::SharedMemoryError;
use crate::process::tracker;
use crate::shm::Block;
use crate::sys::Region;

/// A block of bytes shared by processes (Python's `multiprocessing.shared_memory`).
///
/// - [`SharedMemory::new`]: anonymous (a memfd). Pass it to children as an argument or through
///   a connection; it is freed when the last handle and mapping are gone, in any process, even
///   after `SIGKILL`: nothing can leak.
/// - [`SharedMemory::create`] / [`SharedMemory::open`]: named, in `/dev/shm`, for processes
///   that did not start each other. The creating handle unlinks the name when dropped; if
///   the creator ends without dropping it (killed, `_exit`), the name is unlinked once every
///   process of its tree has ended (the tree's tracker, as Python's resource tracker).
///
/// ```
/// let shm = multiproc::SharedMemory::new(4096)?;
/// shm.write(0, b"hello")?;
/// let mut buf = [0u8; 5];
/// shm.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// # Ok::<(), multiproc::SharedMemoryError>(())
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedMemory {
    block: Block,
    #[serde(skip)]
    name: Option<Arc<Name>>,
}

/// A name this process created, unlinked when the last handle of the creator goes away.
#[derive(Debug)]
struct Name {
    name: String,
    owner: bool,
}

impl Drop for Name {
    fn drop(&mut self) {
        if self.owner {
            let _ = Region::unlink_named(&self.name);
            tracker::unregister(&self.name);
        }
    }
}

fn shm_name(name: &str) -> Result<String, SharedMemoryError> {
    let bare = name.trim_start_matches('/');
    if bare.is_empty() || bare.contains('/') || bare.len() > 250 {
        return Err(SharedMemoryError::BadName(name.to_string()));
    }
    Ok(format!("/{bare}"))
}

/// The error of a call on the name `name`: a missing or existing name said as such.
fn named(name: &str) -> impl FnOnce(std::io::Error) -> SharedMemoryError + '_ {
    move |e| match e.kind() {
        std::io::ErrorKind::NotFound => SharedMemoryError::NotFound(name.to_string()),
        std::io::ErrorKind::AlreadyExists => SharedMemoryError::Exists(name.to_string()),
        _ => SharedMemoryError::Io(e),
    }
}

impl SharedMemory {
    /// Anonymous shared memory of `size` bytes, zero-filled.
    pub fn new(size: usize) -> Result<SharedMemory, SharedMemoryError> {
        if size == 0 {
            return Err(SharedMemoryError::ZeroSize);
        }
        Ok(SharedMemory {
            block: Block(Arc::new(Region::create("multiproc-shm", size)?)),
            name: None,
        })
    }

    /// Named shared memory of `size` bytes; fails if the name exists. This handle owns the
    /// name: dropping it (and its clones) unlinks it.
    pub fn create(name: &str, size: usize) -> Result<SharedMemory, SharedMemoryError> {
        if size == 0 {
            return Err(SharedMemoryError::ZeroSize);
        }
        let name = shm_name(name)?;
        let region = Region::create_named(&name, size).map_err(named(&name))?;
        // Unlinked by the tree's tracker should this process end without dropping it.
        tracker::register(&name);
        Ok(SharedMemory {
            block: Block(Arc::new(region)),
            name: Some(Arc::new(Name { name, owner: true })),
        })
    }

    /// Attaches to named shared memory. A missing name is
    /// [`SharedMemoryError::NotFound`].
    pub fn open(name: &str) -> Result<SharedMemory, SharedMemoryError> {
        let name = shm_name(name)?;
        let region = Region::open_named(&name).map_err(named(&name))?;
        Ok(SharedMemory {
            block: Block(Arc::new(region)),
            name: Some(Arc::new(Name { name, owner: false })),
        })
    }

    /// Attaches to named shared memory that must be exactly `size` bytes
    /// ([`SharedMemoryError::WrongSize`] otherwise).
    pub fn open_sized(name: &str, size: usize) -> Result<SharedMemory, SharedMemoryError> {
        let shm = SharedMemory::open(name)?;
        if shm.size() != size {
            return Err(SharedMemoryError::WrongSize {
                name: name.to_string(),
                size: shm.size(),
                expected: size,
            });
        }
        Ok(shm)
    }

    /// The size in bytes.
    pub fn size(&self) -> usize {
        self.block.len()
    }

    /// The name, for named memory.
    pub fn name(&self) -> Option<&str> {
        self.name.as_ref().map(|n| n.name.as_str())
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), SharedMemoryError> {
        if offset.checked_add(len).is_none_or(|end| end > self.size()) {
            return Err(SharedMemoryError::OutOfRange {
                offset,
                len,
                size: self.size(),
            });
        }
        Ok(())
    }

    /// Copies bytes out, from `offset`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), SharedMemoryError> {
        self.check(offset, buf.len())?;
        self.block.read(offset, buf);
        Ok(())
    }

    /// Copies bytes in, at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), SharedMemoryError> {
        self.check(offset, data.len())?;
        self.block.write(offset, data);
        Ok(())
    }

    /// Removes the name now (mappings stay valid; new `open`s fail).
    pub fn unlink(&self) -> Result<(), SharedMemoryError> {
        match &self.name {
            Some(n) => {
                Region::unlink_named(&n.name)?;
                if n.owner {
                    tracker::unregister(&n.name);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The memory file behind the segment, to map it yourself (`mmap` it shared) or pass it on.
impl std::os::fd::AsFd for SharedMemory {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.block.0.as_fd()
    }
}
