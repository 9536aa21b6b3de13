//! The CUDA kernels, run on the CPU by the emulator (cuda/emu.h) with the launch shapes the
//! sidecar uses, against plain f64 references of the same maths: f32 to 1e-4 and bf16
//! inputs/outputs to bf16's precision. Shapes are chosen so blocks are partly filled
//! (t not a multiple of the block), heads are grouped (nh = 2·kvh) and every head
//! dimension the kernels are built for is run.
#![allow(clippy::unwrap_used)] // test code: a panic is how a check fails
use loralab_kernels::emu::{launch, Arg};
use loralab_kernels::{self as k, Dtype};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn to_bf16(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&f| {
            let u = f.to_bits();
            ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
        })
        .collect()
}
fn from_bf16(v: &[u16]) -> Vec<f32> {
    v.iter().map(|&b| f32::from_bits((b as u32) << 16)).collect()
}

/// max |got − want| ≤ tol · max(1, max |want|)
fn close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    let (i, err) = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).enumerate().fold((0, 0.0), |a, (i, e)| {
        if e > a.1 || e.is_nan() {
            (i, e)
        } else {
            a
        }
    });
    assert!(
        err <= tol * scale,
        "{what}: |got − want| = {err:.3e} at {i} (got {}, want {}), tolerance {:.1e}",
        got[i],
        want[i],
        tol * scale
    );
}

/// Run a kernel on f32 data or on the same data rounded to bf16; outputs come back as f32.
/// `ins` are T-typed inputs, `aux` f32 inputs, `outs` T-typed output lengths, `aux_out`
/// f32 output lengths; `scalars` follow the pointers (`order` says how they interleave).
enum P {
    In(usize),
    Aux(usize),
    Out,
    AuxOut,
    U32s(Vec<u32>),
    Int(i32),
    Uint(u32),
    Long(u64),
    Float(f32),
}

fn run(
    name: &str,
    dt: Dtype,
    l: k::Launch,
    params: Vec<P>,
    data: &[&[f32]],
    out_lens: &[usize],
    aux_out_lens: &[usize],
) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let ins16: Vec<Vec<u16>> = data.iter().map(|d| to_bf16(d)).collect();
    let mut outs32: Vec<Vec<f32>> = out_lens.iter().map(|&n| vec![f32::NAN; n]).collect();
    let mut outs16: Vec<Vec<u16>> = out_lens.iter().map(|&n| vec![0x7fc0; n]).collect();
    let mut aux: Vec<Vec<f32>> = aux_out_lens.iter().map(|&n| vec![f32::NAN; n]).collect();
    {
        let mut o32 = outs32.iter_mut();
        let mut o16 = outs16.iter_mut();
        let mut ao = aux.iter_mut();
        let mut args: Vec<Arg> = Vec::new();
        for p in &params {
            args.push(match *p {
                P::In(i) => match dt {
                    Dtype::F32 => Arg::F32(data[i]),
                    Dtype::Bf16 => Arg::U16(&ins16[i]),
                },
                P::Aux(i) => Arg::F32(data[i]),
                P::Out => match dt {
                    Dtype::F32 => Arg::F32Mut(o32.next().expect("out")),
                    Dtype::Bf16 => Arg::U16Mut(o16.next().expect("out")),
                },
                P::AuxOut => Arg::F32Mut(ao.next().expect("aux out")),
                P::U32s(ref v) => Arg::U32(v),
                P::Int(v) => Arg::Int(v),
                P::Uint(v) => Arg::Uint(v),
                P::Long(v) => Arg::Long(v),
                P::Float(v) => Arg::Float(v),
            });
        }
        launch(name, l, &mut args);
    }
    let outs = match dt {
        Dtype::F32 => outs32,
        Dtype::Bf16 => outs16.iter().map(|o| from_bf16(o)).collect(),
    };
    (outs, aux)
}

