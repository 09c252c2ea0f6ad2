//! The element-wise steps between a layer's products: RMS norm fused with the residual add, the
//! rotary embedding written straight into head-major order, and the gated SiLU of separate gate
//! and up products. (The attention writes its output back in token-major rows itself.)
//!
//! On the CPU each is one pass over plain slices, split over candle's compute pool, instead of
//! candle's chain of ops (a copy per reshape, an allocation per op, and rayon's own pool for the
//! norm and the rotation, whose threads then compete with the compute pool's for the same cores).
//! The arithmetic is candle's, expression for expression (`rms_norm`, `rope_i`, `+`), so the
//! results are the same bits; the gated SiLU is `engine::vmath`'s, the fused kernel's (within a
//! few ulp of candle's `silu`, whose libm `exp` differs). Other devices run candle's ops.

use std::ops::Range;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, DType, Result, Storage, Tensor};

use super::isa::Isa;
use super::shared_out::{Fresh, SharedMut, Writer};
use super::vmath;

/// Rows per work piece: the passes are light, so pieces stay large.
const ROWS_PER_PIECE: usize = 16;

/// Rows whose sums of squares are taken together (independent add chains that overlap).
const NORM_GROUP: usize = 8;

/// `rows` in runs of at most [`NORM_GROUP`].
fn groups(rows: Range<usize>) -> impl Iterator<Item = Range<usize>> {
    rows.clone()
        .step_by(NORM_GROUP)
        .map(move |i| i..(i + NORM_GROUP).min(rows.end))
}

/// `Σ v²` of each `dim`-long row of `src` (at most [`NORM_GROUP`] rows), each row's squares added
/// one after another from the first, as candle's `rms_norm` sums them (the same bits), but the
/// rows' chains interleaved so that one row's add does not wait on the one before.
fn sums_of_squares(src: &[f32], dim: usize) -> [f32; NORM_GROUP] {
    let rows = src.len() / dim;
    assert!(rows <= NORM_GROUP && src.len() == rows * dim);
    let mut sums = [0f32; NORM_GROUP];
    if rows == NORM_GROUP {
        for j in 0..dim {
            for (r, s) in sums.iter_mut().enumerate() {
                let v = src[r * dim + j];
                *s += v * v;
            }
        }
    } else {
        for (s, row) in sums.iter_mut().zip(src.chunks_exact(dim)) {
            *s = row.iter().map(|&v| v * v).sum::<f32>();
        }
    }
    sums
}

/// Runs `f` on row ranges of `n` rows on the compute pool.
fn rows_on_pool(n: usize, f: impl Fn(Range<usize>) + Sync) {
    let pieces = n.div_ceil(ROWS_PER_PIECE);
    candle_core::utils::barrier_pool().execute_chunked(pieces, |chunk| {
        for p in chunk {
            f(p * ROWS_PER_PIECE..((p + 1) * ROWS_PER_PIECE).min(n));
        }
    });
}

/// `f` on a CPU f32 tensor's values (made contiguous first); `None` on other devices or types.
fn with_cpu_f32<T>(x: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<Option<T>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(Some(f(&v[a..b]))),
        _ => candle_core::bail!("expected contiguous f32 values on the CPU"),
    }
}

/// An RMS norm over the last dimension, with its learned scale.
pub(crate) struct Norm {
    weight: Tensor,
    scale: Vec<f32>,
    eps: f32,
}

impl Norm {
    /// The norm whose scale is `t` (any stored type, dequantised to f32).
    pub(crate) fn from_qtensor(t: QTensor, eps: f64) -> Result<Self> {
        let weight = t.dequantize(&t.device())?;
        let scale = weight.to_device(&candle_core::Device::Cpu)?.to_vec1()?;
        Ok(Self {
            weight,
            scale,
            eps: eps as f32,
        })
    }

