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
    pub fn strided(data: &'a [T], stride: usize) -> Self {
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