/// The inputs the kernel actually sees (rounded to bf16 for bf16), in f64 for references.
fn seen(dt: Dtype, v: &[f32]) -> Vec<f64> {
    match dt {
        Dtype::F32 => v.iter().map(|&x| x as f64).collect(),
        Dtype::Bf16 => from_bf16(&to_bf16(v)).iter().map(|&x| x as f64).collect(),
    }
}

fn tol(dt: Dtype) -> f64 {
    match dt {
        Dtype::F32 => 1e-4,
        Dtype::Bf16 => 1.6e-2, // outputs rounded to 8 bits of mantissa
    }
}

#[test]
fn rms_norm_forward_and_backward_match_the_reference() {
    let mut r = Rng(1);
    for dt in [Dtype::F32, Dtype::Bf16] {
        for (rows, d) in [(5, 96), (3, 1000)] {
            let (x, w, g) = (r.vec(rows * d, 2.0), r.vec(d, 1.0), r.vec(rows * d, 1.0));
            let eps = 1e-5;
            let (xs, ws, gs) = (seen(dt, &x), seen(dt, &w), seen(dt, &g));
            let mut y = vec![0.0; rows * d];
            let mut dx = vec![0.0; rows * d];
            for i in 0..rows {
                let row = &xs[i * d..(i + 1) * d];
                let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
                let rr = 1.0 / (ms + eps).sqrt();
                let dot = (0..d).map(|j| gs[i * d + j] * ws[j] * row[j]).sum::<f64>() / d as f64;
                for j in 0..d {
                    y[i * d + j] = row[j] * rr * ws[j];
                    dx[i * d + j] = rr * gs[i * d + j] * ws[j] - row[j] * rr.powi(3) * dot;
                }
            }
            let l = k::rms_norm(rows);
            let (o, _) = run(
                &k::name("rms_norm_fwd", dt),
                dt,
                l,
                vec![P::In(0), P::In(1), P::Out, P::Int(d as i32), P::Float(eps as f32)],
                &[&x, &w],
                &[rows * d],
                &[],
            );
            close(&format!("rms fwd {dt:?} {rows}x{d}"), &o[0], &y, tol(dt));
            let (o, _) = run(
                &k::name("rms_norm_bwd", dt),
                dt,
                l,
                vec![P::In(0), P::In(1), P::In(2), P::Out, P::Int(d as i32), P::Float(eps as f32)],
                &[&x, &w, &g],
                &[rows * d],
                &[],
            );
            close(&format!("rms bwd {dt:?} {rows}x{d}"), &o[0], &dx, tol(dt));
        }
    }
}

#[test]
fn rope_rotates_and_its_inverse_rotates_back() {
    let mut r = Rng(2);
    let (rows, t, hd) = (2 * 3 * 7, 7, 64); // (b, h, t, hd) flattened
    let mut cos = vec![0f32; t * hd];
    let mut sin = vec![0f32; t * hd];
    for p in 0..t {
        for i in 0..hd {
            let f = 1.0 / 10000f64.powf(2.0 * (i % (hd / 2)) as f64 / hd as f64);
            cos[p * hd + i] = (p as f64 * f).cos() as f32;
            sin[p * hd + i] = (p as f64 * f).sin() as f32;
        }
    }
    for dt in [Dtype::F32, Dtype::Bf16] {
        let x = r.vec(rows * hd, 1.0);
        let xs = seen(dt, &x);
        let h = hd / 2;
        let mut y = vec![0.0; rows * hd];
        for row in 0..rows {
            let p = row % t;
            for i in 0..hd {
                let rot = if i < h { -xs[row * hd + i + h] } else { xs[row * hd + i - h] };
                y[row * hd + i] = xs[row * hd + i] * cos[p * hd + i] as f64 + rot * sin[p * hd + i] as f64;
            }
        }
        let l = k::rope(rows, hd);
        let params = |sign: f32| {
            vec![
                P::In(0),
                P::Aux(1),
                P::Aux(2),
                P::Out,
                P::Int(rows as i32),
                P::Int(t as i32),
                P::Int(hd as i32),
                P::Float(sign),
            ]
        };
        let (o, _) = run(&k::name("rope", dt), dt, l, params(1.0), &[&x, &cos, &sin], &[rows * hd], &[]);
        close(&format!("rope {dt:?}"), &o[0], &y, tol(dt));
        let (back, _) = run(&k::name("rope", dt), dt, l, params(-1.0), &[&o[0], &cos, &sin], &[rows * hd], &[]);
        close(&format!("rope⁻¹ {dt:?}"), &back[0], &xs, 2.0 * tol(dt));
    }
}

