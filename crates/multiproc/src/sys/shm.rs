//! Shared memory: mapped memory files (memfds and named `/dev/shm` objects), and memory files
//! that hand bytes to another process.

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use nix::sys::mman::{MapFlags, ProtFlags};

use super::errno;

/// A shared mapping of a memory file (a memfd, or a named `/dev/shm` object). Every process
/// that maps the same file sees the same bytes; the file lives while any descriptor or
/// mapping of it does (and, for a named one, until it is unlinked).
#[derive(Debug)]
pub(crate) struct Region {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; all access from this crate goes through atomics
// or through copies guarded by the crate's cross-process locks, which is what makes
// concurrent use from several threads (and processes) sound.
unsafe impl Send for Region {}
// SAFETY: as above: `&Region` only hands out atomics and bounds-checked copies.
unsafe impl Sync for Region {}

impl Region {
    /// A new zero-filled anonymous region of `len` bytes (a memfd, so nothing to unlink).
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Region> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(errno)?;
        nix::unistd::ftruncate(&fd, len as i64).map_err(errno)?;
        Region::map(fd, len)
    }

    /// A new named region in `/dev/shm` (`O_EXCL`: fails if the name exists).
    pub(crate) fn create_named(name: &str, len: usize) -> io::Result<Region> {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let fd = nix::sys::mman::shm_open(
            name,
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(errno)?;
        if let Err(e) = nix::unistd::ftruncate(&fd, len as i64) {
            let _ = nix::sys::mman::shm_unlink(name);
            return Err(errno(e));
        }
        Region::map(fd, len)
    }

    /// Maps an existing named region.
    pub(crate) fn open_named(name: &str) -> io::Result<Region> {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let fd = nix::sys::mman::shm_open(name, OFlag::O_RDWR, Mode::empty()).map_err(errno)?;
        Region::from_fd(fd)
    }

    /// Removes a name from `/dev/shm` (mappings stay valid).
    pub(crate) fn unlink_named(name: &str) -> io::Result<()> {
        nix::sys::mman::shm_unlink(name).map_err(errno)
    }

    /// Maps the memory file behind `fd` (received from another process), whole.
    pub(crate) fn from_fd(fd: OwnedFd) -> io::Result<Region> {
        let len = nix::sys::stat::fstat(&fd).map_err(errno)?.st_size as usize;
        Region::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Region> {
        let size = NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty region"))?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no address hint), of a file we
        // hold open; it aliases no Rust object. It is unmapped exactly once, in `Drop`.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(errno)?;
        Ok(Region {
            fd,
            ptr: ptr.cast(),
            len,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn check(&self, offset: usize, size: usize, align: usize) {
        assert!(
            offset.is_multiple_of(align)
                && offset.checked_add(size).is_some_and(|end| end <= self.len),
            "region access out of bounds or misaligned: offset {offset}, size {size}, region {}",
            self.len
        );
    }

    /// The `u32` at `offset` as an atomic. `offset` is chosen by this crate (a layout
    /// constant), never by user input; misuse is a bug and panics.
    pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        self.check(offset, 4, 4);
        // SAFETY: in bounds and 4-aligned (checked; the mapping is page-aligned); the memory
        // is shared and only ever accessed atomically at this offset, and lives as long as
        // `self`.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    /// The `u64` at `offset` as an atomic (see [`Region::u32_at`]).
    pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        self.check(offset, 8, 8);
        // SAFETY: as in `u32_at`, with 8-byte alignment.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    /// Copies `dst.len()` bytes out of the region at `offset`. Callers hold the lock that
    /// guards those bytes.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len(), 1);
        // SAFETY: in bounds (checked); `dst` is a distinct Rust buffer; the bytes are plain
        // data guarded by the caller's lock.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Copies `src` into the region at `offset` (see [`Region::read`]).
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len(), 1);
        // SAFETY: as in `read`, in the other direction.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len())
        }
    }
}

impl Region {
    /// Gives the memory behind `offset..offset+len` back to the system (it reads as zeros
    /// afterwards); the range stays mapped and usable.
    pub(crate) fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        use nix::fcntl::{FallocateFlags, fallocate};
        self.check(offset, len, 1);
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        fallocate(&self.fd, mode, offset as i64, len as i64).map_err(errno)
    }
}

impl Region {
    /// Maps the pages behind `offset..offset+len` into this process for writing now
    /// (allocating them), without changing their contents: the page faults happen here, in
    /// one call, instead of one by one inside a later copy. Best effort: on a kernel without
    /// `MADV_POPULATE_WRITE` (before 5.14) nothing happens and the copy faults as usual.
    pub(crate) fn populate_for_writing(&self, offset: usize, len: usize) {
        use nix::sys::mman::{MmapAdvise, madvise};
        let page = 4096;
        let start = offset / page * page;
        let end = offset.saturating_add(len).div_ceil(page) * page;
        let end = end.min(self.len / page * page);
        if start >= end {
            return;
        }
        // SAFETY: `start..end` lies inside this mapping (clamped above, page-aligned as the
        // mapping itself is); populating only faults pages in, it neither moves nor changes
        // memory that references into the region may point to.
        let _ = unsafe {
            madvise(
                NonNull::new_unchecked(self.ptr.as_ptr().add(start)).cast(),
                end - start,
                MmapAdvise::MADV_POPULATE_WRITE,
            )
        };
    }
}

impl AsFd for Region {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, unmapped only here; no
        // reference into it outlives `self` (accessors borrow `self`).
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len) };
    }
}

/// An anonymous in-memory file (close-on-exec) holding `data`, to hand to another process.
pub(crate) fn memfd_with(name: &str, data: &[u8]) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC).map_err(errno)?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, data)?;
    // The offset belongs to the open file description the receiver shares: rewind it.
    std::io::Seek::rewind(&mut file)?;
    Ok(OwnedFd::from(file))
}
