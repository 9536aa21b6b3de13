//! The GPU kernels of ops.rs and optim.rs (feature `cuda`): causal flash attention forward and
//! backward, RMSNorm, rotary embedding, dropout, SwiGLU, the masked cross-entropy and the
//! optimizers' passes, from loralab-kernels' fatbin.
//! ops.rs routes a tensor here when `serves` says so (on CUDA, f32 or bf16, kernels not
//! turned off); everything else takes the portable path (candle's own ops), which is also
//! what `LORALAB_CUDA_KERNELS=0` or `ops::with_portable` selects, e.g. to compare the two.
//! The kernels themselves are tested on the CPU through loralab-kernels' emulator.
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D};
use half::bf16;
use loralab_kernels::{self as kern, Dtype};
use std::sync::{Arc, Mutex};

/// The kernel `name` on `dev`, from the fatbin, loaded once per device (candle's own module
/// cache takes PTX text only, which the driver would compile at load).
fn kernel(dev: &CudaDevice, name: &str) -> Result<Kernel> {
    type Modules = Vec<(DeviceId, Arc<CudaModule>)>;
    static MODULES: Mutex<Modules> = Mutex::new(Vec::new());
    let stream = dev.cuda_stream();
    let module = {
        let mut mods = MODULES.lock().map_err(|_| candle_core::Error::Msg("kernel module cache poisoned".into()))?;
        match mods.iter().find(|(id, _)| *id == dev.id()) {
            Some((_, m)) => m.clone(),
            None => {
                let m = stream.context().load_module(Ptx::from_binary(kern::FATBIN.to_vec())).map_err(err)?;
                mods.push((dev.id(), m.clone()));
                m
            }
        }
    };
    Ok(Kernel { func: module.load_function(name).map_err(err)?, stream })
}

struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// Whether the kernels serve `x`: on a CUDA device, f32 or bf16, not empty (a launch with an
/// empty grid is an error on the GPU), and not turned off.
pub fn kernels_apply(x: &Tensor) -> bool {
    x.device().is_cuda()
        && matches!(x.dtype(), DType::F32 | DType::BF16)
        && x.elem_count() > 0
        && !crate::nn::portable::forced()
        && !turned_off()
}

/// Whether bf16 attention runs on tensor cores: yes, unless `LORALAB_CUDA_ATTENTION=simt`
/// (the f32-FMA kernels, f32's path) or a tensor starts off a 16-byte boundary.
fn tensor_cores(dt: Dtype, offsets: &[usize]) -> bool {
    static SIMT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let simt = *SIMT.get_or_init(|| std::env::var("LORALAB_CUDA_ATTENTION").is_ok_and(|v| v == "simt"));
    dt == Dtype::Bf16 && !simt && offsets.iter().all(|o| o % 8 == 0)
}

fn turned_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var("LORALAB_CUDA_KERNELS").is_ok_and(|v| v == "0"))
}

fn err(e: impl std::fmt::Display + Send + Sync + 'static) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn cfg(l: kern::Launch) -> LaunchConfig {
    LaunchConfig { grid_dim: l.grid, block_dim: (l.block, 1, 1), shared_mem_bytes: 0 }
}

fn dtype_of(dt: DType, what: &str) -> Result<Dtype> {
    match dt {
        DType::F32 => Ok(Dtype::F32),
        DType::BF16 => Ok(Dtype::Bf16),
        other => candle_core::bail!("{what}: no CUDA kernel for {other:?} (hint: model.dtype bf16 or f32)"),
    }
}

/// A contiguous storage's elements as a device view.
fn view<'a, T: CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let (a, b) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: input must be contiguous")))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

fn cuda_storage<'a>(s: &'a Storage, what: &str) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(c) => Ok(c),
        _ => candle_core::bail!("{what}: tensor is not on a CUDA device"),
    }
}

fn tensor<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(Storage::Cuda(T::wrap_cuda_slice(slice, dev.clone())), shape, BackpropOp::none(), false)
}

/// Launch kernel `name` over `shape` with `args` (references to live values) in the kernel's
/// parameter order.
macro_rules! launch {
    ($dev:expr, $name:expr, $shape:expr; $($arg:expr),+ $(,)?) => {{
        let k = kernel($dev, $name)?;
        let mut b = k.builder();
        $(b.arg($arg);)+
        // SAFETY: the arguments match the kernel's parameters in kernels.cu (count, order, C
        // type) and every buffer outlives the launch.
        unsafe { b.launch(cfg($shape)) }.map(|_| ()).map_err(err)
    }};
}

