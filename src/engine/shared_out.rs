//! An output buffer that the thread pool's threads write in disjoint parts.

use std::marker::PhantomData;

/// A mutable slice handed to a parallel call, each part written by one thread. It carries the
/// slice's length (every part is bounds-checked) and lifetime (it cannot outlive the buffer);
/// only the disjointness of the parts is the caller's promise.
#[derive(Debug)]
pub(crate) struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

impl<T> Clone for SharedMut<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SharedMut<'_, T> {}

// SAFETY: the wrapper only hands out parts of a `&mut [T]` it borrows for 'a; sending it to another
// thread is sending parts of that slice, sound for `T: Send` as long as the parts are disjoint,
// which `part`'s contract requires.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
// SAFETY: as above; `&SharedMut` gives nothing but `part`, under the same contract.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    /// Wraps `buf` for one parallel call.
    pub(crate) fn new(buf: &'a mut [T]) -> Self {
        Self {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// Elements `start..start + len`. Panics when the range is outside the buffer.
    ///
    /// # Safety
    /// No other live slice from the same wrapper overlaps the range.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn part(&self, start: usize, len: usize) -> &'a mut [T] {
        assert!(
            start <= self.len && len <= self.len - start,
            "part {start}..{} of a buffer of {}",
            start.saturating_add(len),
            self.len
        );
        // SAFETY: the range is inside the borrowed buffer (asserted), which lives for 'a; the
        // caller promises no overlap with any other live part.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_parts_write_the_buffer() {
        let mut buf = vec![0u32; 10];
        let s = SharedMut::new(&mut buf);
        // SAFETY: the two parts do not overlap.
        let (a, b) = unsafe { (s.part(0, 4), s.part(4, 6)) };
        a.fill(1);
        b.fill(2);
        assert_eq!(buf, [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
    }

    #[test]
    #[should_panic(expected = "part 8..11 of a buffer of 10")]
    fn a_part_past_the_end_panics() {
        let mut buf = vec![0u8; 10];
        let s = SharedMut::new(&mut buf);
        // SAFETY: the only part; the bounds check is what is tested.
        let _ = unsafe { s.part(8, 3) };
    }
}
