//! Dot products with runtime CPU dispatch: f32 × f32, f32 × f16 (the
//! arena's storage) and i8 × i8 (the graph's).
//!
//! The portable loops keep independent accumulators, which LLVM turns into
//! packed multiply-adds. Compiled a second time with AVX2 (+FMA, +F16C)
//! enabled and chosen at run time when the CPU has them, they process 8
//! floats (16 bytes) per instruction.

use half::f16;

/// Dot product of two equal-length slices (cosine similarity for unit vectors).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Dot product of an f32 query with an f16 vector.
#[inline]
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU supports AVX2, FMA and F16C, checked just above.
            return unsafe { dot_f16_avx2(a, b) };
        }
    }
    dot_f16_portable(a, b)
}

/// Dot product of two i8 vectors, accumulated exactly in i32 (exact for
/// up to 133k dimensions at full scale).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { dot_i8_avx2(a, b) };
        }
    }
    dot_i8_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f16_avx2(a: &[f32], b: &[f16]) -> f32 {
    use std::arch::x86_64::{
        __m128i, _mm_add_ps, _mm_cvtss_f32, _mm_hadd_ps, _mm_loadu_si128, _mm256_castps256_ps128,
        _mm256_cvtph_ps, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_setzero_ps,
    };
    let n = a.len().min(b.len());
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut i = 0;
    // SAFETY: every load reads 8 elements starting at `i` with `i + 8 <= n`
    // (16 at `i + 16 <= n`), inside both slices; unaligned loads are used.
    // `f16` is `repr(transparent)` over `u16`, the layout `cvtph` reads.
    unsafe {
        while i + 16 <= n {
            let b0 = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>()));
            let b1 = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i + 8).cast::<__m128i>()));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), b0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), b1, acc1);
            i += 16;
        }
        if i + 8 <= n {
            let b0 = _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i).cast::<__m128i>()));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), b0, acc0);
            i += 8;
        }
    }
    let acc = std::arch::x86_64::_mm256_add_ps(acc0, acc1);
    let half = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let quarter = _mm_hadd_ps(half, half);
    let mut sum = _mm_cvtss_f32(_mm_hadd_ps(quarter, quarter));
    for j in i..n {
        sum += a[j] * b[j].to_f32();
    }
    sum
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_widened(a, b, |x| x)
}

#[inline(always)]
fn dot_f16_portable(a: &[f32], b: &[f16]) -> f32 {
    dot_widened(a, b, f16::to_f32)
}

/// The portable loop both float dots share: `b`'s elements widened to f32,
/// eight independent accumulators.
#[inline(always)]
fn dot_widened<T: Copy>(a: &[f32], b: &[T], widen: impl Fn(T) -> f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for i in 0..chunks {
        let (x, y) = (&a[i * 8..i * 8 + 8], &b[i * 8..i * 8 + 8]);
        for j in 0..8 {
            acc[j] += x[j] * widen(y[j]);
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for i in chunks * 8..n {
        sum += a[i] * widen(b[i]);
    }
    sum
}

#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    // Integer sums are associative: LLVM vectorises this reduction as is.
    a[..n]
        .iter()
        .zip(&b[..n])
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(n: usize) -> (Vec<f32>, Vec<f32>) {
        let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
        (a, b)
    }

    #[test]
    fn matches_naive_sum() {
        for n in [0, 1, 7, 8, 9, 384, 385] {
            let (a, b) = pair(n);
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn f16_matches_the_f32_sum_of_the_rounded_values() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 384, 385] {
            let (a, b) = pair(n);
            let b16: Vec<f16> = b.iter().map(|x| f16::from_f32(*x)).collect();
            let naive: f32 = a.iter().zip(&b16).map(|(x, y)| x * y.to_f32()).sum();
            assert!((dot_f16(&a, &b16) - naive).abs() < 1e-4, "n={n}");
            assert!((dot_f16_portable(&a, &b16) - naive).abs() < 1e-4, "n={n}");
            // And f16 storage costs little precision.
            let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot_f16(&a, &b16) - exact).abs() < 2e-2, "n={n}");
        }
    }

    #[test]
    fn i8_is_exact() {
        for n in [0, 1, 31, 32, 33, 384] {
            // Values in -127..=127: the casts are exact.
            let a: Vec<i8> = (0..n).map(|i: i32| ((i * 37) % 255 - 127) as i8).collect();
            let b: Vec<i8> = (0..n).map(|i: i32| ((i * 11) % 255 - 127) as i8).collect();
            let naive: i32 = a.iter().zip(&b).map(|(x, y)| *x as i32 * *y as i32).sum();
            assert_eq!(dot_i8(&a, &b), naive, "n={n}");
        }
        assert_eq!(dot_i8(&[-128, 127], &[-128, 127]), 128 * 128 + 127 * 127);
    }
}