macro_rules! by_dtype {
    ($dt:expr, $f:ident ( $($a:expr),* )) => {
        match $dt {
            Dtype::F32 => $f::<f32>($($a),*),
            Dtype::Bf16 => $f::<bf16>($($a),*),
        }
    };
}

fn no_cpu<R>(what: &str) -> Result<R> {
    candle_core::bail!("{what}: a CUDA kernel, called on a CPU tensor (ops.rs routes CPU tensors elsewhere)")
}

// ------------------------------------------------------------------ RMSNorm

struct RmsNorm {
    eps: f32,
    weight_grad: bool,
}

fn rms_fwd<T: CudaDType + DeviceRepr>(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    eps: f32,
    dt: Dtype,
) -> Result<CudaStorage> {
    let dev = x.device();
    let d = *lx.dims().last().unwrap_or(&1);
    if lw.shape().elem_count() != d {
        candle_core::bail!("rms-norm: a weight of {} for rows of {d}", lw.shape().elem_count())
    }
    let rows = lx.shape().elem_count() / d;
    let (xv, wv) = (view::<T>(x, lx, "rms-norm")?, view::<T>(w, lw, "rms-norm")?);
    // SAFETY: the kernel writes every element (one block per row, every column).
    let mut y = unsafe { dev.alloc::<T>(rows * d) }?;
    let di = d as i32;
    launch!(dev, &kern::name("rms_norm_fwd", dt), kern::rms_norm(rows); &xv, &wv, &mut y, &di, &eps)?;
    Ok(T::wrap_cuda_slice(y, dev.clone()))
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-cuda"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout, w: &CudaStorage, lw: &Layout) -> Result<(CudaStorage, Shape)> {
        let dt = dtype_of(x.dtype(), self.name())?;
        Ok((by_dtype!(dt, rms_fwd(x, lx, w, lw, self.eps, dt))?, lx.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(w, &g.contiguous()?, &RmsNormDx { eps: self.eps })?;
        let dw = if self.weight_grad {
            // Σ_rows g·x·r in f32 (full fine-tuning only: LoRA's norms are frozen)
            let (x, g) = (x.to_dtype(DType::F32)?, g.to_dtype(DType::F32)?);
            let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?.sqrt()?.recip()?;
            let d = x.dim(D::Minus1)?;
            Some((g * x.broadcast_mul(&r)?)?.reshape(((), d))?.sum(0)?.to_dtype(w.dtype())?.detach())
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

struct RmsNormDx {
    eps: f32,
}

fn rms_dx<T: CudaDType + DeviceRepr>(
    x: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    eps: f32,
    dt: Dtype,
) -> Result<CudaStorage> {
    let dev = x.0.device();
    let d = *x.1.dims().last().unwrap_or(&1);
    if w.1.shape().elem_count() != d || g.1.shape() != x.1.shape() {
        candle_core::bail!(
            "rms-norm backward: weight {:?} and gradient {:?} for x {:?}",
            w.1.dims(),
            g.1.dims(),
            x.1.dims()
        )
    }
    let rows = x.1.shape().elem_count() / d;
    let (xv, wv, gv) =
        (view::<T>(x.0, x.1, "rms-norm")?, view::<T>(w.0, w.1, "rms-norm")?, view::<T>(g.0, g.1, "rms-norm")?);
    // SAFETY: written whole by the kernel.
    let mut dx = unsafe { dev.alloc::<T>(rows * d) }?;
    let di = d as i32;
    launch!(dev, &kern::name("rms_norm_bwd", dt), kern::rms_norm(rows); &xv, &wv, &gv, &mut dx, &di, &eps)?;
    Ok(T::wrap_cuda_slice(dx, dev.clone()))
}

impl CustomOp3 for RmsNormDx {
    fn name(&self) -> &'static str {
        "rms-norm-dx-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
        g: &CudaStorage,
        lg: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dt = dtype_of(x.dtype(), self.name())?;
        Ok((by_dtype!(dt, rms_dx((x, lx), (w, lw), (g, lg), self.eps, dt))?, lx.shape().clone()))
    }
}

/// x: (.., d), w: (d) in x's dtype.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, weight_grad: bool) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32, weight_grad })
}

// ------------------------------------------------------------------ rotary embedding

/// (x, cos, sin) -> x rotated; the tables are f32 (t, hd) and get no gradient.
struct Rope {
    sign: f32,
    t: usize,
}

fn rope_run<T: CudaDType + DeviceRepr>(
    x: (&CudaStorage, &Layout),
    cos: (&CudaStorage, &Layout),
    sin: (&CudaStorage, &Layout),
    r: &Rope,
    dt: Dtype,
) -> Result<CudaStorage> {
    let dev = x.0.device();
    let hd = *x.1.dims().last().unwrap_or(&1);
    let rows = x.1.shape().elem_count() / hd;
    let (xv, cv, sv) =
        (view::<T>(x.0, x.1, "rope")?, view::<f32>(cos.0, cos.1, "rope")?, view::<f32>(sin.0, sin.1, "rope")?);
    // SAFETY: one thread per rotated pair writes both of its elements.
    let mut y = unsafe { dev.alloc::<T>(rows * hd) }?;
    let (ri, ti, hi) = (rows as i32, r.t as i32, hd as i32);
    launch!(dev, &kern::name("rope", dt), kern::rope(rows, hd); &xv, &cv, &sv, &mut y, &ri, &ti, &hi, &r.sign)?;
    Ok(T::wrap_cuda_slice(y, dev.clone()))
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        c: &CudaStorage,
        lc: &Layout,
        s: &CudaStorage,
        ls: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = lx.dims();
        if d.len() != 4
            || d[2] != self.t
            || lc.dims() != [self.t, d[3]]
            || c.dtype() != DType::F32
            || s.dtype() != DType::F32
        {
            candle_core::bail!(
                "rope: expects x (b, h, {}, hd) and f32 tables ({}, hd), got {d:?} and {:?}",
                self.t,
                self.t,
                lc.dims()
            )
        }
        let dt = dtype_of(x.dtype(), self.name())?;
        Ok((by_dtype!(dt, rope_run((x, lx), (c, lc), (s, ls), self, dt))?, lx.shape().clone()))
    }
    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inverse = Rope { sign: -self.sign, t: self.t };
        Ok((Some(g.contiguous()?.apply_op3_no_bwd(cos, sin, &inverse)?), None, None))
    }
}

