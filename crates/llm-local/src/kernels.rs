//! Quantized matrix-vector products for CPU decoding, on the GGUF block formats as stored in the file.
//!
//! Decoding a small model is bound by memory bandwidth: every token reads every weight once. So weights
//! stay in the file's 4-bit Q4_1 blocks (0.625 bytes a weight; Q8_0 would read 1.7 times as much), and
//! activations are quantized to 8 bits per block of 32 once per product, as llama.cpp does. Each kernel has
//! a portable version and an AVX2 one chosen at run time; tests check they agree.

use half::f16;

/// Weights per block, in every format here.
pub const BLOCK: usize = 32;

/// GGUF Q4_1: `w = d * q + m`, q in 0..16; `qs[j]` holds weight j (low nibble) and j + 16 (high nibble).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// GGUF Q8_0: `w = d * q`, q in -127..=127.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// A block of activations: `x = d * q`; `s = d * sum(q)` (the Q4_1 offset term needs it).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Quantizes activations (length a multiple of [`BLOCK`]) into `out`.
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * BLOCK);
    for (chunk, b) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in b.qs.iter_mut().zip(chunk) {
            let r = (v * id).round() as i32;
            *q = r as i8;
            sum += r;
        }
        b.d = d;
        b.s = d * sum as f32;
    }
}

/// A weight matrix, `rows` rows of `cols` weights (row `r` gives output `r`), in a GGUF block format.
pub enum Weights {
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub w: Weights,
}

impl Matrix {
    /// Reinterprets raw GGUF tensor bytes (`rows * cols / 32` blocks).
    pub fn from_bytes(rows: usize, cols: usize, q4_1: bool, bytes: &[u8]) -> Option<Matrix> {
        if !cols.is_multiple_of(BLOCK) {
            return None;
        }
        let blocks = rows * cols / BLOCK;
        let w = if q4_1 {
            Weights::Q4_1(read_blocks(bytes, blocks, |b| BlockQ4_1 {
                d: f16::from_le_bytes([b[0], b[1]]),
                m: f16::from_le_bytes([b[2], b[3]]),
                qs: b[4..20].try_into().expect("16 bytes"),
            })?)
        } else {
            Weights::Q8_0(read_blocks(bytes, blocks, |b| BlockQ8_0 {
                d: f16::from_le_bytes([b[0], b[1]]),
                qs: std::array::from_fn(|i| b[2 + i] as i8),
            })?)
        };
        Some(Matrix { rows, cols, w })
    }

    /// Row `r`, dequantized (embedding lookups).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let per_row = self.cols / BLOCK;
        match &self.w {
            Weights::Q4_1(w) => {
                for (b, o) in w[r * per_row..(r + 1) * per_row]
                    .iter()
                    .zip(out.chunks_exact_mut(BLOCK))
                {
                    let (d, m) = (b.d.to_f32(), b.m.to_f32());
                    for j in 0..16 {
                        o[j] = d * (b.qs[j] & 0x0F) as f32 + m;
                        o[j + 16] = d * (b.qs[j] >> 4) as f32 + m;
                    }
                }
            }
            Weights::Q8_0(w) => {
                for (b, o) in w[r * per_row..(r + 1) * per_row]
                    .iter()
                    .zip(out.chunks_exact_mut(BLOCK))
                {
                    let d = b.d.to_f32();
                    for (o, q) in o.iter_mut().zip(b.qs) {
                        *o = d * q as f32;
                    }
                }
            }
        }
    }

    /// `out[t][r] = row r · x[t]` for `r` in `rows` and every token `t` (`x` quantized with [`quantize_row`];
    /// `out` is `tokens * self.rows` long). Each weight row is read once for all tokens.
    pub fn mul(&self, x: &[BlockQ8], tokens: usize, rows: std::ops::Range<usize>, out: &OutRows<'_>) {
        let per_row = self.cols / BLOCK;
        let xs = |t: usize| &x[t * per_row..(t + 1) * per_row];
        for r in rows {
            let mut t = 0;
            // Four tokens at a time: each weight block is unpacked once for all four.
            while t + 4 <= tokens {
                let xq = [xs(t), xs(t + 1), xs(t + 2), xs(t + 3)];
                let v = match &self.w {
                    Weights::Q4_1(w) => dot4_q4_1(&w[r * per_row..(r + 1) * per_row], xq),
                    Weights::Q8_0(w) => dot4_q8_0(&w[r * per_row..(r + 1) * per_row], xq),
                };
                for (i, v) in v.into_iter().enumerate() {
                    out.set((t + i) * self.rows + r, v);
                }
                t += 4;
            }
            for t in t..tokens {
                let v = match &self.w {
                    Weights::Q4_1(w) => dot_q4_1(&w[r * per_row..(r + 1) * per_row], xs(t)),
                    Weights::Q8_0(w) => dot_q8_0(&w[r * per_row..(r + 1) * per_row], xs(t)),
                };
                out.set(t * self.rows + r, v);
            }
        }
    }
}

