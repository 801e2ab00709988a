//! The sled data directory's disk reserve, made real: space held in a
//! ballast file ([`BALLAST_FILE`]) that the store gives back when the disk
//! runs out, so that deletes and disables (and their events) still have
//! room whoever filled the disk, and sled can open again after a restart.
//!
//! sled stops writing for good after its first failed write (an I/O error
//! poisons it until the process restarts), so the reserve must keep sled
//! from ever meeting a full disk rather than recover from it:
//! - a write that grows the store (a create, an import, a change other than
//!   a disable, a rotation, last-used times) needs the ballast held and, beside
//!   it, as much free space as the reserve: below that it is refused with
//!   [`StoreError::DiskReserve`];
//! - when free space falls under half the reserve (another process filled
//!   the disk, or deletes used it), the ballast is given back, at once and
//!   before the next delete or disable writes;
//! - once twice the reserve is free again, the ballast is made again and
//!   growing writes resume;
//! - before sled opens, the same rule gives the ballast back (sled writes
//!   as it opens, and a failed open can leave files it then reads as
//!   corrupt): a server whose disk filled while it was down still starts,
//!   serves checks and accepts deletes and disables. A second process on
//!   the same directory (which then finds it locked) applies the same
//!   rule the running one does within half a second, so it changes
//!   nothing the running one would not.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use super::StoreError;

/// The ballast's name in the data directory.
pub const BALLAST_FILE: &str = "disk-reserve";

/// What to do with the ballast at this much free space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Keep,
    GiveBack,
    Make,
}

/// The rule, apart from the file system: see the module's comment.
fn next_step(held: bool, free: u64, reserve: u64) -> Step {
    if held && free < reserve / 2 {
        Step::GiveBack
    } else if !held && free >= reserve.saturating_mul(2) {
        Step::Make
    } else {
        Step::Keep
    }
}

/// The reserve of one data directory.
pub struct Reserve {
    dir: PathBuf,
    bytes: u64,
    /// Whether the ballast is held; its lock orders every look at the disk
    /// with what it leads to.
    held: Mutex<bool>,
}

impl Reserve {
    /// For `dir`, which sled has open (so no other process tends it): the
    /// ballast found, made or given back as the free space says. With
    /// `bytes` 0 there is no reserve, and a ballast left from an earlier
    /// setting is removed; one of another size is made again at this one.
    pub fn open(dir: &Path, bytes: u64) -> Result<Reserve, StoreError> {
        let path = dir.join(BALLAST_FILE);
        let found = fs::metadata(&path).ok().map(|m| m.len());
        if found.is_some() && found != Some(bytes) {
            fs::remove_file(&path).map_err(|e| {
                StoreError::unavailable(format!("cannot remove {}", path.display()), e)
            })?;
        }
        let reserve = Reserve {
            dir: dir.to_owned(),
            bytes,
            held: Mutex::new(found == Some(bytes) && bytes > 0),
        };
        if bytes > 0 {
            reserve.tend()?;
        }
        Ok(reserve)
    }

    /// Before sled opens `dir`: gives back its ballast when the rule says
    /// so (see the module's comment). A directory not made yet has none.
    pub fn give_back_to_open(dir: &Path, bytes: u64) -> Result<(), StoreError> {
        let path = dir.join(BALLAST_FILE);
        if !path.exists() {
            return Ok(());
        }
        let probe = Reserve {
            dir: dir.to_owned(),
            bytes,
            held: Mutex::new(true),
        };
        let free = probe.free()?;
        if next_step(true, free, bytes) == Step::GiveBack || bytes == 0 {
            probe.give_back(free)?;
        }
        Ok(())
    }

    /// Before a write that grows the store: refused unless the ballast is
    /// held and as much again is free.
    pub fn check_growth(&self) -> Result<(), StoreError> {
        if self.bytes == 0 {
            return Ok(());
        }
        let (held, free) = self.tend()?;
        let needed = if held {
            self.bytes
        } else {
            self.bytes.saturating_mul(2)
        };
        if free < needed {
            return Err(StoreError::DiskReserve {
                free_kib: free / 1024,
                needed_kib: needed / 1024,
                reserve_kib: self.bytes / 1024,
            });
        }
        Ok(())
    }