/// x: (b, h, t, hd) with f32 tables cos, sin: (t, hd) on x's device.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let t = x.dim(2)?;
    x.contiguous()?.apply_op3(cos, sin, Rope { sign: 1.0, t })
}

// ------------------------------------------------------------------ dropout

/// x·mask with the mask drawn on the device from the engine's RNG (the CPU's mask, bit for
/// bit); the backward applies the same mask to the gradient.
struct Dropout {
    state: u64,
    threshold: u32,
    keep: f32,
}

fn dropout_run<T: CudaDType + DeviceRepr>(
    x: &CudaStorage,
    lx: &Layout,
    op: &Dropout,
    dt: Dtype,
) -> Result<CudaStorage> {
    let dev = x.device();
    let n = lx.shape().elem_count();
    let xv = view::<T>(x, lx, "dropout")?;
    // SAFETY: one thread per draw writes its four elements.
    let mut y = unsafe { dev.alloc::<T>(n) }?;
    let nl = n as u64;
    launch!(dev, &kern::name("dropout", dt), kern::dropout(n); &xv, &mut y, &nl, &op.state, &op.threshold, &op.keep)?;
    Ok(T::wrap_cuda_slice(y, dev.clone()))
}

impl candle_core::CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout-cuda"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    fn cuda_fwd(&self, x: &CudaStorage, lx: &Layout) -> Result<(CudaStorage, Shape)> {
        let dt = dtype_of(x.dtype(), self.name())?;
        Ok((by_dtype!(dt, dropout_run(x, lx, self, dt))?, lx.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1(Dropout { ..*self })?))
    }
}

/// x · mask, the mask from RNG state `state` (draw i = Rng::bits_at(i)), elements dropped when
/// their 16-bit lane is below `threshold`, the rest scaled by `keep`.
pub fn dropout(x: &Tensor, state: u64, threshold: u32, keep: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Dropout { state, threshold, keep })
}

// ------------------------------------------------------------------ SwiGLU

/// (g, u) -> silu(g)·u, keeping only g and u for the backward (the composition keeps silu(g) too).
struct SwiGlu;