    /// `x / rms(x) · scale`, row by row.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = self.scale.len();
        let done = with_cpu_f32(x, |xs| {
            let out = Fresh::new(xs.len());
            rows_on_pool(xs.len() / dim, |rows| {
                let (mut row, mut w) = (vec![0f32; dim], out.writer());
                for group in groups(rows) {
                    let src = &xs[group.start * dim..group.end * dim];
                    // SAFETY: the group's rows are written by this piece only, once (disjoint row
                    // ranges).
                    unsafe { self.write_group(src, group.start, &mut row, &mut w) };
                }
            });
            out.into_vec()
        })?;
        match done {
            Some(out) => Tensor::from_vec(out, x.shape(), x.device()),
            None => candle_nn::ops::rms_norm(x, &self.weight, self.eps),
        }
    }

    /// The residual sum `x + y` and its norm, in one pass.
    pub(crate) fn add_forward(&self, x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
        let dim = self.scale.len();
        let y = y.contiguous()?;
        let done = with_cpu_f32(x, |xs| {
            with_cpu_f32(&y, |ys| {
                assert_eq!(xs.len(), ys.len(), "residual shapes differ");
                let (sum, out) = (Fresh::new(xs.len()), Fresh::new(xs.len()));
                rows_on_pool(xs.len() / dim, |rows| {
                    let (mut s, mut o) = (vec![0f32; NORM_GROUP * dim], vec![0f32; dim]);
                    let (mut ws, mut wo) = (sum.writer(), out.writer());
                    for group in groups(rows) {
                        let span = group.start * dim..group.end * dim;
                        let s = &mut s[..span.len()];
                        for ((s, a), b) in
                            s.iter_mut().zip(&xs[span.clone()]).zip(&ys[span.clone()])
                        {
                            *s = a + b;
                        }
                        // SAFETY: the group's rows of both buffers are written by this piece
                        // only, once (disjoint row ranges).
                        unsafe {
                            ws.write(span.start, s);
                            self.write_group(s, group.start, &mut o, &mut wo);
                        }
                    }
                });
                (sum.into_vec(), out.into_vec())
            })
        })?
        .transpose()?
        .flatten();
        match done {
            Some((sum, out)) => Ok((
                Tensor::from_vec(sum, x.shape(), x.device())?,
                Tensor::from_vec(out, x.shape(), x.device())?,
            )),
            None => {
                let sum = (x + &y)?;
                let out = candle_nn::ops::rms_norm(&sum, &self.weight, self.eps)?;
                Ok((sum, out))
            }
        }
    }

    /// The rows of `src` (a run from [`groups`], from row `first`), each normalised as candle's
    /// `rms_norm` computes it, written through `w` at their rows; `row` is one row of scratch.
    ///
    /// # Safety
    /// No other write to `w`'s buffer overlaps rows `first..first + src.len() / dim`.
    unsafe fn write_group(
        &self,
        src: &[f32],
        first: usize,
        row: &mut [f32],
        w: &mut Writer<'_, f32>,
    ) {
        let n = self.scale.len();
        for (r, (x, sum2)) in src.chunks_exact(n).zip(sums_of_squares(src, n)).enumerate() {
            let m = (sum2 / n as f32 + self.eps).sqrt();
            for ((d, s), a) in row.iter_mut().zip(x).zip(&self.scale) {
                *d = *s / m * *a;
            }
            // SAFETY: row first + r is one of the rows the caller promises no other write covers.
            unsafe { w.write((first + r) * n, row) };
        }
    }
}

/// `y` (`[n, heads · hd]`, token-major) as `[1, heads, n, hd]`, each pair of values rotated by
/// its token's angle (`cos`, `sin`: `[n, hd / 2]`) when given, as candle's `rope_i` rotates them.
pub(crate) fn to_heads(
    y: &Tensor,
    heads: usize,
    hd: usize,
    rope: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let n = y.dim(0)?;
    let tables = match rope {
        Some((c, s)) => Some((
            with_cpu_f32(c, <[f32]>::to_vec)?,
            with_cpu_f32(s, <[f32]>::to_vec)?,
        )),
        None => None,
    };
    let cpu_tables = match &tables {
        Some((Some(c), Some(s))) => Some((c.as_slice(), s.as_slice())),
        Some(_) => None,
        None => Some((&[][..], &[][..])),
    };
    let done = match cpu_tables {
        Some((cos, sin)) => with_cpu_f32(y, |ys| {
            let out = Fresh::new(ys.len());
            candle_core::utils::barrier_pool().execute_chunked(heads, |hs| {
                let (mut d, mut w) = (vec![0f32; hd], out.writer());
                for h in hs {
                    for i in 0..n {
                        let src = &ys[(i * heads + h) * hd..(i * heads + h + 1) * hd];
                        let row = match rope {
                            None => src,
                            Some(_) => {
                                let (c, s) = (&cos[i * hd / 2..], &sin[i * hd / 2..]);
                                for p in 0..hd / 2 {
                                    let (x0, x1) = (src[2 * p], src[2 * p + 1]);
                                    d[2 * p] = x0 * c[p] - x1 * s[p];
                                    d[2 * p + 1] = x0 * s[p] + x1 * c[p];
                                }
                                &d[..]
                            }
                        };
                        // SAFETY: head h's block of the output is written by this piece only, one
                        // token's row at a time, each once.
                        unsafe { w.write((h * n + i) * hd, row) };
                    }
                }
            });
            out.into_vec()
        })?,
        None => None,
    };
    match done {
        Some(out) => Tensor::from_vec(out, (1, heads, n, hd), y.device()),
        None => {
            let t = y
                .reshape((n, heads, hd))?
                .transpose(0, 1)?
                .unsqueeze(0)?
                .contiguous()?;
            match rope {
                Some((c, s)) => candle_nn::rotary_emb::rope_i(&t, c, s),
                None => Ok(t),
            }
        }
    }
}