fn read_blocks<T>(bytes: &[u8], blocks: usize, f: impl Fn(&[u8]) -> T) -> Option<Vec<T>> {
    let size = bytes.len().checked_div(blocks)?;
    if size * blocks != bytes.len() || !matches!(size, 20 | 34) {
        return None;
    }
    Some(bytes.chunks_exact(size).map(f).collect())
}

/// The output of a product, written by several threads, each to rows no other thread writes.
pub struct OutRows<'a> {
    ptr: *mut f32,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: threads write disjoint indices (each row range goes to one thread); see `Matrix::mul`.
unsafe impl Send for OutRows<'_> {}
unsafe impl Sync for OutRows<'_> {}

impl<'a> OutRows<'a> {
    pub fn new(out: &'a mut [f32]) -> Self {
        OutRows {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _life: std::marker::PhantomData,
        }
    }

    #[inline]
    fn set(&self, i: usize, v: f32) {
        assert!(i < self.len);
        // SAFETY: in bounds (checked above); no two threads write the same index (disjoint row ranges).
        unsafe { *self.ptr.add(i) = v }
    }
}

/// Dot product of Q4_1 weights with quantized activations.
#[inline]
pub fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { x86::dot_q4_1(w, x) };
    }
    dot_q4_1_portable(w, x)
}

/// Dot product of Q8_0 weights with quantized activations.
#[inline]
pub fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { x86::dot_q8_0(w, x) };
    }
    dot_q8_0_portable(w, x)
}

/// [`dot_q4_1`] of one weight row with four activation rows.
#[inline]
pub fn dot4_q4_1(w: &[BlockQ4_1], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { x86::dot4_q4_1(w, x) };
    }
    x.map(|x| dot_q4_1_portable(w, x))
}

/// [`dot_q8_0`] of one weight row with four activation rows.
#[inline]
pub fn dot4_q8_0(w: &[BlockQ8_0], x: [&[BlockQ8]; 4]) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked at run time).
        return unsafe { x86::dot4_q8_0(w, x) };
    }
    x.map(|x| dot_q8_0_portable(w, x))
}

pub fn dot_q4_1_portable(w: &[BlockQ4_1], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, a) in w.iter().zip(x) {
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (b.qs[j] & 0x0F) as i32 * a.qs[j] as i32 + (b.qs[j] >> 4) as i32 * a.qs[j + 16] as i32;
        }
        sum += b.d.to_f32() * a.d * isum as f32 + b.m.to_f32() * a.s;
    }
    sum
}