fn swiglu_fwd<T: CudaDType + DeviceRepr>(
    g: (&CudaStorage, &Layout),
    u: (&CudaStorage, &Layout),
    dt: Dtype,
) -> Result<CudaStorage> {
    let dev = g.0.device();
    let n = g.1.shape().elem_count();
    let (gv, uv) = (view::<T>(g.0, g.1, "swiglu")?, view::<T>(u.0, u.1, "swiglu")?);
    // SAFETY: one thread per element writes it.
    let mut y = unsafe { dev.alloc::<T>(n) }?;
    let nl = n as u64;
    launch!(dev, &kern::name("swiglu_fwd", dt), kern::elementwise(n); &gv, &uv, &mut y, &nl)?;
    Ok(T::wrap_cuda_slice(y, dev.clone()))
}

fn swiglu_bwd<T: CudaDType + DeviceRepr>(g: &Tensor, u: &Tensor, dy: &Tensor, dt: Dtype) -> Result<(Tensor, Tensor)> {
    let dev = g.device().as_cuda_device()?;
    let n = g.elem_count();
    let what = "swiglu backward";
    let (gs, gl) = g.storage_and_layout();
    let (us, ul) = u.storage_and_layout();
    let (ds, dl) = dy.storage_and_layout();
    let gv = view::<T>(cuda_storage(&gs, what)?, gl, what)?;
    let uv = view::<T>(cuda_storage(&us, what)?, ul, what)?;
    let dv = view::<T>(cuda_storage(&ds, what)?, dl, what)?;
    // SAFETY: one thread per element writes both gradients.
    let (mut dg, mut du) = unsafe { (dev.alloc::<T>(n)?, dev.alloc::<T>(n)?) };
    let nl = n as u64;
    launch!(dev, &kern::name("swiglu_bwd", dt), kern::elementwise(n); &gv, &uv, &dv, &mut dg, &mut du, &nl)?;
    Ok((tensor(dg, dev, g.shape()), tensor(du, dev, u.shape())))
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu-cuda"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    fn cuda_fwd(&self, g: &CudaStorage, lg: &Layout, u: &CudaStorage, lu: &Layout) -> Result<(CudaStorage, Shape)> {
        if lg.shape() != lu.shape() {
            candle_core::bail!("swiglu: gate {:?} and up {:?} differ", lg.dims(), lu.dims())
        }
        let dt = dtype_of(g.dtype(), self.name())?;
        Ok((by_dtype!(dt, swiglu_fwd((g, lg), (u, lu), dt))?, lg.shape().clone()))
    }
    fn bwd(&self, g: &Tensor, u: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dt = dtype_of(g.dtype(), self.name())?;
        let (dg, du) = by_dtype!(dt, swiglu_bwd(g, u, &dy.contiguous()?, dt))?;
        Ok((Some(dg), Some(du)))
    }
}

/// silu(g)·u for same-shaped g and u.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)
}

// ------------------------------------------------------------------ optimizers

/// A contiguous f32 storage's elements as a mutable device view.
fn view_mut<'a>(
    s: &'a mut CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaViewMut<'a, f32>> {
    let (a, b) =
        l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg(format!("{what}: contiguous tensors only")))?;
    Ok(s.as_cuda_slice_mut::<f32>()?.slice_mut(a..b))
}

/// m = β·m + (1−β)·(g or g²), in place (optim.rs's moment pass).
pub(crate) fn opt_moment(
    m: &mut CudaStorage,
    lm: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    beta: f64,
    square: bool,
) -> Result<()> {
    let dev = m.device().clone();
    let n = lm.shape().elem_count();
    let gv = view::<f32>(g, lg, "optimizer")?;
    let mut mv = view_mut(m, lm, "optimizer")?;
    let (nl, sq) = (n as u64, square as i32);
    launch!(&dev, "opt_moment", kern::elementwise(n); &mut mv, &gv, &nl, &beta, &sq)
}

/// AdamW's update pass in place: p = p·decay − lr·(m/bc1)/(√(v/bc2) + eps).
#[allow(clippy::too_many_arguments)]
pub(crate) fn opt_adam(
    p: &mut CudaStorage,
    lp: &Layout,
    m: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
    decay: f64,
    lr: f64,
    bc1: f64,
    bc2: f64,
    eps: f64,
) -> Result<()> {
    let dev = p.device().clone();
    let n = lp.shape().elem_count();
    let (mv, vv, nl) = (view::<f32>(m.0, m.1, "optimizer")?, view::<f32>(v.0, v.1, "optimizer")?, n as u64);
    let mut pv = view_mut(p, lp, "optimizer")?;
    launch!(&dev, "opt_adam", kern::elementwise(n); &mut pv, &mv, &vv, &nl, &decay, &lr, &bc1, &bc2, &eps)
}

