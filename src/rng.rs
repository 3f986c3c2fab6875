//! The CPU mirror of `shaders/random.wgsl`: Philox4x32-10 and the same conversions to uniforms and
//! normals, so tests and the CPU reference trainer can reproduce the GPU's random numbers.

/// Philox4x32-10 block for `counter` under `key`.
pub fn philox(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for _ in 0..10 {
        let p0 = 0xD2511F53u64 * c[0] as u64;
        let p1 = 0xCD9E8D57u64 * c[2] as u64;
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
        k = [k[0].wrapping_add(0x9E3779B9), k[1].wrapping_add(0xBB67AE85)];
    }
    c
}

/// A word to a float in (0, 1), exactly as the shader does.
pub fn u01(x: u32) -> f32 {
    ((x >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// Splits a 64-bit seed into the kernel's two key words.
pub fn key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

/// The `n` normals `random.wgsl:normal` writes for (seed, step, stream), in f64.
pub fn normals(n: usize, seed: u64, step: u32, stream: u32) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    for i in 0..n.div_ceil(2) {
        let r = philox([i as u32, step, stream, 0], key(seed));
        let rad = (-2.0 * (u01(r[0]) as f64).ln()).sqrt();
        let t = std::f64::consts::TAU * u01(r[1]) as f64;
        out.push(rad * t.cos());
        out.push(rad * t.sin());
    }
    out.truncate(n);
    out
}

/// The `n` uniforms `random.wgsl:uniform` writes for (seed, step, stream).
pub fn uniforms(n: usize, seed: u64, step: u32, stream: u32) -> Vec<f32> {
    (0..n).map(|i| u01(philox([i as u32, step, stream, 0], key(seed))[0])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answers() {
        // Random123's published test vectors for philox4x32-10.
        assert_eq!(philox([0, 0, 0, 0], [0, 0]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox([!0, !0, !0, !0], [!0, !0]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn u01_is_strictly_inside_the_unit_interval() {
        assert!(u01(0) > 0.0 && u01(!0) < 1.0);
    }
}
