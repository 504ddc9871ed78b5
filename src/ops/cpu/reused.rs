//! Scratch buffers kept per thread from one call to the next.
//!
//! A kernel that needs megabytes of working memory on every call (Winograd's transformed tiles
//! and weights) would otherwise have the allocator hand it fresh pages, which the kernel
//! (page faults) or `vec![0.0; n]` (a memset) clear before the first useful write. A buffer
//! taken here holds whatever an earlier call left in it: always initialised floats, never
//! uninitialised memory, so it serves any scratch that is written before it is read.
//!
//! The spares are memory the process holds between calls (at most a call's working set per
//! thread). [`release_all`] frees them, so that a measurement of a step's memory
//! (`train::memory`) counts the scratch the step allocates rather than what earlier steps left.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers a thread keeps for reuse; more are freed when dropped.
const KEPT: usize = 16;

thread_local! {
    static SPARE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// `len` floats, returned to this thread's spares when dropped.
pub struct Reused {
    buf: Vec<f32>,
    len: usize,
}

impl Reused {
    /// `len` floats with values left over from earlier use.
    pub fn any(len: usize) -> Self {
        let mut buf = SPARE
            .with(|s| {
                let mut s = s.borrow_mut();
                // The smallest spare that is large enough, or else the largest (grown below).
                let fits = (0..s.len()).filter(|&i| s[i].len() >= len).min_by_key(|&i| s[i].len());
                let best = fits.or_else(|| (0..s.len()).max_by_key(|&i| s[i].len()))?;
                Some(s.swap_remove(best))
            })
            .unwrap_or_default();
        if buf.len() < len {
            // Not `resize`: its reallocation would copy the old values, which nobody reads.
            buf = vec![0.0; len];
        }
        Self { buf, len }
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut r = Self::any(len);
        r.fill(0.0);
        r
    }
}

impl Deref for Reused {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl DerefMut for Reused {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for Reused {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        // A thread being torn down has no spares left to return to.
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEPT {
                s.push(buf);
            }
        });
    }
}

/// Frees the spares of this thread and of every thread of rayon's pool.
pub fn release_all() {
    let release = || {
        let _ = SPARE.try_with(|s| s.borrow_mut().clear());
    };
    release();
    rayon::broadcast(|_| release());
}