/// LionW's update pass in place: p = p·decay − lr·sign(β1·m + (1−β1)·g).
pub(crate) fn opt_lion(
    p: &mut CudaStorage,
    lp: &Layout,
    m: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
    decay: f64,
    lr: f64,
    b1: f64,
) -> Result<()> {
    let dev = p.device().clone();
    let n = lp.shape().elem_count();
    let (mv, gv, nl) = (view::<f32>(m.0, m.1, "optimizer")?, view::<f32>(g.0, g.1, "optimizer")?, n as u64);
    let mut pv = view_mut(p, lp, "optimizer")?;
    launch!(&dev, "opt_lion", kern::elementwise(n); &mut pv, &mv, &gv, &nl, &decay, &lr, &b1)
}

// ------------------------------------------------------------------ masked cross-entropy

/// (logits (n, V), targets (n) u32, weights (n) f32) -> Σ_i w_i·nll_i as an f32 scalar.
struct Nll;

fn nll_run<T: CudaDType + DeviceRepr>(
    x: (&CudaStorage, &Layout),
    tg: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    dt: Dtype,
) -> Result<CudaStorage> {
    let dev = x.0.device();
    let (n, v) = x.1.shape().dims2()?;
    let (xv, tv, wv) = (
        view::<T>(x.0, x.1, "masked-nll")?,
        view::<u32>(tg.0, tg.1, "masked-nll")?,
        view::<f32>(w.0, w.1, "masked-nll")?,
    );
    // SAFETY: one block per row writes its loss; the sum writes its one element.
    let mut rows = unsafe { dev.alloc::<f32>(n) }?;
    let mut total = unsafe { dev.alloc::<f32>(1) }?;
    let (vi, ni) = (v as i32, n as i32);
    launch!(dev, &kern::name("nll_fwd", dt), kern::nll(n); &xv, &tv, &wv, &mut rows, &vi)?;
    launch!(dev, "sum_f32", kern::sum(); &rows, &mut total, &ni)?;
    Ok(CudaStorage::wrap_cuda_slice(total, dev.clone()))
}

fn nll_grad_run<T: CudaDType + DeviceRepr>(
    x: (&CudaStorage, &Layout),
    tg: (&CudaStorage, &Layout),
    w: (&CudaStorage, &Layout),
    dt: Dtype,
) -> Result<CudaStorage> {
    let dev = x.0.device();
    let (n, v) = x.1.shape().dims2()?;
    let (xv, tv, wv) = (
        view::<T>(x.0, x.1, "masked-nll")?,
        view::<u32>(tg.0, tg.1, "masked-nll")?,
        view::<f32>(w.0, w.1, "masked-nll")?,
    );
    // SAFETY: one block per row writes the whole row.
    let mut dx = unsafe { dev.alloc::<T>(n * v) }?;
    let vi = v as i32;
    launch!(dev, &kern::name("nll_grad", dt), kern::nll(n); &xv, &tv, &wv, &mut dx, &vi)?;
    Ok(T::wrap_cuda_slice(dx, dev.clone()))
}

impl CustomOp3 for Nll {
    fn name(&self) -> &'static str {
        "masked-nll-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        t: &CudaStorage,
        lt: &Layout,
        w: &CudaStorage,
        lw: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dt = dtype_of(x.dtype(), self.name())?;
        Ok((by_dtype!(dt, nll_run((x, lx), (t, lt), (w, lw), dt))?, Shape::from(())))
    }
    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // the upstream gradient folded into the row weights, on the device (no host sync)
        let wg = w.broadcast_mul(&g.to_dtype(DType::F32)?)?;
        Ok((Some(x.apply_op3_no_bwd(t, &wg, &NllGrad)?), None, None))
    }
}

struct NllGrad;

impl CustomOp3 for NllGrad {
    fn name(&self) -> &'static str {
        "masked-nll-grad-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        lx: &Layout,
        t: &CudaStorage,
        lt: &Layout,
        w: &CudaStorage,
        lw: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dt = dtype_of(x.dtype(), self.name())?;
        Ok((by_dtype!(dt, nll_grad_run((x, lx), (t, lt), (w, lw), dt))?, lx.shape().clone()))
    }
}

