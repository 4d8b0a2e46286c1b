//! `x W^T` and `x W` for a frozen bf16 weight W and f32 activations: what `--bf16` runs on the CPU
//! (the base's matrices in bf16, activations, adapters, norms and the loss in f32).
//!
//! **What the product means, on every CPU**: each activation is rounded to bf16 (round to nearest
//! even), multiplied by the bf16 weight exactly (a product of two bf16 values fits in f32), and the
//! products are summed in f32. Two paths compute it:
//!
//! - [`Path::Kernel`], on CPUs with AVX512_BF16 (Zen 4 and later, Cooper Lake / Sapphire Rapids
//!   and later): `vdpbf16ps` multiplies 32 bf16 pairs into 16 f32 sums, twice an f32 FMA's work.
//!   A blocked GEMM (Goto and van de Geijn 2008): x packed once per call into 12-row panels of
//!   bf16 pairs, W one 32-column panel and one k block at a time (or once per op: [`pack`]), a
//!   12 x 32 microkernel; up to 8 rows of `x W^T` (decoding) take dot products against W's rows
//!   as stored, where packing W would cost as much as the multiply.
//! - [`Path::Portable`], everywhere else: the activations rounded to bf16 into an f32 copy, W
//!   widened to f32, candle's f32 gemm. Its products are exact too, so it differs from the kernel
//!   only in the order of the f32 sums (and in subnormals, which the kernel flushes to zero).
//!
//! Rounding the activations on the portable path (which costs it no measurable time) buys one
//! specification: every op over a bf16 weight is the same function on every CPU, up to the order
//! of f32 sums, so one f64 reference tests both paths (`tests/bf16.rs`); PyTorch's bf16 matmul
//! rounds its inputs the same way (and its output too, which stays f32 here). A whole model is
//! not bit for bit the same on the two paths: a sum that differs in its last bit can move an
//! activation across a bf16 rounding boundary, and those one-step differences spread through the
//! layers. SmolLM2's loss on the two paths agrees to
//! about 2e-4 relative, as the kernel's agrees with the f32 model's (the performance chapter).
//!
//! [`path`] says which path [`matmul`] takes now; [`set_kernel_enabled`] or the environment
//! variable `LORA_FROM_SCRATCH_BF16_KERNEL=off` forces the portable path on a CPU that has the
//! kernel, which is how a host without AVX512_BF16 is tested on one with it.

use half::bf16;
use std::sync::atomic::{AtomicU8, Ordering};

/// Rows of the microkernel's tile: 12 rows x 2 vectors of 16 = 24 accumulators of the 32 zmm.
const MR: usize = 12;
/// Columns of the tile: two 16-lane vectors.
const NR: usize = 32;
/// k pairs per block: a packed B panel of 384 pairs x 32 columns is 48 KiB, about L1 + L2-near.
const KC: usize = 384;
/// Up to this many rows, `x W^T` takes dot products against W's rows as stored.
const FEW_ROWS: usize = 8;

/// The environment variable that forces the portable path (`off`, `0` or `false`).
pub const KERNEL_ENV: &str = "LORA_FROM_SCRATCH_BF16_KERNEL";

/// Which product: W is [out, in] row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Product {
    /// `c [m, out] = x [m, in] W^T` (the forward of a linear layer).
    XWt,
    /// `c [m, in] = x [m, out] W` (the input gradient of a linear layer).
    XW,
}

impl Product {
    /// (n, k) of `c [m, n] = x [m, k] B` for a weight [out, in].
    pub(crate) fn n_k(self, (out_f, in_f): (usize, usize)) -> (usize, usize) {
        match self {
            Product::XWt => (out_f, in_f),
            Product::XW => (in_f, out_f),
        }
    }
}

/// Which implementation computes the product (both mean the same: see the module's comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The AVX512_BF16 kernel.
    Kernel,
    /// The weight widened to f32 and candle's gemm, on any CPU.
    Portable,
}