/// `SiLU(gate) · up` for two products of one shape, with the same arithmetic as the fused
/// gate-and-up kernel (`qgemm::matmul_swiglu`), so a layer gets the same bits either way.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!(
            "gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        )
    }
    let width = gate.dims().last().copied().unwrap_or(1).max(1);
    let done = with_cpu_f32(up, |us| {
        with_cpu_f32(gate, |gs| {
            let mut out = gs.to_vec();
            let ptr = SharedMut::new(&mut out);
            let isa = Isa::detect();
            rows_on_pool(gs.len() / width, |rows| {
                let span = rows.start * width..rows.end * width;
                // SAFETY: each piece writes its own rows only (disjoint row ranges).
                let dst = unsafe { ptr.part(span.start, span.len()) };
                vmath::silu_mul(isa, dst, &us[span]);
            });
            out
        })
    })?;
    match done.transpose()?.flatten() {
        Some(out) => Tensor::from_vec(out, gate.shape(), gate.device()),
        None => candle_nn::ops::silu(gate)? * up,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n as u64)
            .map(|i| ((i * 7919 + seed * 104_729) % 1009) as f32 / 1009.0 * 4.0 - 2.0)
            .collect();
        Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()
    }

    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn norms_equal_candles_rms_norm_to_the_bit() {
        let (n, dim) = (70, 96);
        let w = random(&[dim], 1);
        let norm = Norm::from_qtensor(
            QTensor::quantize(&w, candle_core::quantized::GgmlDType::F32).unwrap(),
            1e-5,
        )
        .unwrap();
        let (x, y) = (random(&[n, dim], 2), random(&[n, dim], 3));
        let want = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap();
        assert_eq!(bits(&norm.forward(&x).unwrap()), bits(&want));
        let (sum, normed) = norm.add_forward(&x, &y).unwrap();
        let want_sum = (&x + &y).unwrap();
        assert_eq!(bits(&sum), bits(&want_sum));
        let want = candle_nn::ops::rms_norm(&want_sum, &w, 1e-5).unwrap();
        assert_eq!(bits(&normed), bits(&want));
    }

    #[test]
    fn heads_equal_candles_transpose_and_rope_i_to_the_bit() {
        let (n, heads, hd) = (37, 3, 16);
        let y = random(&[n, heads * hd], 4);
        let (cos, sin) = (random(&[n, hd / 2], 5), random(&[n, hd / 2], 6));
        let plain = y
            .reshape((n, heads, hd))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
            .contiguous()
            .unwrap();
        assert_eq!(bits(&to_heads(&y, heads, hd, None).unwrap()), bits(&plain));
        let want = candle_nn::rotary_emb::rope_i(&plain, &cos, &sin).unwrap();
        let got = to_heads(&y, heads, hd, Some((&cos, &sin))).unwrap();
        assert_eq!(got.dims(), want.dims());
        assert_eq!(bits(&got), bits(&want));
    }

    #[test]
    fn the_gated_silu_is_vmaths_row_for_row_and_near_candles() {
        let (g, u) = (random(&[70, 40], 9), random(&[70, 40], 10));
        let got: Vec<f32> = swiglu(&g, &u)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut want: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        let uv: Vec<f32> = u.flatten_all().unwrap().to_vec1().unwrap();
        vmath::silu_mul(Isa::portable(), &mut want, &uv);
        assert_eq!(got, want);
        let candle = (candle_nn::ops::silu(&g).unwrap() * &u).unwrap();
        let candle: Vec<f32> = candle.flatten_all().unwrap().to_vec1().unwrap();
        for (a, b) in got.iter().zip(&candle) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{a} against candle's {b}"
            );
        }
        assert!(swiglu(&g, &random(&[70, 41], 11)).is_err());
    }
}