/// logits (n, V) -> Σ_i w_i·(logsumexp(logits_i) − logits_i[target_i]), an f32 scalar.
pub fn masked_nll(logits: &Tensor, targets: &[u32], weights: &[f64]) -> Result<Tensor> {
    let (n, v) = logits.dims2()?;
    if n != targets.len() || n != weights.len() {
        candle_core::bail!("masked-nll: {n} rows of logits for {} targets and {} weights", targets.len(), weights.len())
    }
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!(
            "masked-nll: target id {bad} is outside the vocabulary of {v} (hint: tokenizer and model config disagree)"
        )
    }
    let dev = logits.device();
    let t = Tensor::from_slice(targets, n, dev)?;
    let w = Tensor::from_vec(weights.iter().map(|&w| w as f32).collect::<Vec<f32>>(), n, dev)?;
    logits.contiguous()?.apply_op3(&t, &w, Nll)
}

// ------------------------------------------------------------------ flash attention

/// Causal attention softmax(q·kᵀ·scale)·v with grouped-query heads, never storing the
/// (t, t) scores: the forward keeps O and each row's log-sum-exp, the backward recomputes
/// the probabilities tile by tile.
struct FlashAttention {
    scale: f32,
    /// the forward's row log-sum-exp (b, nh, t), f32, taken by the backward
    lse: std::sync::Mutex<Option<CudaSlice<f32>>>,
}

struct Dims {
    b: usize,
    nh: usize,
    kvh: usize,
    t: usize,
    hd: usize,
}

fn attn_dims(q: &[usize], k: &[usize], v: &[usize]) -> Result<Dims> {
    let [b, nh, t, hd] = *q else { candle_core::bail!("attention: q must be (b, heads, t, hd), got {q:?}") };
    let [_, kvh, _, _] = *k else { candle_core::bail!("attention: k must be (b, kv heads, t, hd), got {k:?}") };
    if k != [b, kvh, t, hd] || v != k || kvh == 0 || nh % kvh != 0 {
        candle_core::bail!("attention: q {q:?}, k {k:?} and v {v:?} do not fit (heads a multiple of kv heads)")
    }
    if !kern::ATTN_HEAD_DIMS.contains(&hd) {
        candle_core::bail!("attention: no kernel for head dim {hd} (built for {:?})", kern::ATTN_HEAD_DIMS)
    }
    Ok(Dims { b, nh, kvh, t, hd })
}

fn attn_fwd<T: CudaDType + DeviceRepr>(
    op: &FlashAttention,
    q: (&CudaStorage, &Layout),
    k: (&CudaStorage, &Layout),
    v: (&CudaStorage, &Layout),
    dt: Dtype,
) -> Result<CudaStorage> {
    let dm = attn_dims(q.1.dims(), k.1.dims(), v.1.dims())?;
    let dev = q.0.device();
    let (qv, kv, vv) =
        (view::<T>(q.0, q.1, "attention")?, view::<T>(k.0, k.1, "attention")?, view::<T>(v.0, v.1, "attention")?);
    // SAFETY: every live query row writes its output row and its log-sum-exp.
    let mut o = unsafe { dev.alloc::<T>(q.1.shape().elem_count()) }?;
    let mut lse = unsafe { dev.alloc::<f32>(dm.b * dm.nh * dm.t) }?;
    let (name, shape) = match tensor_cores(dt, &[q.1.start_offset(), k.1.start_offset(), v.1.start_offset()]) {
        true => ("attn_fwd_tc", kern::attn_tc(dm.b, dm.nh, dm.t)),
        false => ("attn_fwd", kern::attn_fwd(dm.b, dm.nh, dm.t, dm.hd)),
    };
    let (nh, kvh, t) = (dm.nh as i32, dm.kvh as i32, dm.t as i32);
    launch!(dev, &kern::attn_name(name, dt, dm.hd), shape; &qv, &kv, &vv, &mut o, &mut lse, &nh, &kvh, &t, &op.scale)?;
    *op.lse.lock().map_err(|_| candle_core::Error::Msg("attention: lse lock poisoned".into()))? = Some(lse);
    Ok(T::wrap_cuda_slice(o, dev.clone()))
}