#[test]
fn masked_cross_entropy_and_its_gradient_match_the_reference() {
    let mut r = Rng(3);
    let (n, v) = (6, 1500);
    let targets: Vec<u32> = (0..n).map(|i| (i * 251 % v) as u32).collect();
    let weights: Vec<f32> = vec![0.25, 0.0, 0.25, 0.125, 0.0, 0.375];
    for dt in [Dtype::F32, Dtype::Bf16] {
        let x = r.vec(n * v, 6.0);
        let xs = seen(dt, &x);
        let mut loss = 0.0;
        let mut grad = vec![0.0; n * v];
        for i in 0..n {
            let row = &xs[i * v..(i + 1) * v];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|a| (a - m).exp()).sum::<f64>().ln();
            let w = weights[i] as f64;
            loss += w * (lse - row[targets[i] as usize]);
            for j in 0..v {
                grad[i * v + j] = w * ((row[j] - lse).exp() - if j == targets[i] as usize { 1.0 } else { 0.0 });
            }
        }
        let (_, rows) = run(
            &k::name("nll_fwd", dt),
            dt,
            k::nll(n),
            vec![P::In(0), P::U32s(targets.clone()), P::Aux(1), P::AuxOut, P::Int(v as i32)],
            &[&x, &weights],
            &[],
            &[n],
        );
        assert_eq!(rows[0][1], 0.0, "a masked row costs nothing");
        let mut total = vec![f32::NAN];
        launch("sum_f32", k::sum(), &mut [Arg::F32(&rows[0]), Arg::F32Mut(&mut total), Arg::Int(n as i32)]);
        close(&format!("nll {dt:?}"), &total, &[loss], 1e-5);
        let (d, _) = run(
            &k::name("nll_grad", dt),
            dt,
            k::nll(n),
            vec![P::In(0), P::U32s(targets.clone()), P::Aux(1), P::Out, P::Int(v as i32)],
            &[&x, &weights],
            &[n * v],
            &[],
        );
        close(&format!("nll grad {dt:?}"), &d[0], &grad, if dt == Dtype::F32 { 1e-6 } else { 4e-3 });
    }
}

/// Naive causal attention with grouped heads, in f64: O, lse (base 2, as the kernel keeps
/// it) and, for an upstream gradient dO, dQ, dK, dV.
#[allow(clippy::type_complexity)]
#[allow(clippy::too_many_arguments)]
fn attention_reference(
    q: &[f64],
    kk: &[f64],
    v: &[f64],
    d_o: &[f64],
    b: usize,
    nh: usize,
    kvh: usize,
    t: usize,
    hd: usize,
) -> [Vec<f64>; 5] {
    let scale = 1.0 / (hd as f64).sqrt();
    let (mut o, mut lse, mut dq) = (vec![0.0; q.len()], vec![0.0; b * nh * t], vec![0.0; q.len()]);
    let (mut dk, mut dv) = (vec![0.0; kk.len()], vec![0.0; v.len()]);
    for bi in 0..b {
        for h in 0..nh {
            let qo = (bi * nh + h) * t * hd;
            let ko = (bi * kvh + h / (nh / kvh)) * t * hd;
            for i in 0..t {
                let s: Vec<f64> = (0..=i)
                    .map(|j| (0..hd).map(|d| q[qo + i * hd + d] * kk[ko + j * hd + d]).sum::<f64>() * scale)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                lse[(bi * nh + h) * t + i] = (m + z.ln()) / std::f64::consts::LN_2;
                let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
                for d in 0..hd {
                    o[qo + i * hd + d] = (0..=i).map(|j| p[j] * v[ko + j * hd + d]).sum();
                }
                let dp: Vec<f64> =
                    (0..=i).map(|j| (0..hd).map(|d| d_o[qo + i * hd + d] * v[ko + j * hd + d]).sum()).collect();
                let delta: f64 = (0..=i).map(|j| p[j] * dp[j]).sum();
                for j in 0..=i {
                    let ds = p[j] * (dp[j] - delta) * scale;
                    for d in 0..hd {
                        dq[qo + i * hd + d] += ds * kk[ko + j * hd + d];
                        dk[ko + j * hd + d] += ds * q[qo + i * hd + d];
                        dv[ko + j * hd + d] += p[j] * d_o[qo + i * hd + d];
                    }
                }
            }
        }
    }
    [o, lse, dq, dk, dv]
}

