//! loralab's CUDA kernels (cuda/kernels.cu): causal flash attention forward and backward
//! with grouped-query heads, RMSNorm forward and backward, rotary embedding, dropout with the
//! engine's RNG, SwiGLU, the masked cross-entropy with its gradient and the optimizers'
//! in-place passes. This crate holds the source,
//! its launch shapes and two builds of it: a fatbin for the GPU (feature `cuda`, loaded by
//! loralab-core's `cuda` module) and, without that feature, a CPU emulation (`emu`) that the
//! tests run, so the kernels are checked on machines with no GPU.

/// The kernels as a fatbin built by nvcc for `CUDA_COMPUTE_CAP` (default 90): that GPU's
/// machine code, so loading compiles nothing, plus PTX for newer GPUs.
#[cfg(feature = "cuda")]
pub const FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));

/// Head dimensions the attention kernels are built for (a query row takes hd/32 threads).
pub const ATTN_HEAD_DIMS: [usize; 3] = [32, 64, 128];
const ATTN_THREADS: u32 = 128;

/// A launch shape: grid (x, y, z) and threads per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: u32,
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

/// The element type's suffix in kernel names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        }
    }
}

/// `<op>_<dtype>`, e.g. `rms_norm_fwd_bf16`.
pub fn name(op: &str, dt: Dtype) -> String {
    format!("{op}_{}", dt.suffix())
}

/// `<op>_<dtype>_<hd>`, e.g. `attn_fwd_bf16_64`.
pub fn attn_name(op: &str, dt: Dtype, hd: usize) -> String {
    format!("{op}_{}_{hd}", dt.suffix())
}

/// One block per row.
pub fn rms_norm(rows: usize) -> Launch {
    Launch { grid: (rows as u32, 1, 1), block: 256 }
}

/// One thread per rotated pair.
pub fn rope(rows: usize, hd: usize) -> Launch {
    Launch { grid: (blocks(rows * hd / 2, 256), 1, 1), block: 256 }
}

/// One thread per element.
pub fn elementwise(n: usize) -> Launch {
    Launch { grid: (blocks(n, 256), 1, 1), block: 256 }
}

/// One thread per RNG draw (four elements).
pub fn dropout(n: usize) -> Launch {
    Launch { grid: (blocks(n.div_ceil(4), 256), 1, 1), block: 256 }
}

/// One block per row of logits.
pub fn nll(rows: usize) -> Launch {
    Launch { grid: (rows as u32, 1, 1), block: 512 }
}

/// One block for the whole sum.
pub fn sum() -> Launch {
    Launch { grid: (1, 1, 1), block: 1024 }
}

/// Query (or key) rows one block serves.
pub fn attn_rows_per_block(hd: usize) -> usize {
    ATTN_THREADS as usize / (hd / 32)
}

/// Forward and dQ: one block per (query block, head, batch).
pub fn attn_fwd(b: usize, nh: usize, t: usize, hd: usize) -> Launch {
    Launch { grid: (blocks(t, attn_rows_per_block(hd)), nh as u32, b as u32), block: ATTN_THREADS }
}

/// rowsum(dO∘O): one thread per row.
pub fn attn_bwd_delta(rows: usize) -> Launch {
    Launch { grid: (blocks(rows, 256), 1, 1), block: 256 }
}

/// dK, dV: one block per (key block, kv head, batch).
pub fn attn_bwd_kv(b: usize, kvh: usize, t: usize, hd: usize) -> Launch {
    Launch { grid: (blocks(t, attn_rows_per_block(hd)), kvh as u32, b as u32), block: ATTN_THREADS }
}

/// Tensor-core attention (bf16): one block of 4 warps per 64 query rows (forward, dQ) or
/// 64 keys (dK/dV), per head (kv head for dK/dV) and batch.
pub fn attn_tc(b: usize, heads: usize, t: usize) -> Launch {
    Launch { grid: (blocks(t, 64), heads as u32, b as u32), block: 128 }
}

/// The kernels run on the CPU: each block's threads as fibers (cuda/emu.h). For tests; not
/// in the CUDA build.
#[cfg(not(feature = "cuda"))]
pub mod emu {
    use super::Launch;
    use std::ffi::{c_char, c_void, CString};

    extern "C" {
        fn loralab_emu_launch(name: *const c_char, gx: u32, gy: u32, gz: u32, bx: u32, args: *mut *mut c_void) -> i32;
    }

    /// One kernel argument, as the driver takes it: a pointer to its value.
    pub enum Arg<'a> {
        F32(&'a [f32]),
        F32Mut(&'a mut [f32]),
        U16(&'a [u16]),
        U16Mut(&'a mut [u16]),
        U32(&'a [u32]),
        Int(i32),
        Uint(u32),
        Long(u64),
        Float(f32),
        Double(f64),
    }

    /// Launch `name` over `l` with `args` in the kernel's parameter order.
    pub fn launch(name: &str, l: Launch, args: &mut [Arg]) {
        let mut ptrs: Vec<*const c_void> = args
            .iter()
            .map(|a| match a {
                Arg::F32(s) => s.as_ptr() as *const c_void,
                Arg::F32Mut(s) => s.as_ptr() as *const c_void,
                Arg::U16(s) => s.as_ptr() as *const c_void,
                Arg::U16Mut(s) => s.as_ptr() as *const c_void,
                Arg::U32(s) => s.as_ptr() as *const c_void,
                Arg::Int(_) | Arg::Uint(_) | Arg::Long(_) | Arg::Float(_) | Arg::Double(_) => std::ptr::null(),
            })
            .collect();
        let mut slots: Vec<*mut c_void> = Vec::with_capacity(args.len());
        for (a, p) in args.iter_mut().zip(ptrs.iter_mut()) {
            slots.push(match a {
                Arg::Int(v) => v as *mut i32 as *mut c_void,
                Arg::Uint(v) => v as *mut u32 as *mut c_void,
                Arg::Long(v) => v as *mut u64 as *mut c_void,
                Arg::Float(v) => v as *mut f32 as *mut c_void,
                Arg::Double(v) => v as *mut f64 as *mut c_void,
                _ => p as *mut *const c_void as *mut c_void,
            });
        }
        let c = CString::new(name).expect("kernel name");
        // SAFETY: every slot points at a live value of the kernel's parameter type for the call.
        let rc = unsafe { loralab_emu_launch(c.as_ptr(), l.grid.0, l.grid.1, l.grid.2, l.block, slots.as_mut_ptr()) };
        assert_eq!(rc, 0, "no emulated kernel named {name}");
    }
}
