//! `c = a b` over slices of f32 or f64, through the `gemm` crate (candle's own matmul engine),
//! with candle's thread count: the matmul the fused ops (`compute::fused`) and the bf16 kernel's
//! portable path (`compute::bf16`) call.

use candle_core::WithDType;
use gemm::Parallelism;

/// The element types the fused kernels and this matmul are written for.
pub trait Float: WithDType + num_traits::Float + std::iter::Sum + Send + Sync + 'static {}
impl Float for f32 {}
impl Float for f64 {}

/// A read-only matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: isize,
    pub cs: isize,
}

impl<'a, T> Mat<'a, T> {
    /// A row-major matrix with `cols` columns.
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Mat { data, rs: cols as isize, cs: 1 }
    }

    /// Row-major with rows `stride` apart (a column block of a wider matrix).
    pub(crate) fn strided(data: &'a [T], stride: usize) -> Self {
        Mat { data, rs: stride as isize, cs: 1 }
    }

    /// The transpose, for free: swap the strides.
    pub fn t(self) -> Self {
        Mat { data: self.data, rs: self.cs, cs: self.rs }
    }
}

/// `c [m, n] = a [m, k] b [k, n]`, or `c += a b` with `accumulate`; `c` is row-major with rows
/// `ldc` apart. `parallel` lets gemm use candle's thread count (off inside rayon tasks).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Float>(
    c: &mut [T],
    ldc: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the last element each operand touches must be inside its slice.
    let last = |x: Mat<T>, r: usize, q: usize| {
        (r.saturating_sub(1) as isize * x.rs + q.saturating_sub(1) as isize * x.cs) as usize
    };
    assert!(k == 0 || last(a, m, k) < a.data.len(), "matmul: lhs out of bounds");
    assert!(k == 0 || last(b, k, n) < b.data.len(), "matmul: rhs out of bounds");
    assert!((m - 1) * ldc + n <= c.len(), "matmul: dst out of bounds");
    // A few rows against a weight read as W^T (b's columns are W's contiguous rows): dot
    // products, each W row read once for all rows. gemm would pack all of W first, for every call:
    // decoding a batch of 8 rows spent half its time packing weights.
    if m <= FEW_ROWS && a.cs == 1 && b.rs == 1 && b.cs >= k as isize && k > 0 {
        few_rows(c, ldc, (m, n, k), a, b, accumulate, parallel);
        return;
    }
    let threads = thread_count();
    let parallelism = if parallel && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    let (zero, one) = (T::zero(), T::one());
    // SAFETY: the asserts above keep every access inside the three slices; `c` does not alias
    // `a` or `b` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            if accumulate { one } else { zero },
            one,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// candle's thread count, asked once: each call of `get_num_threads` may read /proc/cpuinfo
/// (see [`crate::compute::threads`]).
pub(crate) fn thread_count() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// At most this many rows take [`few_rows`] (decoding a batch of up to 8 requests: one new token
/// each). More rows amortize gemm's packing.
const FEW_ROWS: usize = 8;

/// `c (+)= a b` for `m <= FEW_ROWS` rows of `a` (contiguous) and `b` = W^T, W's rows contiguous
/// (`b.cs` apart): `c[i, j] = a_i . W_j`, the columns split across threads.
fn few_rows<T: Float>(
    c: &mut [T],
    ldc: usize,
    (m, n, k): (usize, usize, usize),
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    parallel: bool,
) {
    use rayon::prelude::*;
    let threads = if parallel { thread_count().max(1) } else { 1 };
    // Each thread fills a [m, cols] block, then the blocks are copied into c.
    let per = n.div_ceil(threads);
    let blocks: Vec<(usize, Vec<T>)> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let (j0, j1) = (t * per, ((t + 1) * per).min(n));
            let cols = j1.saturating_sub(j0);
            let mut out = vec![T::zero(); m * cols];
            let rows: Vec<&[T]> = (0..m).map(|i| &a.data[i * a.rs as usize..i * a.rs as usize + k]).collect();
            let mut dots = [T::zero(); FEW_ROWS];
            for j in j0..j1 {
                let w = &b.data[j * b.cs as usize..j * b.cs as usize + k];
                row_dots(&rows, w, &mut dots[..m]);
                for i in 0..m {
                    out[i * cols + (j - j0)] = dots[i];
                }
            }
            (j0, out)
        })
        .collect();
    for (j0, out) in blocks {
        let cols = out.len().checked_div(m).unwrap_or(0);
        for i in 0..m {
            let dst = &mut c[i * ldc + j0..i * ldc + j0 + cols];
            let src = &out[i * cols..(i + 1) * cols];
            if accumulate {
                dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
            } else {
                dst.copy_from_slice(src);
            }
        }
    }
}