/// 0: not decided yet (read [`KERNEL_ENV`] first), 1: the kernel where the CPU has it, 2: the
/// portable path.
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// Use the portable path even where the CPU has AVX512_BF16 (`false`), or the kernel again
/// (`true`), for the whole process: for testing the path other CPUs take.
pub fn set_kernel_enabled(enabled: bool) {
    CHOICE.store(if enabled { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether this CPU has AVX512_BF16 (detected once, at run time).
pub fn kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The choice [`KERNEL_ENV`] makes: `off`, `0`, `false` force the portable path; unset, empty,
/// `on`, `1`, `true` leave the kernel on; anything else is reported on stderr and changes nothing.
fn choice_from_env() -> u8 {
    match std::env::var(KERNEL_ENV).map(|v| v.trim().to_ascii_lowercase()) {
        Ok(v) if ["off", "0", "false"].contains(&v.as_str()) => 2,
        Ok(v) if ["", "on", "1", "true"].contains(&v.as_str()) => 1,
        Err(std::env::VarError::NotPresent) => 1,
        Ok(v) => {
            eprintln!("{KERNEL_ENV}={v:?} is neither off/0/false nor on/1/true: the bf16 kernel stays on");
            1
        }
        Err(std::env::VarError::NotUnicode(v)) => {
            eprintln!("{KERNEL_ENV}={v:?} is not text: the bf16 kernel stays on");
            1
        }
    }
}

/// The path [`matmul`] and [`pack`] take now: the kernel where the CPU has it and neither
/// [`set_kernel_enabled`] nor [`KERNEL_ENV`] turned it off.
pub fn path() -> Path {
    let mut choice = CHOICE.load(Ordering::Relaxed);
    if choice == 0 {
        let from_env = choice_from_env();
        // A `set_kernel_enabled` that ran meanwhile wins over the environment.
        choice = match CHOICE.compare_exchange(0, from_env, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => from_env,
            Err(set) => set,
        };
    }
    if choice == 1 && kernel_available() {
        Path::Kernel
    } else {
        Path::Portable
    }
}

/// Whether [`matmul`] takes the AVX512_BF16 kernel now.
pub fn kernel_in_use() -> bool {
    path() == Path::Kernel
}

/// Checks shared by every entry point; `false` when there is nothing to multiply (then `c` has
/// been handled: zeroed for k = 0 without `accumulate`).
fn check(c: &mut [f32], ldc: usize, x: &[f32], (m, n, k): (usize, usize, usize), accumulate: bool) -> bool {
    assert!(x.len() >= m * k, "bf16 matmul: x has {} elements, [{m}, {k}] needs {}", x.len(), m * k);
    assert!(m == 0 || n == 0 || (m - 1) * ldc + n <= c.len(), "bf16 matmul: c is too small");
    if m == 0 || n == 0 {
        return false;
    }
    if k == 0 {
        if !accumulate {
            c.chunks_mut(ldc).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return false;
    }
    true
}

/// `c (+)= x W^T` or `x W` ([`Product`]) for `x` [m, k] row-major f32, `w` [out, in] row-major
/// bf16, `c` row-major with rows `ldc` apart; `accumulate` adds into `c` instead of overwriting
/// it. `dims` is (m, out, in). On the path [`path`] gives.
pub fn matmul(
    c: &mut [f32],
    ldc: usize,
    x: &[f32],
    w: &[bf16],
    dims: (usize, usize, usize),
    product: Product,
    accumulate: bool,
) {
    matmul_on(path(), c, ldc, x, w, dims, product, accumulate)
}

/// [`matmul`] on the given path. Panics if `path` is [`Path::Kernel`] and the CPU lacks
/// AVX512_BF16 ([`kernel_available`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_on(
    path: Path,
    c: &mut [f32],
    ldc: usize,
    x: &[f32],
    w: &[bf16],
    (m, out_f, in_f): (usize, usize, usize),
    product: Product,
    accumulate: bool,
) {
    let (n, k) = product.n_k((out_f, in_f));
    assert!(w.len() >= out_f * in_f, "bf16 matmul: W has {} elements, [{out_f}, {in_f}] needs more", w.len());
    if !check(c, ldc, x, (m, n, k), accumulate) {
        return;
    }
    match path {
        Path::Kernel => {
            assert!(kernel_available(), "bf16 matmul: the kernel path needs AVX512_BF16, which this CPU lacks");
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has avx512f, avx512bw and avx512bf16 (asserted above); the checks
            // keep every access inside the slices.
            unsafe {
                if m <= FEW_ROWS && product == Product::XWt {
                    // Decoding: a few rows against each weight row where it lies, no packing
                    // (which would read and write the whole weight for a handful of rows).
                    avx512::few_rows(c, ldc, x, w, (m, n, k), accumulate);
                } else {
                    avx512::gemm_b(c, ldc, x, avx512::B::Raw(w, product), (m, n, k), accumulate);
                }
            }
        }
        Path::Portable => {
            let wide: Vec<f32> = w[..out_f * in_f].iter().map(|v| v.to_f32()).collect();
            portable(c, ldc, x, &wide, (m, n, k), product, accumulate);
        }
    }
}

/// A bf16 weight prepared once for a weight multiplied many times in one op (the output head,
/// chunk by chunk): packed for the kernel, or widened to f32 for the portable path. Preparing it
/// per call would repeat O(out x in) work for every chunk.
pub struct Packed {
    data: Prepared,
    /// (out, in) of the weight.
    dims: (usize, usize),
    product: Product,
}

enum Prepared {
    /// The kernel's panels: [column panel][k pair][NR].
    #[cfg(target_arch = "x86_64")]
    Kernel(Vec<u32>),
    /// The weight widened to f32, [out, in] as stored: the same for both products, so shared.
    Portable(std::sync::Arc<Vec<f32>>),
}

/// `w` prepared for `product` on the path [`path`] gives.
pub fn pack(w: &[bf16], dims: (usize, usize), product: Product) -> Packed {
    pack_on(path(), w, dims, product)
}

/// [`pack`] for each of `products` (the head's forward and backward): the portable path widens
/// the weight once for all of them, not once each.
pub fn pack_many(w: &[bf16], dims: (usize, usize), products: &[Product]) -> Vec<Packed> {
    let path = path();
    let mut out: Vec<Packed> = Vec::with_capacity(products.len());
    for &product in products {
        let shared = match out.first().map(|p| &p.data) {
            Some(Prepared::Portable(wide)) => Some(Packed { data: Prepared::Portable(wide.clone()), dims, product }),
            _ => None,
        };
        out.push(shared.unwrap_or_else(|| pack_on(path, w, dims, product)));
    }
    out
}

/// [`pack`] on the given path (panics as [`matmul_on`] does).
pub fn pack_on(path: Path, w: &[bf16], (out_f, in_f): (usize, usize), product: Product) -> Packed {
    assert!(w.len() >= out_f * in_f, "bf16 pack: W has {} elements, [{out_f}, {in_f}] needs more", w.len());
    let w = &w[..out_f * in_f];
    let data = match path {
        Path::Kernel => {
            assert!(kernel_available(), "bf16 pack: the kernel path needs AVX512_BF16, which this CPU lacks");
            #[cfg(target_arch = "x86_64")]
            {
                Prepared::Kernel(avx512::pack_all(w, product.n_k((out_f, in_f)), product))
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("kernel_available() is false off x86_64")
        }
        Path::Portable => Prepared::Portable(std::sync::Arc::new(w.iter().map(|v| v.to_f32()).collect())),
    };
    Packed { data, dims: (out_f, in_f), product }
}

impl Packed {
    /// The path this weight was prepared for.
    pub fn path(&self) -> Path {
        match self.data {
            #[cfg(target_arch = "x86_64")]
            Prepared::Kernel(_) => Path::Kernel,
            Prepared::Portable(_) => Path::Portable,
        }
    }
}

/// [`matmul`] with a weight prepared by [`pack`], on the path it was prepared for.
pub fn matmul_packed(c: &mut [f32], ldc: usize, x: &[f32], m: usize, w: &Packed, accumulate: bool) {
    let (n, k) = w.product.n_k(w.dims);
    if !check(c, ldc, x, (m, n, k), accumulate) {
        return;
    }
    match &w.data {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a kernel-prepared weight exists only where the CPU has the features (`pack_on`).
        Prepared::Kernel(data) => unsafe { avx512::gemm_b(c, ldc, x, avx512::B::Packed(data), (m, n, k), accumulate) },
        Prepared::Portable(wide) => portable(c, ldc, x, wide, (m, n, k), w.product, accumulate),
    }
}

/// The portable path with W already widened: x rounded to bf16 (as the kernel packs it), then
/// candle's f32 gemm, whose products of two bf16 values are exact.
fn portable(
    c: &mut [f32],
    ldc: usize,
    x: &[f32],
    wide: &[f32],
    (m, n, k): (usize, usize, usize),
    product: Product,
    accumulate: bool,
) {
    use crate::compute::matmul::{matmul as f32_matmul, Mat};
    let rounded = round_to_bf16(&x[..m * k]);
    let b = match product {
        // W is [n, k]: B = W^T.
        Product::XWt => Mat::rows(wide, k).t(),
        // W is [k, n]: B = W.
        Product::XW => Mat::rows(wide, n),
    };
    f32_matmul(c, ldc, (m, n, k), Mat::rows(&rounded, k), b, accumulate, true);
}

/// Each value rounded to the nearest bf16 (ties to even), kept as f32.
fn round_to_bf16(x: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, x)| o.iter_mut().zip(x).for_each(|(o, &v)| *o = bf16::from_f32(v).to_f32()));
    out
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{bf16, Product, KC, MR, NR};
    use std::arch::x86_64::*;

    /// A pointer shared by the threads, each writing its own columns of c.
    #[derive(Clone, Copy)]
    struct SharedMut(*mut f32);
    // SAFETY: the threads write disjoint column ranges of c.
    unsafe impl Send for SharedMut {}
    unsafe impl Sync for SharedMut {}

    /// `to_bf16` of two f32 values packed into one u32, the first in the low half: the layout
    /// `vdpbf16ps` reads a pair in.
    fn pair(lo: f32, hi: f32) -> u32 {
        bf16::from_f32(lo).to_bits() as u32 | ((bf16::from_f32(hi).to_bits() as u32) << 16)
    }

    /// Where the microkernel's B panels come from.
    pub(super) enum B<'a> {
        /// The weight as stored; each thread packs the panel it is about to use.
        Raw(&'a [bf16], Product),
        /// Packed once by [`pack_all`]: [column panel][k pair][NR].
        Packed(&'a [u32]),
    }

    /// Every column panel of B, packed: [column panel][k pair][NR].
    pub(super) fn pack_all(w: &[bf16], (n, k): (usize, usize), product: Product) -> Vec<u32> {
        use rayon::prelude::*;
        let kp = k.div_ceil(2);
        let mut data = vec![0u32; n.div_ceil(NR) * kp * NR];
        data.par_chunks_mut(kp * NR).enumerate().for_each(|(jp, panel)| {
            let j0 = jp * NR;
            pack_b(w, (n, k), product, 0, kp, j0, NR.min(n - j0), panel);
        });
        data
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn gemm_b(
        c: &mut [f32],
        ldc: usize,
        x: &[f32],
        b: B,
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) {
        use rayon::prelude::*;
        let kp = k.div_ceil(2);
        let row_panels = m.div_ceil(MR);
        let col_panels = n.div_ceil(NR);
        // A packed: [row panel][k pair][MR] pairs; rows past m are zero. Row panels are packed
        // in parallel, each thread its own.
        let mut pa = vec![0u32; row_panels * MR * kp];
        pa.par_chunks_mut(kp * MR).enumerate().for_each(|(ip, panel)| {
            let rows = MR.min(m - ip * MR);
            // SAFETY: the caller checked the CPU's features.
            unsafe { pack_a(&x[ip * MR * k..(ip * MR + rows) * k], rows, k, panel) };
        });
        let threads = crate::compute::matmul::thread_count().min(col_panels).max(1);
        let per = col_panels.div_ceil(threads);
        let cp = SharedMut(c.as_mut_ptr());
        let (pa, b) = (&pa, &b);
        (0..threads).into_par_iter().for_each(move |t| {
            let cp = cp;
            let mut own = vec![0u32; if matches!(b, B::Raw(..)) { KC.min(kp) * NR } else { 0 }];
            for jp in t * per..((t + 1) * per).min(col_panels) {
                let j0 = jp * NR;
                let cols = NR.min(n - j0);
                let mut p0 = 0;
                while p0 < kp {
                    let pairs = KC.min(kp - p0);
                    let pb: &[u32] = match b {
                        B::Raw(w, product) => {
                            pack_b(w, (n, k), *product, p0, pairs, j0, cols, &mut own);
                            &own
                        }
                        B::Packed(data) => &data[(jp * kp + p0) * NR..(jp * kp + p0 + pairs) * NR],
                    };
                    for ip in 0..row_panels {
                        let i0 = ip * MR;
                        let rows = MR.min(m - i0);
                        // SAFETY: the panel of A holds `pairs` pairs from p0 on, MR rows each.
                        let a = unsafe { pa.as_ptr().add((ip * kp + p0) * MR) };
                        // SAFETY: rows <= m - i0 and cols <= n - j0 keep the tile inside c; this
                        // thread alone writes columns j0..j0 + cols.
                        unsafe {
                            micro(pairs, a, pb.as_ptr(), cp.0.add(i0 * ldc + j0), ldc, rows, cols, accumulate || p0 > 0)
                        };
                    }
                    p0 += pairs;
                }
            }
        });
    }

    /// `c (+)= x W^T` for at most [`super::FEW_ROWS`] rows: each row rounded to bf16 pairs
    /// once, then dot products with W's rows (pairs along k, as stored), the columns split across
    /// threads.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn few_rows(
        c: &mut [f32],
        ldc: usize,
        x: &[f32],
        w: &[bf16],
        (m, n, k): (usize, usize, usize),
        accumulate: bool,
    ) {
        use rayon::prelude::*;
        // Rows of x as bf16 pairs, zero-padded to whole 32-element chunks.
        let chunks = k.div_ceil(32);
        let mut xb = vec![0u32; m * chunks * 16];
        for (i, dst) in xb.chunks_mut(chunks * 16).enumerate() {
            to_pairs(&x[i * k..(i + 1) * k], dst);
        }
        let threads = crate::compute::matmul::thread_count().min(n).max(1);
        let per = n.div_ceil(threads);
        let cp = SharedMut(c.as_mut_ptr());
        let xb = &xb;
        (0..threads).into_par_iter().for_each(move |t| {
            let cp = cp;
            let mut tail = [0u16; 32];
            for j in t * per..((t + 1) * per).min(n) {
                let row = &w[j * k..(j + 1) * k];
                let mut acc = [_mm512_setzero_ps(); super::FEW_ROWS];
                for q in 0..chunks {
                    // The last chunk may run past the row: copy it into a zero-padded one.
                    let wp: *const u16 = if (q + 1) * 32 <= k {
                        row.as_ptr().add(q * 32) as *const u16
                    } else {
                        tail.fill(0);
                        for (d, s) in tail.iter_mut().zip(&row[q * 32..]) {
                            *d = s.to_bits();
                        }
                        tail.as_ptr()
                    };
                    // SAFETY: 32 bf16 values from wp (a whole chunk of the row, or `tail`).
                    let wv: __m512bh = std::mem::transmute(unsafe { _mm512_loadu_si512(wp as *const __m512i) });
                    for (i, acc) in acc.iter_mut().enumerate().take(m) {
                        // SAFETY: row i of xb holds `chunks` chunks of 16 pairs.
                        let xv: __m512bh = std::mem::transmute(unsafe {
                            _mm512_loadu_si512(xb.as_ptr().add((i * chunks + q) * 16) as *const __m512i)
                        });
                        *acc = _mm512_dpbf16_ps(*acc, xv, wv);
                    }
                }
                for (i, acc) in acc.iter().enumerate().take(m) {
                    let v = _mm512_reduce_add_ps(*acc);
                    // SAFETY: i < m and j < n are inside c; this thread alone writes column j.
                    let dst = unsafe { cp.0.add(i * ldc + j) };
                    unsafe { *dst = if accumulate { *dst + v } else { v } };
                }
            }
        });
    }

    /// One row of f32 values -> bf16 pairs (the first of each pair in the low half), rounded to
    /// nearest even, 32 values per step; `dst` holds at least `src.len().div_ceil(2)` pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn to_pairs(src: &[f32], dst: &mut [u32]) {
        let k = src.len();
        assert!(dst.len() >= k.div_ceil(2), "bf16 pairs: {} slots for {k} values", dst.len());
        let mut q = 0;
        while q + 32 <= k {
            let lo = _mm512_loadu_ps(src.as_ptr().add(q));
            let hi = _mm512_loadu_ps(src.as_ptr().add(q + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(dst.as_mut_ptr().add(q / 2) as *mut __m512i, v);
            q += 32;
        }
        while q < k {
            dst[q / 2] = pair(src[q], if q + 1 < k { src[q + 1] } else { 0.0 });
            q += 2;
        }
    }

    /// `rows` rows of x [rows, k] f32 -> bf16 pairs in [pair][MR] order (rows past `rows` stay
    /// zero): one row panel of A.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_a(x: &[f32], rows: usize, k: usize, panel: &mut [u32]) {
        let kp = k.div_ceil(2);
        let mut row = vec![0u32; kp];
        for r in 0..rows {
            to_pairs(&x[r * k..(r + 1) * k], &mut row);
            for (p, &v) in row.iter().enumerate() {
                panel[p * MR + r] = v;
            }
        }
    }

    /// Pairs `p0..p0 + pairs` of columns `j0..j0 + cols` of B into [pair][NR] (zero-padded).
    /// B [k, n] is W^T for `XWt` (W [n, k]) and W for `XW` (W [k, n]).
    #[allow(clippy::too_many_arguments)]
    fn pack_b(
        w: &[bf16],
        (n, k): (usize, usize),
        product: Product,
        p0: usize,
        pairs: usize,
        j0: usize,
        cols: usize,
        pb: &mut [u32],
    ) {
        let bits = |v: bf16| v.to_bits() as u32;
        match product {
            Product::XWt => {
                for c in 0..NR {
                    if c >= cols {
                        (0..pairs).for_each(|p| pb[p * NR + c] = 0);
                        continue;
                    }
                    // Column j of B is row j of W: its pairs along k are adjacent.
                    let row = &w[(j0 + c) * k..(j0 + c + 1) * k];
                    for p in 0..pairs {
                        let kk = 2 * (p0 + p);
                        let hi = if kk + 1 < k { bits(row[kk + 1]) } else { 0 };
                        pb[p * NR + c] = bits(row[kk]) | (hi << 16);
                    }
                }
            }
            Product::XW => {
                for p in 0..pairs {
                    let kk = 2 * (p0 + p);
                    let dst = &mut pb[p * NR..(p + 1) * NR];
                    // A pair interleaves two rows of W.
                    let r0 = &w[kk * n + j0..kk * n + j0 + cols];
                    if kk + 1 < k {
                        let r1 = &w[(kk + 1) * n + j0..(kk + 1) * n + j0 + cols];
                        for c in 0..cols {
                            dst[c] = bits(r0[c]) | (bits(r1[c]) << 16);
                        }
                    } else {
                        for c in 0..cols {
                            dst[c] = bits(r0[c]);
                        }
                    }
                    dst[cols..].fill(0);
                }
            }
        }
    }

    /// The `MR x NR` tile of c at `c` (+)= the packed A panel times the packed B panel over
    /// `pairs` k pairs; only `rows x cols` of it are written.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn micro(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        // ANCHOR: microkernel
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const __m512i));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16) as *const __m512i));
            for (r, acc) in acc.iter_mut().enumerate() {
                // Row r's pair, in every lane: lane j gets a0 b0j + a1 b1j.
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        // ANCHOR_END: microkernel
        if rows == MR && cols == NR {
            for (r, acc) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                for (h, &v) in acc.iter().enumerate() {
                    let v = if accumulate { _mm512_add_ps(_mm512_loadu_ps(cr.add(16 * h)), v) } else { v };
                    _mm512_storeu_ps(cr.add(16 * h), v);
                }
            }
        } else {
            let mut tile = [0f32; NR];
            for (r, acc) in acc.iter().enumerate().take(rows) {
                _mm512_storeu_ps(tile.as_mut_ptr(), acc[0]);
                _mm512_storeu_ps(tile.as_mut_ptr().add(16), acc[1]);
                let cr = c.add(r * ldc);
                for (j, &v) in tile.iter().enumerate().take(cols) {
                    *cr.add(j) = if accumulate { *cr.add(j) + v } else { v };
                }
            }
        }
    }
}