pub fn dot_q8_0_portable(w: &[BlockQ8_0], x: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (b, a) in w.iter().zip(x) {
        let isum: i32 = b.qs.iter().zip(&a.qs).map(|(&p, &q)| p as i32 * q as i32).sum();
        sum += b.d.to_f32() * a.d * isum as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BlockQ4_1, BlockQ8, BlockQ8_0};

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_to_f32(h: half::f16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for (b, a) in w.iter().zip(x) {
            // SAFETY (loads): `qs` is 16 bytes, `a.qs` 32; unaligned loads.
            let nibbles = unsafe { _mm_loadu_si128(b.qs.as_ptr() as *const __m128i) };
            // Low lane: weights 0..16 (low nibbles); high lane: weights 16..32 (high nibbles).
            let wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nibbles, 4), nibbles), low);
            let xq = unsafe { _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i) };
            let pairs = _mm256_maddubs_epi16(wq, xq); // u8 x i8, at most 2 * 15 * 127: no overflow
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            let d = f16_to_f32(b.d) * a.d;
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), sums, acc);
            offsets += f16_to_f32(b.m) * a.s;
        }
        hsum(acc) + offsets
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot4_q4_1(w: &[BlockQ4_1], x: [&[BlockQ8]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offsets = [0f32; 4];
        let low = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        for (i, b) in w.iter().enumerate() {
            // SAFETY (loads): `qs` is 16 bytes, each `a.qs` 32; unaligned loads.
            let nibbles = unsafe { _mm_loadu_si128(b.qs.as_ptr() as *const __m128i) };
            let wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(nibbles, 4), nibbles), low);
            let (d, m) = (f16_to_f32(b.d), f16_to_f32(b.m));
            for t in 0..4 {
                let a = &x[t][i];
                let xq = unsafe { _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i) };
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(wq, xq), ones));
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), sums, acc[t]);
                offsets[t] += m * a.s;
            }
        }
        [0, 1, 2, 3].map(|t| hsum(acc[t]) + offsets[t])
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot4_q8_0(w: &[BlockQ8_0], x: [&[BlockQ8]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let ones = _mm256_set1_epi16(1);
        for (i, b) in w.iter().enumerate() {
            // SAFETY (loads): 32 bytes each; unaligned loads.
            let wq = unsafe { _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i) };
            let wabs = _mm256_sign_epi8(wq, wq);
            let d = f16_to_f32(b.d);
            for t in 0..4 {
                let a = &x[t][i];
                let xq = unsafe { _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i) };
                let pairs = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xq, wq));
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), sums, acc[t]);
            }
        }
        [0, 1, 2, 3].map(|t| hsum(acc[t]))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let ones = _mm256_set1_epi16(1);
        for (b, a) in w.iter().zip(x) {
            // SAFETY (loads): both are 32 bytes; unaligned loads.
            let wq = unsafe { _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i) };
            let xq = unsafe { _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i) };
            // maddubs wants one unsigned operand: |w| times x with w's sign.
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            let d = f16_to_f32(b.d) * a.d;
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), sums, acc);
        }
        hsum(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence (no extra dependency).
    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    fn random_q4_1(n: usize, seed: &mut u64) -> Vec<BlockQ4_1> {
        (0..n)
            .map(|_| BlockQ4_1 {
                d: f16::from_f32(lcg(seed).abs() * 0.1),
                m: f16::from_f32(lcg(seed) * 0.5),
                qs: std::array::from_fn(|_| (lcg(seed).abs() * 255.0) as u8),
            })
            .collect()
    }

    fn random_q8_0(n: usize, seed: &mut u64) -> Vec<BlockQ8_0> {
        (0..n)
            .map(|_| BlockQ8_0 {
                d: f16::from_f32(lcg(seed).abs() * 0.1),
                qs: std::array::from_fn(|i| if i == 3 { -128 } else { (lcg(seed) * 127.0) as i8 }),
            })
            .collect()
    }

    fn activations(n: usize, seed: &mut u64) -> (Vec<f32>, Vec<BlockQ8>) {
        let x: Vec<f32> = (0..n * BLOCK).map(|_| lcg(seed) * 3.0).collect();
        let mut q = vec![BlockQ8::default(); n];
        quantize_row(&x, &mut q);
        (x, q)
    }

    #[test]
    fn quantized_activations_are_close_to_the_floats() {
        let mut seed = 7;
        let (x, q) = activations(4, &mut seed);
        for (b, chunk) in q.iter().zip(x.chunks(BLOCK)) {
            for (v, qv) in chunk.iter().zip(b.qs) {
                assert!((v - b.d * qv as f32).abs() <= b.d * 0.5 + 1e-6);
            }
            let sum: i32 = b.qs.iter().map(|&v| v as i32).sum();
            assert!((b.s - b.d * sum as f32).abs() < 1e-4);
        }
    }

    /// The portable and the fast kernel agree, and both are close to the product of the dequantized row
    /// with the unquantized activations (only the activations' 8-bit rounding separates them).
    fn check(w: Weights, blocks: usize, seed: &mut u64) {
        let (x, xq) = activations(blocks, seed);
        let m = Matrix {
            rows: 1,
            cols: blocks * BLOCK,
            w,
        };
        let mut row = vec![0f32; blocks * BLOCK];
        m.row_f32(0, &mut row);
        let exact: f32 = row.iter().zip(&x).map(|(a, b)| a * b).sum();
        let (portable, fast, four) = match &m.w {
            Weights::Q4_1(w) => (dot_q4_1_portable(w, &xq), dot_q4_1(w, &xq), dot4_q4_1(w, [&xq[..]; 4])),
            Weights::Q8_0(w) => (dot_q8_0_portable(w, &xq), dot_q8_0(w, &xq), dot4_q8_0(w, [&xq[..]; 4])),
        };
        assert_eq!(four, [fast; 4], "four rows at once give what one does");
        assert!(
            (portable - fast).abs() <= 1e-3 * portable.abs().max(1.0),
            "{portable} vs {fast}"
        );
        assert!(
            (portable - exact).abs() <= 0.02 * exact.abs().max(1.0),
            "{portable} vs {exact}"
        );
    }

    #[test]
    fn q4_1_kernels_agree_with_the_dequantized_dot_product() {
        let mut seed = 11;
        for blocks in [1, 18, 48] {
            // 18 blocks: a 576-wide SmolLM2 row
            check(Weights::Q4_1(random_q4_1(blocks, &mut seed)), blocks, &mut seed);
        }
    }

    #[test]
    fn q8_0_kernels_agree_with_the_dequantized_dot_product() {
        let mut seed = 13;
        for blocks in [1, 18, 48] {
            check(Weights::Q8_0(random_q8_0(blocks, &mut seed)), blocks, &mut seed);
        }
    }

    #[test]
    fn blocks_read_from_gguf_bytes() {
        let mut bytes = Vec::new();
        bytes.extend(f16::from_f32(0.5).to_le_bytes());
        bytes.extend(f16::from_f32(-1.0).to_le_bytes());
        bytes.extend([0x21u8; 16]); // low nibble 1, high nibble 2
        let m = Matrix::from_bytes(1, 32, true, &bytes).unwrap();
        let mut row = vec![0f32; 32];
        m.row_f32(0, &mut row);
        assert_eq!(row[0], -0.5);
        assert_eq!(row[16], 0.0);
        assert!(Matrix::from_bytes(1, 32, true, &bytes[..19]).is_none());
    }
}