/// `out[i] = rows[i] . w`, reading w once for all rows: AVX-512 FMAs for f32 where the CPU has
/// them, else [`dot`].
fn row_dots<T: Float>(rows: &[&[T]], w: &[T], out: &mut [T]) {
    #[cfg(target_arch = "x86_64")]
    if T::DTYPE == candle_core::DType::F32 && avx512f() {
        // SAFETY: T is f32 (checked), so the casts only rename the type; the CPU has AVX-512F.
        unsafe {
            let rows: &[&[f32]] = std::mem::transmute::<&[&[T]], &[&[f32]]>(rows);
            let w = std::slice::from_raw_parts(w.as_ptr() as *const f32, w.len());
            let out = std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut f32, out.len());
            row_dots_avx512(rows, w, out);
        }
        return;
    }
    for (o, x) in out.iter_mut().zip(rows) {
        *o = dot(x, w);
    }
}

#[cfg(target_arch = "x86_64")]
fn avx512f() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_dots_avx512(rows: &[&[f32]], w: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let k = w.len();
    let mut acc = [_mm512_setzero_ps(); FEW_ROWS];
    let mut p = 0;
    while p + 16 <= k {
        let wv = _mm512_loadu_ps(w.as_ptr().add(p));
        for (acc, x) in acc.iter_mut().zip(rows) {
            *acc = _mm512_fmadd_ps(_mm512_loadu_ps(x.as_ptr().add(p)), wv, *acc);
        }
        p += 16;
    }
    for ((o, acc), x) in out.iter_mut().zip(&acc).zip(rows) {
        *o = _mm512_reduce_add_ps(*acc) + (p..k).map(|q| x[q] * w[q]).sum::<f32>();
    }
}

/// `x . w` in 16 independent partial sums, so that the compiler can keep them in vector lanes.
fn dot<T: Float>(x: &[T], w: &[T]) -> T {
    let mut acc = [T::zero(); 16];
    let (xc, wc) = (x.chunks_exact(16), w.chunks_exact(16));
    let tail: T = xc.remainder().iter().zip(wc.remainder()).map(|(&a, &b)| a * b).sum();
    for (xs, ws) in xc.zip(wc) {
        for l in 0..16 {
            acc[l] += xs[l] * ws[l];
        }
    }
    acc.iter().copied().sum::<T>() + tail
}

#[cfg(test)]
mod tests {
    use super::{matmul, Mat};

    /// The few-rows path (dot products against W's rows) against f64 sums, f32 and f64, with and
    /// without accumulating, k with a tail past the 16-lane chunks.
    #[test]
    fn few_rows_are_exact_dot_products() {
        let (n, k) = (50, 37);
        let val = |i: usize| ((i * 7919) % 101) as f64 / 50.0 - 1.0;
        for m in 1..=8 {
            for accumulate in [false, true] {
                let x: Vec<f64> = (0..m * k).map(val).collect();
                let w: Vec<f64> = (0..n * k).map(|i| val(i + 13)).collect();
                let want: Vec<f64> = (0..m * n)
                    .map(|e| {
                        let (i, j) = (e / n, e % n);
                        (0..k).map(|p| x[i * k + p] * w[j * k + p]).sum::<f64>() + if accumulate { 1.0 } else { 0.0 }
                    })
                    .collect();
                let mut c64 = vec![1.0f64; m * n];
                matmul(&mut c64, n, (m, n, k), Mat::rows(&x, k), Mat::rows(&w, k).t(), accumulate, true);
                let (x32, w32): (Vec<f32>, Vec<f32>) =
                    (x.iter().map(|&v| v as f32).collect(), w.iter().map(|&v| v as f32).collect());
                let mut c32 = vec![1.0f32; m * n];
                matmul(&mut c32, n, (m, n, k), Mat::rows(&x32, k), Mat::rows(&w32, k).t(), accumulate, true);
                for e in 0..m * n {
                    assert!((c64[e] - want[e]).abs() < 1e-12, "f64 m {m}: {} vs {}", c64[e], want[e]);
                    assert!((c32[e] as f64 - want[e]).abs() < 1e-5, "f32 m {m}: {} vs {}", c32[e], want[e]);
                }
            }
        }
    }
}
