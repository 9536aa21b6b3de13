//! The allocator setting both transports want. candle allocates a fresh buffer per op;
//! mimalloc (the transports' global allocator) reuses them instead of mapping and faulting
//! in new pages every step — the system allocator spent more time in the kernel than in gemm.

#[cfg(feature = "mimalloc")]
extern "C" {
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

/// Keep freed pages for reuse (mimalloc v3 option 15, purge_delay = -1) rather than return
/// them to the OS and fault fresh zeroed ones in each step: ~10 % of a CPU step otherwise.
/// A no-op without the `mimalloc` feature.
pub fn keep_freed_pages() {
    #[cfg(feature = "mimalloc")]
    {
        use mimalloc as _; // links the library that defines mi_option_set
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: sets a process-wide allocator option; valid at any time.
        ONCE.call_once(|| unsafe { mi_option_set(15, -1) });
    }
}