    /// Before a write the reserve is kept for (a delete, a disable), and
    /// at every store check: gives the ballast back when the disk is nearly
    /// out of space, makes it again when there is room. The free space
    /// after, and whether the ballast is held.
    pub fn tend(&self) -> Result<(bool, u64), StoreError> {
        if self.bytes == 0 {
            return Ok((false, self.free()?));
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let free = self.free()?;
        match next_step(*held, free, self.bytes) {
            Step::Keep => Ok((*held, free)),
            Step::GiveBack => {
                self.give_back(free)?;
                *held = false;
                Ok((false, self.free()?))
            }
            Step::Make => match self.make() {
                Ok(()) => {
                    *held = true;
                    tracing::info!(
                        reserve_kib = self.bytes / 1024,
                        "the disk reserve is held (space kept for deletes and disables)"
                    );
                    Ok((true, self.free()?))
                }
                Err(e) => {
                    // A half-made ballast is space taken for nothing.
                    let _ = fs::remove_file(self.ballast());
                    Err(e)
                }
            },
        }
    }

    fn give_back(&self, free: u64) -> Result<(), StoreError> {
        let path = self.ballast();
        fs::remove_file(&path).map_err(|e| {
            StoreError::unavailable(
                format!("cannot give back the disk reserve {}", path.display()),
                e,
            )
        })?;
        if self.bytes > 0 {
            tracing::error!(
                free_kib = free / 1024,
                reserve_kib = self.bytes / 1024,
                "the data directory's disk is nearly full: gave back the disk reserve so deletes and disables have room; creates, changes and rotations are refused until twice the reserve is free"
            );
        }
        Ok(())
    }

    fn ballast(&self) -> PathBuf {
        self.dir.join(BALLAST_FILE)
    }

    fn free(&self) -> Result<u64, StoreError> {
        let stats = rustix::fs::statvfs(&self.dir).map_err(|e| {
            StoreError::unavailable("cannot read the free space of the data directory", e)
        })?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Writes the ballast with real blocks (allocated, not a sparse file,
    /// which would hold nothing back), durable, private like the store.
    fn make(&self) -> Result<(), StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.ballast();
        let failed = |e: std::io::Error| {
            StoreError::unavailable(
                format!("cannot make the disk reserve {}", path.display()),
                e,
            )
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(failed)?;
        let allocated =
            rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, self.bytes);
        if allocated.is_err() {
            // A file system without fallocate: zeros, written out.
            const CHUNK: usize = 1 << 20;
            let zeros = vec![0u8; CHUNK];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                file.write_all(&zeros[..n]).map_err(failed)?;
                left -= n as u64;
            }
        }
        file.sync_all().map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_ballast_goes_below_half_the_reserve_and_comes_back_at_twice() {
        let reserve = 64 * MIB;
        assert_eq!(next_step(true, 100 * MIB, reserve), Step::Keep);
        // Growing writes stop at the reserve, the ballast stays...
        assert_eq!(next_step(true, 40 * MIB, reserve), Step::Keep);
        // ...until half of it is left.
        assert_eq!(next_step(true, 32 * MIB - 1, reserve), Step::GiveBack);
        // Given back, it is made again only with room for it and the reserve.
        assert_eq!(next_step(false, 100 * MIB, reserve), Step::Keep);
        assert_eq!(next_step(false, 128 * MIB, reserve), Step::Make);
    }

    #[test]
    fn a_reserve_is_made_given_back_and_removed_when_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let reserve = Reserve::open(dir.path(), MIB).unwrap();
        let ballast = dir.path().join(BALLAST_FILE);
        let meta = fs::metadata(&ballast).unwrap();
        assert_eq!(meta.len(), MIB);
        {
            use std::os::unix::fs::MetadataExt;
            assert!(meta.blocks() * 512 >= MIB, "allocated, not sparse");
            assert_eq!(meta.mode() & 0o777, 0o600);
        }
        reserve.check_growth().unwrap();
        drop(reserve);
        // Opened again: found, not made twice.
        let reserve = Reserve::open(dir.path(), MIB).unwrap();
        assert!(*reserve.held.lock().unwrap());
        drop(reserve);
        // Plenty of room: kept at the next open.
        Reserve::give_back_to_open(dir.path(), MIB).unwrap();
        assert!(ballast.exists());
        fs::remove_file(&ballast).unwrap();
        // Turned off: nothing held, nothing refused.
        Reserve::open(dir.path(), MIB).unwrap();
        assert!(ballast.exists());
        let off = Reserve::open(dir.path(), 0).unwrap();
        assert!(!ballast.exists());
        off.check_growth().unwrap();
    }
}
