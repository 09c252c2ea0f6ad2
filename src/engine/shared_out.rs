//! Output buffers that the thread pool's threads write in disjoint parts: a borrowed slice
//! ([`SharedMut`]), or a new buffer that is never zeroed first ([`Fresh`]).

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// A new buffer of `len` values, filled by disjoint writes from the pool's threads (each through
/// its own [`Writer`]), without the serial zeroing pass `vec![0; len]` costs before a parallel
/// call. It counts what is written:
/// [`Fresh::into_vec`] hands the values out only when the writes covered every element (disjoint
/// writes whose lengths sum to `len` cover the buffer exactly), and panics otherwise.
#[derive(Debug)]
pub(crate) struct Fresh<T> {
    buf: Vec<MaybeUninit<T>>,
    ptr: *mut MaybeUninit<T>,
    written: AtomicUsize,
}

// SAFETY: threads reach the buffer only through `Writer::write`, whose contract keeps their ranges
// disjoint; the values are plain `Copy` data sent along with the writes.
unsafe impl<T: Copy + Send> Sync for Fresh<T> {}
// SAFETY: the buffer is owned; the raw pointer points into it and moves with it.
unsafe impl<T: Copy + Send> Send for Fresh<T> {}

impl<T: Copy> Fresh<T> {
    /// An unwritten buffer of `len` values.
    pub(crate) fn new(len: usize) -> Self {
        let mut buf = Vec::with_capacity(len);
        // `MaybeUninit` needs no initialisation: these elements are valid as they are.
        buf.resize_with(len, MaybeUninit::uninit);
        let ptr = buf.as_mut_ptr();
        Self {
            buf,
            ptr,
            written: AtomicUsize::new(0),
        }
    }

    /// A handle for one thread's writes, counted locally and added to the buffer's count when
    /// the handle is dropped (one shared update per piece of work, not one per write).
    pub(crate) fn writer(&self) -> Writer<'_, T> {
        Writer { to: self, count: 0 }
    }

    /// The values, once every element has been written. Panics when some were not.
    pub(crate) fn into_vec(self) -> Vec<T> {
        let len = self.buf.len();
        // The pool call that made the writes has returned (it joins its threads), so their
        // counts are all visible here.
        let written = self.written.load(Ordering::Acquire);
        assert_eq!(written, len, "{written} of {len} values written");
        let mut buf = std::mem::ManuallyDrop::new(self.buf);
        // SAFETY: disjoint writes (the `Writer::write` contract) totalling `len` elements
        // initialised every element of the buffer, so its `MaybeUninit<T>`s are `T`s of the same
        // layout; the allocation is handed over whole (pointer, length, capacity) and not dropped
        // twice.
        unsafe { Vec::from_raw_parts(buf.as_mut_ptr().cast::<T>(), len, buf.capacity()) }
    }
}

/// One thread's writes into a [`Fresh`] buffer (see [`Fresh::writer`]).
#[derive(Debug)]
pub(crate) struct Writer<'a, T: Copy> {
    to: &'a Fresh<T>,
    count: usize,
}

impl<T: Copy> Writer<'_, T> {
    /// Copies `src` to elements `start..start + src.len()`. Panics when the range is outside the
    /// buffer.
    ///
    /// # Safety
    /// No other write to the same buffer, through any writer, overlaps the range.
    pub(crate) unsafe fn write(&mut self, start: usize, src: &[T]) {
        let len = self.to.buf.len();
        assert!(
            start <= len && src.len() <= len - start,
            "write {start}..{} to a buffer of {len}",
            start.saturating_add(src.len())
        );
        // SAFETY: the range is inside the buffer (asserted) and written by this call only (the
        // caller's promise); `src` is a live slice, so it cannot overlap the buffer's unwritten
        // part, which no slice points into.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.to.ptr.add(start).cast(), src.len())
        };
        self.count += src.len();
    }
}

impl<T: Copy> Drop for Writer<'_, T> {
    fn drop(&mut self) {
        self.to.written.fetch_add(self.count, Ordering::Relaxed);
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
    fn fresh_buffers_hand_out_what_disjoint_writes_made() {
        let f = Fresh::<u32>::new(6);
        // SAFETY: the two writes do not overlap.
        unsafe {
            f.writer().write(4, &[5, 6]);
            f.writer().write(0, &[1, 2, 3, 4]);
        }
        assert_eq!(f.into_vec(), [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    #[should_panic(expected = "5 of 6 values written")]
    fn a_fresh_buffer_with_a_hole_panics() {
        let f = Fresh::<u32>::new(6);
        // SAFETY: the writes do not overlap; element 4 is never written.
        unsafe {
            let mut w = f.writer();
            w.write(0, &[1, 2, 3, 4]);
            w.write(5, &[6]);
        }
        let _ = f.into_vec();
    }

    #[test]
    #[should_panic(expected = "write 5..7 to a buffer of 6")]
    fn a_fresh_write_past_the_end_panics() {
        let f = Fresh::<u32>::new(6);
        // SAFETY: the only write; the bounds check is what is tested.
        unsafe { f.writer().write(5, &[1, 2]) };
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
