//! The benches' global allocator: mimalloc (as the addon uses) wrapped to count live heap
//! bytes and their peak exactly. Included by the bench examples with #[path].
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static CUR: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INNER: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { INNER.alloc(l) };
        if !p.is_null() {
            let c = CUR.fetch_add(l.size(), Relaxed) + l.size();
            PEAK.fetch_max(c, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { INNER.dealloc(p, l) };
        CUR.fetch_sub(l.size(), Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

extern "C" {
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

/// As the addon does: mimalloc keeps freed pages (purge_delay, option 15 in v3, = -1).
pub fn keep_freed_pages() {
    // SAFETY: sets a process-wide allocator option; valid at any time.
    unsafe { mi_option_set(15, -1) };
}

pub fn cur() -> usize {
    CUR.load(Relaxed)
}
pub fn reset_peak() -> usize {
    let c = cur();
    PEAK.store(c, Relaxed);
    c
}
pub fn peak() -> usize {
    PEAK.load(Relaxed)
}
pub fn mib(b: f64) -> String {
    format!("{:.1}", b / (1024.0 * 1024.0))
}