/// dQ, dK, dV from the tensors the forward kept, its log-sum-exp and dO.
fn attn_bwd<T: CudaDType + DeviceRepr>(
    op: &FlashAttention,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    g: &Tensor,
    dt: Dtype,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dm = attn_dims(q.dims(), k.dims(), v.dims())?;
    let lse = op.lse.lock().map_err(|_| candle_core::Error::Msg("attention: lse lock poisoned".into()))?.take();
    let lse = lse.ok_or_else(|| {
        candle_core::Error::Msg("attention: backward ran twice (the forward's log-sum-exp is gone)".into())
    })?;
    let dev = q.device().as_cuda_device()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (os, ol) = o.storage_and_layout();
    let (gs, gl) = g.storage_and_layout();
    let what = "attention backward";
    let qv = view::<T>(cuda_storage(&qs, what)?, ql, what)?;
    let kv = view::<T>(cuda_storage(&ks, what)?, kl, what)?;
    let vv = view::<T>(cuda_storage(&vs, what)?, vl, what)?;
    let ov = view::<T>(cuda_storage(&os, what)?, ol, what)?;
    let gv = view::<T>(cuda_storage(&gs, what)?, gl, what)?;
    let rows = dm.b * dm.nh * dm.t;
    let (nq, nk) = (rows * dm.hd, dm.b * dm.kvh * dm.t * dm.hd);
    // SAFETY: each kernel writes every element of its outputs (one thread or group per row).
    let (mut delta, mut dq, mut dk, mut dv) =
        unsafe { (dev.alloc::<f32>(rows)?, dev.alloc::<T>(nq)?, dev.alloc::<T>(nk)?, dev.alloc::<T>(nk)?) };
    let (nh, kvh, t, ri) = (dm.nh as i32, dm.kvh as i32, dm.t as i32, rows as i32);

    launch!(dev, &kern::attn_name("attn_bwd_delta", dt, dm.hd), kern::attn_bwd_delta(rows); &ov, &gv, &mut delta, &ri)?;
    let ((kv_name, kv_shape), (q_name, q_shape)) =
        match tensor_cores(dt, &[ql.start_offset(), kl.start_offset(), vl.start_offset(), gl.start_offset()]) {
            true => (
                ("attn_bwd_kv_tc", kern::attn_tc(dm.b, dm.kvh, dm.t)),
                ("attn_bwd_q_tc", kern::attn_tc(dm.b, dm.nh, dm.t)),
            ),
            false => (
                ("attn_bwd_kv", kern::attn_bwd_kv(dm.b, dm.kvh, dm.t, dm.hd)),
                ("attn_bwd_q", kern::attn_fwd(dm.b, dm.nh, dm.t, dm.hd)),
            ),
        };
    launch!(dev, &kern::attn_name(kv_name, dt, dm.hd), kv_shape; &qv, &kv, &vv, &gv, &lse, &delta, &mut dk, &mut dv, &nh, &kvh, &t, &op.scale)?;
    launch!(dev, &kern::attn_name(q_name, dt, dm.hd), q_shape; &qv, &kv, &vv, &gv, &lse, &delta, &mut dq, &nh, &kvh, &t, &op.scale)?;

    Ok((tensor(dq, dev, q.shape()), tensor(dk, dev, k.shape()), tensor(dv, dev, v.shape())))
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention-cuda"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        no_cpu(self.name())
    }
    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        lq: &Layout,
        k: &CudaStorage,
        lk: &Layout,
        v: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dt = dtype_of(q.dtype(), self.name())?;
        Ok((by_dtype!(dt, attn_fwd(self, (q, lq), (k, lk), (v, lv), dt))?, lq.shape().clone()))
    }
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dt = dtype_of(q.dtype(), self.name())?;
        let g = g.contiguous()?;
        let (dq, dk, dv) = by_dtype!(dt, attn_bwd(self, q, k, v, o, &g, dt))?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Causal attention over q (b, nh, t, hd), k and v (b, kvh, t, hd) -> (b, nh, t, hd), or
/// None where no kernel serves (CPU, another dtype, a head dim the kernels are not built for).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    if !kernels_apply(q) || !kern::ATTN_HEAD_DIMS.contains(&q.dim(D::Minus1)?) {
        return Ok(None);
    }
    let op = FlashAttention { scale: scale as f32, lse: Default::default() };
    Ok(Some(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?))
}