fn attention_case(dt: Dtype, b: usize, nh: usize, kvh: usize, t: usize, hd: usize, seed: u64) {
    let mut r = Rng(seed);
    let (nq, nk) = (b * nh * t * hd, b * kvh * t * hd);
    let (q, kk, v, d_o) = (r.vec(nq, 1.5), r.vec(nk, 1.5), r.vec(nk, 1.0), r.vec(nq, 1.0));
    let [o, lse, dq, dk, dv] =
        attention_reference(&seen(dt, &q), &seen(dt, &kk), &seen(dt, &v), &seen(dt, &d_o), b, nh, kvh, t, hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let what = format!("attention {dt:?} b={b} nh={nh} kvh={kvh} t={t} hd={hd}");
    let (nh_, kvh_, t_) = (nh as i32, kvh as i32, t as i32);

    let (fo, fl) = run(
        &k::attn_name("attn_fwd", dt, hd),
        dt,
        k::attn_fwd(b, nh, t, hd),
        vec![P::In(0), P::In(1), P::In(2), P::Out, P::AuxOut, P::Int(nh_), P::Int(kvh_), P::Int(t_), P::Float(scale)],
        &[&q, &kk, &v],
        &[nq],
        &[b * nh * t],
    );
    close(&format!("{what}: O"), &fo[0], &o, tol(dt));
    close(&format!("{what}: lse"), &fl[0], &lse, 1e-5);

    // the backward reads O as the forward wrote it (in T)
    let rows = b * nh * t;
    let (_, delta) = run(
        &k::attn_name("attn_bwd_delta", dt, hd),
        dt,
        k::attn_bwd_delta(rows),
        vec![P::In(0), P::In(1), P::AuxOut, P::Int(rows as i32)],
        &[&fo[0], &d_o],
        &[],
        &[rows],
    );
    let (o_seen, do_seen) = (seen(dt, &fo[0]), seen(dt, &d_o));
    let want_delta: Vec<f64> =
        (0..rows).map(|i| (0..hd).map(|d| o_seen[i * hd + d] * do_seen[i * hd + d]).sum()).collect();
    close(&format!("{what}: delta"), &delta[0], &want_delta, 1e-5);

    let data: [&[f32]; 6] = [&q, &kk, &v, &d_o, &fl[0], &delta[0]];
    let (g, _) = run(
        &k::attn_name("attn_bwd_kv", dt, hd),
        dt,
        k::attn_bwd_kv(b, kvh, t, hd),
        vec![
            P::In(0),
            P::In(1),
            P::In(2),
            P::In(3),
            P::Aux(4),
            P::Aux(5),
            P::Out,
            P::Out,
            P::Int(nh_),
            P::Int(kvh_),
            P::Int(t_),
            P::Float(scale),
        ],
        &data,
        &[nk, nk],
        &[],
    );
    close(&format!("{what}: dK"), &g[0], &dk, 2.0 * tol(dt));
    close(&format!("{what}: dV"), &g[1], &dv, tol(dt));
    let (g, _) = run(
        &k::attn_name("attn_bwd_q", dt, hd),
        dt,
        k::attn_fwd(b, nh, t, hd),
        vec![
            P::In(0),
            P::In(1),
            P::In(2),
            P::In(3),
            P::Aux(4),
            P::Aux(5),
            P::Out,
            P::Int(nh_),
            P::Int(kvh_),
            P::Int(t_),
            P::Float(scale),
        ],
        &data,
        &[nq],
        &[],
    );
    close(&format!("{what}: dQ"), &g[0], &dq, 2.0 * tol(dt));

    if dt == Dtype::Bf16 {
        // the tensor-core kernels: same contract (O, lse in base 2, dQ, dK, dV), same references
        let name = |op: &str| format!("{op}_tc_bf16_{hd}");
        let (to, tl) = run(
            &name("attn_fwd"),
            dt,
            k::attn_tc(b, nh, t),
            vec![
                P::In(0),
                P::In(1),
                P::In(2),
                P::Out,
                P::AuxOut,
                P::Int(nh_),
                P::Int(kvh_),
                P::Int(t_),
                P::Float(scale),
            ],
            &[&q, &kk, &v],
            &[nq],
            &[b * nh * t],
        );
        close(&format!("{what} tc: O"), &to[0], &o, tol(dt));
        close(&format!("{what} tc: lse"), &tl[0], &lse, 1e-5);
        let (g, _) = run(
            &name("attn_bwd_kv"),
            dt,
            k::attn_tc(b, kvh, t),
            vec![
                P::In(0),
                P::In(1),
                P::In(2),
                P::In(3),
                P::Aux(4),
                P::Aux(5),
                P::Out,
                P::Out,
                P::Int(nh_),
                P::Int(kvh_),
                P::Int(t_),
                P::Float(scale),
            ],
            &data,
            &[nk, nk],
            &[],
        );
        close(&format!("{what} tc: dK"), &g[0], &dk, 2.0 * tol(dt));
        close(&format!("{what} tc: dV"), &g[1], &dv, tol(dt));
        let (g, _) = run(
            &name("attn_bwd_q"),
            dt,
            k::attn_tc(b, nh, t),
            vec![
                P::In(0),
                P::In(1),
                P::In(2),
                P::In(3),
                P::Aux(4),
                P::Aux(5),
                P::Out,
                P::Int(nh_),
                P::Int(kvh_),
                P::Int(t_),
                P::Float(scale),
            ],
            &data,
            &[nq],
            &[],
        );
        close(&format!("{what} tc: dQ"), &g[0], &dq, 2.0 * tol(dt));
    }
}

#[test]
fn flash_attention_forward_and_backward_match_naive_attention_f32() {
    attention_case(Dtype::F32, 2, 4, 2, 37, 32, 10); // 1 thread per row, a partial block
    attention_case(Dtype::F32, 1, 2, 1, 70, 64, 11); // 2 threads per row, partial key tiles
    attention_case(Dtype::F32, 1, 2, 2, 45, 128, 12); // 4 threads per row, 2 query blocks
}

#[test]
fn flash_attention_forward_and_backward_match_naive_attention_bf16_simt_and_tensor_core() {
    attention_case(Dtype::Bf16, 1, 4, 2, 40, 64, 13); // 2 query blocks of the SIMT kernel, 1 of the tensor-core one
    attention_case(Dtype::Bf16, 1, 2, 1, 33, 128, 14);
    attention_case(Dtype::Bf16, 2, 2, 2, 70, 32, 15); // 2 tensor-core blocks, a partial one
}

#[test]
fn launch_shapes_cover_every_row() {
    for hd in k::ATTN_HEAD_DIMS {
        let per = k::attn_rows_per_block(hd);
        assert_eq!(k::attn_fwd(2, 8, 2048, hd).grid, ((2048 / per) as u32, 8, 2));
        assert_eq!(k::attn_fwd(1, 1, per + 1, hd).grid.0, 2);
    }
    assert_eq!(k::rope(3, 64).grid.0, 1);
    assert_eq!(k::rope(9, 64).grid.0, 2); // 288 pairs
    assert_eq!(k::attn_name("attn_fwd", Dtype::Bf16, 64), "attn_fwd_bf16_64");
}

#[test]
fn dropout_draws_the_engines_counter_based_mask_and_the_backward_is_the_same_call() {
    // Rng::bits_at(i) = mix(state + (i + 1)·golden) (crates/core/src/base/rng.rs; core's tests hold
    // the kernel to ops::dropout itself)
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let mut r = Rng(4);
    let (n, state, p) = (1031usize, 0x1234_5678_9abc_def0u64, 0.25f64);
    let thr = (p * 65536.0).round() as u32;
    let keep = (1.0 / (1.0 - p)) as f32;
    for dt in [Dtype::F32, Dtype::Bf16] {
        let x = r.vec(n, 1.0);
        let xs = seen(dt, &x);
        let want: Vec<f64> = (0..n)
            .map(|e| {
                let bits = mix(state.wrapping_add((e as u64 / 4 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
                if (bits >> (16 * (e % 4))) & 0xFFFF < thr as u64 {
                    0.0
                } else {
                    (xs[e] as f32 * keep) as f64
                }
            })
            .collect();
        let (o, _) = run(
            &k::name("dropout", dt),
            dt,
            k::dropout(n),
            vec![P::In(0), P::Out, P::Long(n as u64), P::Long(state), P::Uint(thr), P::Float(keep)],
            &[&x],
            &[n],
            &[],
        );
        let dropped = o[0].iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        assert!((dropped - p).abs() < 0.06, "{dt:?}: dropped {dropped:.3} of the elements, p = {p}");
        close(&format!("dropout {dt:?}"), &o[0], &want, if dt == Dtype::F32 { 0.0 } else { 8e-3 });
    }
}

#[test]
fn swiglu_and_its_two_gradients_match_the_reference() {
    let mut r = Rng(5);
    let n = 777;
    for dt in [Dtype::F32, Dtype::Bf16] {
        let (g, u, dy) = (r.vec(n, 4.0), r.vec(n, 2.0), r.vec(n, 1.0));
        let (gs, us, ds) = (seen(dt, &g), seen(dt, &u), seen(dt, &dy));
        let sig = |a: f64| 1.0 / (1.0 + (-a).exp());
        let y: Vec<f64> = (0..n).map(|e| gs[e] * sig(gs[e]) * us[e]).collect();
        let dg: Vec<f64> = (0..n).map(|e| ds[e] * us[e] * sig(gs[e]) * (1.0 + gs[e] * (1.0 - sig(gs[e])))).collect();
        let du: Vec<f64> = (0..n).map(|e| ds[e] * gs[e] * sig(gs[e])).collect();
        let l = k::elementwise(n);
        let (o, _) = run(
            &k::name("swiglu_fwd", dt),
            dt,
            l,
            vec![P::In(0), P::In(1), P::Out, P::Long(n as u64)],
            &[&g, &u],
            &[n],
            &[],
        );
        close(&format!("swiglu {dt:?}"), &o[0], &y, tol(dt));
        let (o, _) = run(
            &k::name("swiglu_bwd", dt),
            dt,
            l,
            vec![P::In(0), P::In(1), P::In(2), P::Out, P::Out, P::Long(n as u64)],
            &[&g, &u, &dy],
            &[n, n],
            &[],
        );
        close(&format!("swiglu dg {dt:?}"), &o[0], &dg, tol(dt));
        close(&format!("swiglu du {dt:?}"), &o[1], &du, tol(dt));
    }
}
